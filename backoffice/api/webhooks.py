"""HTTP API of an account's webhook endpoints (SPEC 12.4).

Account managers read and replace the list; the rules (address checks, levels, at most
10) are ``notifications.hooks.webhook_endpoints_replace``'s, the admin's too.
"""

from __future__ import annotations

from django.utils.translation import gettext_lazy as _
from drf_spectacular.utils import OpenApiExample, OpenApiResponse, extend_schema
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.api.base import ErrorSerializer, ModelPermissions, account_get_or_404, require_body
from notifications.api.serializers import (
    WebhookEndpointInputSerializer,
    WebhookEndpointSerializer,
    WebhookEndpointsErrorSerializer,
    webhook_endpoint_data,
    webhook_endpoints_data,
)
from notifications.hooks import WebhookEndpointsInvalid, webhook_endpoints_replace
from notifications.selectors import webhook_endpoint_list

from .accounts import ACCOUNT_ERRORS, ACCOUNT_ID


def invalid_response(error: WebhookEndpointsInvalid) -> Response:
    """400: messages by endpoint index, then field; or about the whole list."""
    body: dict[str, object] = {str(index): fields for index, fields in error.errors.items()}
    if error.whole:
        body["non_field_errors"] = error.whole
    return Response(body, status=400)


class AccountWebhooksView(APIView):
    """The endpoints an account's notifications are posted to, signed."""

    permission_classes = [ModelPermissions]
    required_permissions = {
        "GET": ["notifications.view_webhookendpoint"],
        "PUT": [
            "notifications.add_webhookendpoint",
            "notifications.change_webhookendpoint",
            "notifications.delete_webhookendpoint",
        ],
    }

    @extend_schema(
        summary=_("List an account's webhook endpoints"),
        description=_("Secrets are never shown here: only in the answer that created them."),
        parameters=[ACCOUNT_ID],
        responses={200: WebhookEndpointSerializer(many=True), **ACCOUNT_ERRORS},
    )
    def get(self, request: Request, id: str) -> Response:
        account = account_get_or_404(id)
        return Response([webhook_endpoint_data(e) for e in webhook_endpoint_list(account=account)])

    @extend_schema(
        summary=_("Replace an account's webhook endpoints"),
        description=_(
            "At most 10. An endpoint whose URL is already listed keeps its id and secret; a "
            "new URL gets a new id and secret, shown in this answer only; endpoints left out "
            "are removed. Each URL is checked now, its host resolved."
        ),
        parameters=[ACCOUNT_ID],
        request=WebhookEndpointInputSerializer(many=True),
        responses={
            200: WebhookEndpointSerializer(many=True),
            400: OpenApiResponse(
                WebhookEndpointsErrorSerializer,
                description=_("The list breaks a rule; it is refused whole and nothing changes."),
                examples=[
                    OpenApiExample(
                        "A private address",
                        value={
                            "0": {
                                "url": [
                                    "10.0.0.5 resolves to 10.0.0.5, which is not a public "
                                    "address: only public addresses are accepted."
                                ]
                            }
                        },
                    )
                ],
            ),
            415: OpenApiResponse(ErrorSerializer, description=_("The body is not JSON.")),
            **ACCOUNT_ERRORS,
        },
        examples=[
            OpenApiExample(
                "One endpoint for every level",
                value=[
                    {
                        "url": "https://crm.example.com/hooks/usage",
                        "levels": ["warning", "blocked", "restored", "forecast"],
                        "is_active": True,
                    }
                ],
                request_only=True,
            )
        ],
    )
    def put(self, request: Request, id: str) -> Response:
        account = account_get_or_404(id)
        require_body(request)
        try:
            saved = webhook_endpoints_replace(account=account, data=request.data)
        except WebhookEndpointsInvalid as error:
            return invalid_response(error)
        return Response(webhook_endpoints_data(saved))
