"""API authentication: knox's hashed tokens (``Authorization: Token <key>``).

A token may be bound to one account (``accounts.models.TokenAccount``, SPEC section 11.6);
the binding is read with the token, in the same query, and ``token_account_id`` tells
views, permissions and services which account the request is confined to.
"""

from __future__ import annotations

import binascii
import uuid
from hmac import compare_digest
from typing import Any

import knox.auth
from django.core.exceptions import ObjectDoesNotExist
from django.utils import timezone
from django.utils.translation import gettext_lazy as _
from drf_spectacular.contrib.knox_auth_token import KnoxTokenScheme
from knox.crypto import hash_token
from knox.models import get_token_model
from knox.settings import CONSTANTS, knox_settings
from rest_framework import exceptions


class TokenAuthentication(knox.auth.TokenAuthentication):
    """Knox's hashed tokens, minus its sweep of the user's other tokens on every request.

    Tokens here do not expire (``TOKEN_TTL`` is ``None``); they are revoked by deleting
    them. Checking only the presented token's own expiry saves a query per request. The
    token's user and its account binding, if any, are read in the token's query.
    """

    def authenticate_credentials(self, token: bytes) -> tuple[Any, Any]:
        # Knox's own loop, with the binding joined.
        message = _("Invalid token.")
        key = token.decode("utf-8")
        candidates = (
            get_token_model()
            .objects.filter(token_key=key[: CONSTANTS.TOKEN_KEY_LENGTH])
            .select_related("user", "account_binding")
        )
        for auth_token in candidates:
            if self._cleanup_token(auth_token):
                continue
            try:
                digest = hash_token(key)
            except (TypeError, binascii.Error):
                raise exceptions.AuthenticationFailed(message) from None
            if compare_digest(digest, auth_token.digest):
                if knox_settings.AUTO_REFRESH and auth_token.expiry:
                    self.renew_token(auth_token)
                return self.validate_user(auth_token)
        raise exceptions.AuthenticationFailed(message)

    def _cleanup_token(self, auth_token: Any) -> bool:
        return auth_token.expiry is not None and auth_token.expiry < timezone.now()


def token_account_id(request: Any) -> uuid.UUID | None:
    """The id of the account the request's token is bound to; ``None`` when it reaches any.

    ``None`` for an unbound token and for the admin session of the browsable API.
    """
    try:
        binding = request.auth.account_binding
    except (AttributeError, ObjectDoesNotExist):
        return None
    return binding.account_id


class TokenScheme(KnoxTokenScheme):
    """Documents ``TokenAuthentication`` in the OpenAPI schema as knox's token scheme."""

    target_class = "config.authentication.TokenAuthentication"
