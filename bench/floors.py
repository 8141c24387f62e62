"""The floors: what Django, then DRF behind our token authentication, cost doing nothing.

Both go through the project's whole middleware stack. The authenticated floor uses the
real ``TokenAuthentication`` and ``ModelPermissions`` with the permissions of the usage
read (``GET``) and of the pre-flight check (``POST``, which parses its JSON body), and
makes no query of its own: what it costs beyond the plain floor is DRF, the token's
verification and the permission check. The same floor with the token verified in the
database at every request (as without ``TOKEN_CACHE_SECONDS``) shows, in the same run,
what remembering verified tokens buys; the same floor reading the account named in its
path, in one prepared statement, shows what any request about an account that reads the
database at all can reach.
"""

from __future__ import annotations

import uuid
from typing import Any

from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.api.base import ModelPermissions
from accounts.selectors import account_with_columns
from config.authentication import TokenAuthentication


@csrf_exempt
def plain_floor(request: HttpRequest) -> JsonResponse:
    """A plain Django view returning JSON, for ``GET`` and ``POST`` alike."""
    return JsonResponse({"ok": True})


class AuthenticatedFloorView(APIView):
    """A DRF view behind the real authentication and permissions, doing nothing."""

    authentication_classes = [TokenAuthentication]
    permission_classes = [ModelPermissions]
    required_permissions = {
        "GET": ["usage.view_usagecounter"],
        "POST": ["usage.check_usage"],
    }

    def get(self, request: Any) -> Response:
        return Response({"ok": True})

    def post(self, request: Any) -> Response:
        return Response({"ok": True, "fields": len(request.data)})


class DatabaseTokenAuthentication(TokenAuthentication):
    """The project's token authentication without its cache: the database at every request."""

    def authenticate_credentials(self, token: bytes) -> tuple[Any, Any]:
        return self._from_database(token.decode("utf-8"))


class UncachedFloorView(AuthenticatedFloorView):
    """The authenticated floor, its token verified in the database at every request."""

    authentication_classes = [DatabaseTokenAuthentication]


class AccountReadFloorView(AuthenticatedFloorView):
    """The authenticated floor reading the account of its path by its id, as the API's
    reads do before anything else (``account_with_columns`` without more columns: one
    prepared statement, an index scan of one row): the least a request about an account
    costs in the database. Its share of the authenticated floor bounds the share of
    every path that reads the database."""

    def get(self, request: Any, id: str) -> Response:
        account = account_with_columns(account_id=uuid.UUID(id), columns={})
        return Response({"ok": account is not None})
