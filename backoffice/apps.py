from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class BackofficeConfig(AppConfig):
    """The top layer: use cases spanning accounts, usage and notifications, and the admin
    pages, API views and commands that call them. It has no models."""

    name = "backoffice"
    verbose_name = _("Back-office")
