"""Pieces shared by every API view: error handling, the error schema and permission checks."""

from __future__ import annotations

import uuid
from typing import Any

from django.contrib.auth.models import Permission
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db.models import Q
from django.utils.translation import gettext_lazy as _
from rest_framework import exceptions, serializers, status
from rest_framework.permissions import BasePermission
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from accounts.models import Account
from accounts.services import AccountNotEnterprise, LimitsInvalid


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
    cached = getattr(user, "_api_permissions", None)
    if cached is None:
        rows = (
            Permission.objects.filter(Q(user=user) | Q(group__user=user))
            .values_list("content_type__app_label", "codename")
            .distinct()
        )
        cached = frozenset(f"{app_label}.{codename}" for app_label, codename in rows)
        user._api_permissions = cached
    return cached


class ModelPermissions(BasePermission):
    """Grants access when the user holds every permission the view lists for the method.

    Views set ``required_permissions = {"GET": ["app.codename"], ...}``; a method left out
    is refused.
    """

    def has_permission(self, request: Any, view: Any) -> bool:
        user = request.user
        if not (user and user.is_authenticated):
            return False
        method = "GET" if request.method in ("HEAD", "OPTIONS") else request.method
        needed = getattr(view, "required_permissions", {}).get(method)
        if needed is None or not user.is_active:
            return False
        return user.is_superuser or set(needed) <= _permissions_of(user)


def account_get_or_404(account_id: str) -> Account:
    """The account with this id; a malformed id is as unknown as a missing one (404)."""
    try:
        pk = uuid.UUID(account_id)
    except ValueError:
        raise exceptions.NotFound(_("Account not found.")) from None
    account = Account.objects.filter(pk=pk).first()
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
