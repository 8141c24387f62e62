"""Pieces shared by every API view: error handling, the error schema and permission checks."""

from __future__ import annotations

import uuid
from typing import Any

from django.core.exceptions import ValidationError as DjangoValidationError
from django.utils.translation import gettext_lazy as _
from rest_framework import exceptions, serializers, status
from rest_framework.permissions import BasePermission
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from accounts.models import Account
from accounts.services import AccountNotEnterprise, LimitsInvalid
from config.authentication import api_permissions, token_account_id

MSG_OTHER_ACCOUNT = _("This token is bound to another account.")


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """DRF's handler, plus the domain exceptions of the services mapped to 400 and 409."""
    if isinstance(exc, LimitsInvalid):
        exc = exceptions.ValidationError(exc.errors)
    elif isinstance(exc, AccountNotEnterprise):
        return Response(
            {"detail": str(exc.message), "code": exc.code}, status=status.HTTP_409_CONFLICT
        )
    elif isinstance(exc, DjangoValidationError):
        exc = exceptions.ValidationError(
            exc.message_dict if hasattr(exc, "error_dict") else {"non_field_errors": exc.messages}
        )
    return drf_exception_handler(exc, context)


class ErrorSerializer(serializers.Serializer):
    """An error about the request as a whole: credentials, permission, unknown resource."""

    detail = serializers.CharField(help_text=_("What went wrong, in the request's language."))


def _permissions_of(user: Any) -> frozenset[str]:
    """The ``app_label.codename`` permissions of an active user, in one query per request."""
    return api_permissions(user)


class ModelPermissions(BasePermission):
    """Grants access when the user holds every permission the view lists for the method.

    Views set ``required_permissions = {"GET": ["app.codename"], ...}``; a method the view
    serves but leaves out is refused. ``HEAD`` needs what ``GET`` needs; ``OPTIONS`` is
    granted to whoever may use at least one method. A method the view does not serve is let
    through to the view, which answers 405 with ``Allow``: after authentication (401 first),
    before permissions, as the methods a path serves are no secret (they are in the schema).
    A token bound to one account (SPEC section 11.6) is also refused, with 403, on the
    routes of any other account: routes under ``accounts/<id>/`` name the account ``id``
    (a view may name another URL argument in ``account_url_kwarg``).
    """

    def has_permission(self, request: Any, view: Any) -> bool:
        user = request.user
        if not (user and user.is_authenticated and user.is_active):
            return False
        if request.method not in view.allowed_methods:
            return True
        required: dict[str, list[str]] = getattr(view, "required_permissions", {})
        if request.method == "OPTIONS":
            if not any(self._holds(user, needed) for needed in required.values()):
                return False
        else:
            needed = required.get("GET" if request.method == "HEAD" else request.method)
            if needed is None or not self._holds(user, needed):
                return False
        bound_account_check(request, view)
        return True

    @staticmethod
    def _holds(user: Any, needed: list[str]) -> bool:
        return user.is_superuser or set(needed) <= _permissions_of(user)


def bound_account_check(request: Any, view: Any) -> None:
    """Refuse with 403 a token bound to one account on the routes of another account.

    Another account's id, a malformed id and an unknown one are refused alike: a bound
    token learns nothing about the accounts it may not reach.
    """
    bound = token_account_id(request)
    if bound is None:
        return
    requested = getattr(view, "kwargs", {}).get(getattr(view, "account_url_kwarg", "id"))
    if requested is not None and _uuid_or_none(requested) != bound:
        raise exceptions.PermissionDenied(MSG_OTHER_ACCOUNT)


def _uuid_or_none(value: object) -> uuid.UUID | None:
    if isinstance(value, uuid.UUID):  # a ``<uuid:id>`` route
        return value
    try:
        return uuid.UUID(str(value))
    except ValueError:
        return None


def account_id_or_404(account_id: str) -> uuid.UUID:
    """The account id in a route; a malformed id is as unknown as a missing one (404)."""
    try:
        return uuid.UUID(account_id)
    except ValueError:
        raise exceptions.NotFound(_("Account not found.")) from None


def account_get_or_404(account_id: str) -> Account:
    """The account with this id; a malformed id is as unknown as a missing one (404)."""
    account = Account.objects.filter(pk=account_id_or_404(account_id)).first()
    if account is None:
        raise exceptions.NotFound(_("Account not found."))
    return account


def require_body(request: Any) -> None:
    """Refuse an empty body: a PUT of nothing would otherwise clear every limit."""
    if request.META.get("CONTENT_LENGTH") in (None, "", "0"):
        raise exceptions.ValidationError({"non_field_errors": [_("A JSON body is required.")]})


def openapi_request_bodies_required(
    result: dict[str, Any], generator: Any, request: Any, public: bool
) -> dict[str, Any]:
    """drf-spectacular hook: every request body of this API is required.

    drf-spectacular marks a body required only when its serializer has a required field, but
    a ``PUT``/``PATCH`` of limits or a ``POST`` of events without a body is refused (400).
    """
    for item in result.get("paths", {}).values():
        for operation in item.values():
            if isinstance(operation, dict) and "requestBody" in operation:
                operation["requestBody"]["required"] = True
    return result
