"""System checks of the notifications' configuration (``manage.py check --deploy``)."""

from __future__ import annotations

from typing import Any

from django.core.checks import CheckMessage, Warning

from .webhooks import tracked_provider, webhook_secret_is_set


def anymail_webhook_secret_check(app_configs: Any, **kwargs: Any) -> list[CheckMessage]:
    """Warn when an Anymail provider with a tracking webhook is used without its secret."""
    provider = tracked_provider()
    if provider is None or webhook_secret_is_set():
        return []
    return [
        Warning(
            f"EMAIL_BACKEND is Anymail's {provider} backend but ANYMAIL_WEBHOOK_SECRET is not "
            "set: its tracking webhook is not served, so delivery statuses stay at sent.",
            hint=(
                "Set ANYMAIL_WEBHOOK_SECRET to a random 'user:password' and give the provider "
                f"https://user:password@<host>/anymail/{provider}/tracking/ as the webhook URL."
            ),
            id="notifications.W001",
        )
    ]
