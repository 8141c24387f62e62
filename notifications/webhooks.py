"""Anymail's tracking webhook, served for the configured provider only and only when secured.

Anymail's own URL list serves every provider's webhook and, without
``ANYMAIL_WEBHOOK_SECRET``, accepts events from anyone (with a warning): a forged
"bounced" event would then change a delivery. Here the one tracking URL of the provider
``EMAIL_BACKEND`` names (``anymail.backends.postmark.EmailBackend``: Postmark) is served,
and only while a webhook secret is set; every other URL under ``anymail/`` answers 404.
Settings are read per request, so a change of configuration needs no new URL list.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from anymail.utils import get_anymail_setting
from django.conf import settings
from django.http import Http404, HttpRequest, HttpResponse
from django.views.decorators.csrf import csrf_exempt

ANYMAIL_BACKENDS = "anymail.backends."
_TRACKING_NAME = "_tracking_webhook"


@cache
def tracking_views() -> dict[str, Any]:
    """Anymail's tracking view of each provider, by the name of its backend's module."""
    from anymail.urls import urlpatterns

    return {
        pattern.name.removesuffix(_TRACKING_NAME): pattern.callback
        for pattern in urlpatterns
        if pattern.name and pattern.name.endswith(_TRACKING_NAME)
    }


def anymail_provider() -> str | None:
    """The provider of ``EMAIL_BACKEND`` when it is one of Anymail's (``"postmark"``), else None."""
    backend = str(settings.EMAIL_BACKEND)
    if not backend.startswith(ANYMAIL_BACKENDS):
        return None
    return backend.removeprefix(ANYMAIL_BACKENDS).split(".", 1)[0]


def tracked_provider() -> str | None:
    """The provider whose tracking webhook may be served: Anymail's, when it has one."""
    provider = anymail_provider()
    return provider if provider in tracking_views() else None


def webhook_secret_is_set() -> bool:
    return bool(get_anymail_setting("webhook_secret", default=None))


@csrf_exempt
def tracking_webhook(request: HttpRequest, provider: str) -> HttpResponse:
    """Hand the request to Anymail's view for ``provider`` if it is the one configured and secured.

    Anymail's view checks the basic-auth credentials (a mismatch answers 400) and sends the
    ``tracking`` signal, which ``notifications.signals`` turns into delivery statuses.
    """
    if provider != tracked_provider() or not webhook_secret_is_set():
        raise Http404
    return tracking_views()[provider](request)
