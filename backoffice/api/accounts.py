"""HTTP API of accounts and their limits (SPEC section 5).

Each view checks permissions (DRF does it before the handler runs, so an unknown account
answers 404 only to a caller allowed to ask), finds the account, calls one selector or
service and answers. Every rule of the limits document is the service's.
"""

from __future__ import annotations

from django.db.models import QuerySet
from django.utils.translation import gettext_lazy as _
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiExample, OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework.generics import ListAPIView
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.api.base import ErrorSerializer, ModelPermissions, account_get_or_404, require_body
from accounts.api.serializers import (
    AccountSerializer,
    LimitsDocumentInputSerializer,
    LimitsDocumentSerializer,
    LimitsErrorSerializer,
    NotEnterpriseSerializer,
    limits_document_data,
)
from accounts.models import Account
from accounts.selectors import account_list, limits_document_get
from accounts.services import AccountNotEnterprise
from backoffice.services import limits_patch, limits_replace
from config.authentication import token_account_id

ACCOUNT_ID = OpenApiParameter(
    "id", OpenApiTypes.UUID, OpenApiParameter.PATH, description=_("The account's id.")
)
ERRORS = {
    401: OpenApiResponse(ErrorSerializer, description=_("No or invalid credentials.")),
    403: OpenApiResponse(ErrorSerializer, description=_("The user lacks the permission.")),
}
ACCOUNT_ERRORS = {
    **ERRORS,
    403: OpenApiResponse(
        ErrorSerializer,
        description=_("The user lacks the permission, or the token is bound to another account."),
    ),
    404: OpenApiResponse(ErrorSerializer, description=_("No account has this id.")),
}
LIMITS_ERRORS = {
    **ACCOUNT_ERRORS,
    409: OpenApiResponse(
        NotEnterpriseSerializer, description=_("The account's plan is not Enterprise.")
    ),
}
LIMITS_WRITE_ERRORS = {
    **LIMITS_ERRORS,
    400: OpenApiResponse(
        LimitsErrorSerializer,
        description=_("The document breaks a rule; it is refused whole and nothing changes."),
        examples=[
            OpenApiExample(
                "Warning threshold without a warning recipient",
                value={
                    "recipients": {
                        "warning": [
                            "At least one warning recipient is required when a warning "
                            "threshold is set."
                        ]
                    }
                },
            )
        ],
    ),
    415: OpenApiResponse(ErrorSerializer, description=_("The body is not JSON.")),
}
LIMITS_EXAMPLE = OpenApiExample(
    "Limits on two metrics, and a daily one on a model",
    value={
        "limits": {
            "audio_transcribed_seconds": {"warning": 36000, "blocked": 72000},
            "audio_analyzed_seconds": {"warning": None, "blocked": None},
            "text_tokens": {"warning": 800000, "blocked": 1000000},
        },
        "recipients": {
            "warning": [{"email": "pm@example.com", "language": "fr"}],
            "blocked": [{"email": "ops-alerts@example.com", "language": "en"}],
        },
        "scoped_limits": [
            {
                "metric": "text_tokens",
                "period": "day",
                "window_days": None,
                "labels": {"model": "large"},
                "warning": 40000,
                "blocked": 50000,
            }
        ],
    },
    request_only=True,
)


def _enterprise_account_get_or_404(account_id: str) -> Account:
    """The account with this id, refused with 409 unless it is on the Enterprise plan.

    Reading limits is refused too, not only writing them: a non-Enterprise account has none
    in force (limits it kept from Enterprise are inactive, and shown only in the admin).
    """
    account = account_get_or_404(account_id)
    if not account.is_enterprise:
        raise AccountNotEnterprise()
    return account


@extend_schema(
    summary=_("List accounts"),
    parameters=[
        OpenApiParameter(
            "search",
            OpenApiTypes.STR,
            description=_("Only accounts whose name or external id contains this text."),
        )
    ],
    responses={200: AccountSerializer(many=True), **ERRORS},
)
class AccountListView(ListAPIView):
    """Accounts by name, paginated; a token bound to one account sees that account alone."""

    serializer_class = AccountSerializer
    permission_classes = [ModelPermissions]
    required_permissions = {"GET": ["accounts.view_account"]}

    def get_queryset(self) -> QuerySet[Account]:
        return account_list(
            search=self.request.query_params.get("search"),
            account_id=token_account_id(self.request),
        )


class AccountDetailView(APIView):
    permission_classes = [ModelPermissions]
    required_permissions = {"GET": ["accounts.view_account"]}

    @extend_schema(
        summary=_("Read an account"),
        parameters=[ACCOUNT_ID],
        responses={200: AccountSerializer, **ACCOUNT_ERRORS},
    )
    def get(self, request: Request, id: str) -> Response:
        return Response(AccountSerializer(account_get_or_404(id)).data)


class AccountLimitsView(APIView):
    """The limits document of an Enterprise account: thresholds per metric and recipients."""

    permission_classes = [ModelPermissions]
    required_permissions = {
        "GET": ["accounts.view_limit"],
        "PUT": ["accounts.change_limit"],
        "PATCH": ["accounts.change_limit"],
    }

    @extend_schema(
        summary=_("Read an account's limits"),
        description=_("Every metric and both recipient lists are listed, even when unset."),
        parameters=[ACCOUNT_ID],
        responses={200: LimitsDocumentSerializer, **LIMITS_ERRORS},
    )
    def get(self, request: Request, id: str) -> Response:
        account = _enterprise_account_get_or_404(id)
        return Response(limits_document_data(limits_document_get(account=account)))

    @extend_schema(
        summary=_("Replace an account's limits"),
        description=_(
            "Metrics left out become unlimited and recipient lists left out become empty. "
            "The answer of a GET may be sent back as it is."
        ),
        parameters=[ACCOUNT_ID],
        request=LimitsDocumentInputSerializer,
        responses={200: LimitsDocumentSerializer, **LIMITS_WRITE_ERRORS},
        examples=[LIMITS_EXAMPLE],
    )
    def put(self, request: Request, id: str) -> Response:
        account = _enterprise_account_get_or_404(id)
        require_body(request)
        document = limits_replace(
            account=account, data=request.data, actor=request.user, reason="api"
        )
        return Response(limits_document_data(document))

    @extend_schema(
        summary=_("Change some of an account's limits"),
        description=_(
            "A JSON merge patch (RFC 7396) on limits: metrics and thresholds left out stay as "
            "they are, null clears them. A recipient list given replaces that list."
        ),
        parameters=[ACCOUNT_ID],
        request=LimitsDocumentInputSerializer,
        responses={200: LimitsDocumentSerializer, **LIMITS_WRITE_ERRORS},
    )
    def patch(self, request: Request, id: str) -> Response:
        account = _enterprise_account_get_or_404(id)
        require_body(request)
        document = limits_patch(
            account=account, data=request.data, actor=request.user, reason="api"
        )
        return Response(limits_document_data(document))
