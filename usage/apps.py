from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class UsageConfig(AppConfig):
    name = "usage"
    verbose_name = _("Usage")

    def ready(self) -> None:
        from accounts.generations import announce_changes_of

        from .models import Extension, Reservation, UsageCounterKey

        announce_changes_of(Extension, Reservation, UsageCounterKey)
