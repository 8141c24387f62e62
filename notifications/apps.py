from django.apps import AppConfig
from django.core import checks
from django.utils.translation import gettext_lazy as _


class NotificationsConfig(AppConfig):
    name = "notifications"
    verbose_name = _("Notifications")

    def ready(self) -> None:
        from anymail.signals import tracking

        from .checks import anymail_webhook_secret_check
        from .signals import delivery_tracked

        tracking.connect(delivery_tracked, dispatch_uid="notifications.delivery_tracked")
        checks.register(anymail_webhook_secret_check, checks.Tags.security, deploy=True)
