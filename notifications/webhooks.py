"""Anymail's tracking webhook, served for the configured provider only and only when secured.

Anymail's own URL list serves every provider's webhook and, without
``ANYMAIL_WEBHOOK_SECRET``, accepts events from anyone (with a warning): a forged
"bounced" event would then change a delivery. Here the one tracking URL of the provider
``EMAIL_BACKEND`` names (``anymail.backends.postmark.EmailBackend``: Postmark) is served,
and only while a webhook secret is set; every other URL under ``anymail/`` answers 404.
Settings are read per request, so a change of configuration needs no new URL list.

What the provider posts is read by Anymail; a body it cannot read (not JSON, JSON of
another shape, nested deeper than ``config.parsers.MAX_JSON_DEPTH``, an event whose
message id is not a string, or text with null characters or lone surrogates) answers
a JSON 400, as do credentials that do not match, never a 500: sending it again will not
help, and nothing is recorded. Errors after the event was read (recording it) stay 500s, so
that the provider retries.
"""

from __future__ import annotations

import logging
from functools import cache
from typing import Any

from anymail.exceptions import AnymailWebhookValidationFailure
from anymail.signals import AnymailTrackingEvent
from anymail.utils import get_anymail_setting
from django.conf import settings
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.utils.translation import gettext as _
from django.views.decorators.csrf import csrf_exempt

from config.parsers import json_too_deep, text_problem

logger = logging.getLogger(__name__)

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


class TrackingPayloadInvalid(Exception):
    """The provider's view could not read the body as events of its provider."""


def _readable(event: Any) -> bool:
    """Whether ``event`` has the shape the tracking signal's receiver relies on."""
    if not isinstance(event, AnymailTrackingEvent):
        return False
    texts = [event.event_type, event.message_id, event.description, event.mta_response]
    texts.append(event.recipient)
    return isinstance(event.event_type, str) and all(
        text is None or (isinstance(text, str) and text_problem(text) is None) for text in texts
    )


def _guarded(view_class: type) -> type:
    """``view_class`` whose ``parse_events`` raises ``TrackingPayloadInvalid`` on any body it
    cannot turn into readable events."""

    def parse_events(self: Any, request: HttpRequest) -> list[Any]:
        body = request.body.lstrip()
        if body[:1] in (b"{", b"[") and json_too_deep(body.decode("utf-8", "replace")):
            raise TrackingPayloadInvalid("JSON nested too deep")
        try:
            events = view_class.parse_events(self, request)
        except AnymailWebhookValidationFailure:
            raise
        except Exception as exc:  # the body is the provider's (or anyone's): any shape
            raise TrackingPayloadInvalid(repr(exc)) from exc
        if not all(_readable(event) for event in events):
            raise TrackingPayloadInvalid("an event that is not readable")
        return events

    return type(view_class.__name__, (view_class,), {"parse_events": parse_events})


@cache
def guarded_tracking_views() -> dict[str, Any]:
    """``tracking_views()``, each refusing with ``TrackingPayloadInvalid`` what it cannot read."""
    return {
        provider: _guarded(callback.view_class).as_view(**callback.view_initkwargs)
        for provider, callback in tracking_views().items()
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
    try:
        return guarded_tracking_views()[provider](request)
    except AnymailWebhookValidationFailure as exc:
        logger.warning("tracking webhook of %s: refused credentials: %s", provider, exc)
        return JsonResponse(
            {"detail": _("The tracking request could not be authenticated.")}, status=400
        )
    except TrackingPayloadInvalid as exc:
        logger.warning("tracking webhook of %s: unreadable body: %s", provider, exc)
        return JsonResponse(
            {
                "detail": _("The tracking event could not be read: it is not a %(provider)s event.")
                % {"provider": provider}
            },
            status=400,
        )
