"""API authentication: knox's hashed tokens (``Authorization: Token <key>``)."""

from __future__ import annotations

from typing import Any

import knox.auth
from django.utils import timezone
from drf_spectacular.contrib.knox_auth_token import KnoxTokenScheme


class TokenAuthentication(knox.auth.TokenAuthentication):
    """Knox's hashed tokens, minus its sweep of the user's other tokens on every request.

    Tokens here do not expire (``TOKEN_TTL`` is ``None``); they are revoked by deleting
    them. Checking only the presented token's own expiry saves a query per request.
    """

    def _cleanup_token(self, auth_token: Any) -> bool:
        return auth_token.expiry is not None and auth_token.expiry < timezone.now()


class TokenScheme(KnoxTokenScheme):
    """Documents ``TokenAuthentication`` in the OpenAPI schema as knox's token scheme."""

    target_class = "config.authentication.TokenAuthentication"
