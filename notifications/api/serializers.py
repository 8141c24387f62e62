"""What the webhook endpoints API reads and answers (SPEC 12.4), for its schema.

The body is checked by ``notifications.hooks.webhook_endpoints_replace`` (types and
rules, one place for the API and the admin); these serializers describe it and write the
answers.
"""

from __future__ import annotations

from django.utils.translation import gettext_lazy as _
from rest_framework import serializers

from notifications.hooks import LEVELS, MAX_URL_LENGTH, SavedEndpoint
from notifications.models import WebhookEndpoint

URL_HELP = _(
    "An https:// URL whose host resolves to public addresses only (no private, loopback or "
    "link-local address); unique per account."
)
LEVELS_HELP = _("The levels of the notifications posted to it; at least one, each once.")


class WebhookEndpointInputSerializer(serializers.Serializer):
    url = serializers.CharField(max_length=MAX_URL_LENGTH, help_text=URL_HELP)
    levels = serializers.ListField(
        child=serializers.ChoiceField(choices=LEVELS),
        min_length=1,
        max_length=len(LEVELS),
        help_text=LEVELS_HELP,
    )
    is_active = serializers.BooleanField(
        required=False, default=True, help_text=_("Inactive endpoints are sent nothing.")
    )


class WebhookEndpointSerializer(serializers.Serializer):
    id = serializers.IntegerField(help_text=_("Kept as long as the URL is listed."))
    url = serializers.CharField(help_text=URL_HELP)
    levels = serializers.ListField(child=serializers.ChoiceField(choices=LEVELS))
    is_active = serializers.BooleanField()
    secret = serializers.CharField(
        required=False,
        help_text=_(
            "The signing secret (whsec_...), only in the answer of the PUT that created the "
            "endpoint: it is never shown again."
        ),
    )


def webhook_endpoint_data(endpoint: WebhookEndpoint, secret: str | None = None) -> dict:
    data = {
        "id": endpoint.pk,
        "url": endpoint.url,
        "levels": list(endpoint.levels),
        "is_active": endpoint.is_active,
    }
    if secret is not None:
        data["secret"] = secret
    return data


def webhook_endpoints_data(saved: list[SavedEndpoint]) -> list[dict]:
    return [webhook_endpoint_data(s.endpoint, s.secret) for s in saved]


class WebhookEndpointsErrorSerializer(serializers.Serializer):
    """Messages by endpoint index (``"0"``, ``"1"``...) then by field, or about the list."""

    non_field_errors = serializers.ListField(
        child=serializers.CharField(),
        required=False,
        help_text=_("About the list as a whole, e.g. more than 10 endpoints."),
    )
