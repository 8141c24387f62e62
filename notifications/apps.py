from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class NotificationsConfig(AppConfig):
    name = "notifications"
    verbose_name = _("Notifications")

    def ready(self) -> None:
        from anymail.signals import tracking

        from .signals import delivery_tracked

        tracking.connect(delivery_tracked, dispatch_uid="notifications.delivery_tracked")
