"""API authentication: knox's hashed tokens (``Authorization: Token <key>``).

A token may be bound to one account (``accounts.models.TokenAccount``, SPEC section 11.6);
the binding is read with the token, in the same query, and ``token_account_id`` tells
views, permissions and services which account the request is confined to.

Verified tokens are remembered for ``TOKEN_CACHE_SECONDS`` in each process's memory, so
that a request of a known token makes no query at all for its credentials. Each entry is
tagged with the *generation* read from the shared cache (Redis) at the start of the
request; every change that could revoke or narrow a token (deleting it, deactivating or
deleting its user, changing the user's permissions or groups, a group's permissions, its
account binding) sets a new generation once committed, which every process sees on its
next request. Without a shared cache (the embedded default's process memory) nothing is
remembered: a process cannot hear of a revocation made in another. The reasoning is in
``docs/how-it-works.md`` ("Token verification cache").

The generation is read in the request's one round trip to Redis, with what the view reads
there (``generation_reads``) and, for a token this process knows, the view's throttle
count (``config.throttling``).
"""

from __future__ import annotations

import binascii
import logging
import time
import uuid
from dataclasses import dataclass
from hmac import compare_digest
from typing import Any

import knox.auth
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group, Permission
from django.core.cache import caches
from django.core.cache.backends.dummy import DummyCache
from django.core.cache.backends.locmem import LocMemCache
from django.core.exceptions import ObjectDoesNotExist
from django.db import DEFAULT_DB_ALIAS, models, transaction
from django.db.models import Q
from django.db.models.signals import m2m_changed, post_delete, post_save
from django.utils import timezone
from django.utils.translation import gettext_lazy as _
from drf_spectacular.contrib.knox_auth_token import KnoxTokenScheme
from knox.crypto import hash_token
from knox.models import get_token_model
from knox.settings import CONSTANTS, knox_settings
from rest_framework import exceptions

from config.throttling import count_and_read

logger = logging.getLogger(__name__)

# The shared cache's key holding the current generation: a random value, never an
# increasing number, so that a Redis emptied and refilled cannot bring an old one back.
GENERATION_KEY = "auth:tokens:generation"
# A bound on each process's memory: past it, the process forgets every entry at once.
MAX_ENTRIES = 10_000


def api_permissions(user: Any) -> frozenset[str]:
    """The ``app_label.codename`` permissions of a user, in one query, kept on the user.

    ``accounts.api.base.ModelPermissions`` checks these; a cached verification restores them
    on the user it rebuilds, so the check costs no query either.
    """
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


@dataclass(frozen=True)
class _Verified:
    """What verifying one token found: the rows as read, and when to forget them."""

    generation: Any
    until: float  # time.monotonic()
    token: tuple[Any, ...]
    user: tuple[Any, ...]
    binding: tuple[Any, ...] | None
    permissions: frozenset[str]


_verified: dict[str, _Verified] = {}


class _Unavailable(Exception):
    """The shared cache did not answer: verify against the database."""


def _shared_cache() -> Any | None:
    """The cache holding the generation, or ``None`` when verifications are not remembered.

    Process-local caches are refused: a revocation in one process would not reach another.
    """
    if settings.TOKEN_CACHE_SECONDS <= 0:
        return None
    cache = caches["default"]
    if isinstance(cache, LocMemCache | DummyCache):
        return None
    return cache


def _generation(
    cache: Any, also: list[str], bucket: tuple[str, int] | None = None
) -> tuple[Any, dict[str, Any], tuple[int, int] | None]:
    """The generation, the value of each key of ``also`` (``None``: missing) and, given a
    throttle's ``bucket`` (``TokenRateThrottle.bucket_ahead``), the request's count in it
    (count, milliseconds left), read in one round trip."""
    try:
        if bucket is not None:
            counted, found = count_and_read(cache, bucket, [GENERATION_KEY, *also])
            return found.pop(GENERATION_KEY), found, counted
        if not also:
            return cache.get(GENERATION_KEY), {}, None
        found = cache.get_many([GENERATION_KEY, *also])
        return found.get(GENERATION_KEY), {key: found.get(key) for key in also}, None
    except Exception as error:
        # Entries are trusted only while the generation can be read: forget them, so that
        # a revocation made during the outage is not missed when the cache comes back.
        _verified.clear()
        logger.warning("token cache unavailable, tokens verified in the database", exc_info=True)
        raise _Unavailable from error


def _bucket_ahead(view: Any, digest: str) -> tuple[str, int] | None:
    """The bucket of the view's token throttle that this token's request counts in, when
    the throttle can take a count made with the token's reads."""
    if view is None:
        return None
    for throttle in view.get_throttles():
        ahead = getattr(throttle, "bucket_ahead", None)
        if ahead is not None:
            return ahead(view, digest)
    return None


def _values(instance: models.Model) -> tuple[Any, ...]:
    return tuple(getattr(instance, f.attname) for f in instance._meta.concrete_fields)


def _rebuilt(model: type[models.Model], values: tuple[Any, ...]) -> Any:
    return model.from_db(DEFAULT_DB_ALIAS, [f.attname for f in model._meta.concrete_fields], values)


def _binding_relation() -> Any:
    return get_token_model().account_binding.related


class TokenAuthentication(knox.auth.TokenAuthentication):
    """Knox's hashed tokens, minus its sweep of the user's other tokens on every request.

    Tokens here do not expire (``TOKEN_TTL`` is ``None``); they are revoked by deleting
    them. Checking only the presented token's own expiry saves a query per request. The
    token's user and its account binding, if any, are read in the token's query; a token
    verified in the last ``TOKEN_CACHE_SECONDS`` costs no query (see the module).
    """

    def authenticate(self, request: Any) -> tuple[Any, Any] | None:
        """Knox's, and the keys the view reads in the same round trip as the generation.

        A view with ``generation_reads(request)`` (a list of keys of the default cache) has
        their values read with the token's generation, and set on it as
        ``generations_read`` (a key to its value, ``None`` when missing); nothing is set
        when nothing was read (no shared cache, or it did not answer).
        """
        view = request.parser_context.get("view") if request.parser_context else None
        reads = getattr(view, "generation_reads", None)
        self.view = view
        self.also = reads(request) if reads is not None else []
        self.read: dict[str, Any] | None = None
        answer = super().authenticate(request)
        if self.read is not None and view is not None:
            view.generations_read = self.read
        return answer

    def authenticate_credentials(self, token: bytes) -> tuple[Any, Any]:
        key = token.decode("utf-8")
        cache = _shared_cache()
        if cache is None:
            return self._from_database(key)
        try:
            digest = hash_token(key)
        except (TypeError, binascii.Error):
            raise exceptions.AuthenticationFailed(_("Invalid token.")) from None
        entry = _verified.get(digest)
        view = getattr(self, "view", None)
        # A token this process knows is counted by the view's throttle in the same round
        # trip (``config.throttling``); an unknown one, by the throttle once it is verified.
        bucket = None if entry is None else _bucket_ahead(view, digest)
        try:
            generation, self.read, counted = _generation(cache, getattr(self, "also", []), bucket)
        except _Unavailable:
            return self._from_database(key)
        if counted is not None:
            view.throttle_counted = {bucket[0]: counted}
        if entry is not None:
            if entry.generation == generation and entry.until > time.monotonic():
                auth_token = self._from_entry(entry)
                if not self._cleanup_token(auth_token):
                    return self.validate_user(auth_token)
            _verified.pop(digest, None)
        user, auth_token = self._from_database(key)
        if not (knox_settings.AUTO_REFRESH and auth_token.expiry):
            self._remember(generation, auth_token)
        return user, auth_token

    def _from_database(self, key: str) -> tuple[Any, Any]:
        # Knox's own loop, with the binding joined.
        message = _("Invalid token.")
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

    @staticmethod
    def _remember(generation: Any, auth_token: Any) -> None:
        try:
            binding = auth_token.account_binding
        except ObjectDoesNotExist:
            binding = None
        if len(_verified) >= MAX_ENTRIES:
            _verified.clear()
        _verified[auth_token.digest] = _Verified(
            generation=generation,
            until=time.monotonic() + settings.TOKEN_CACHE_SECONDS,
            token=_values(auth_token),
            user=_values(auth_token.user),
            binding=None if binding is None else _values(binding),
            permissions=api_permissions(auth_token.user),
        )

    @staticmethod
    def _from_entry(entry: _Verified) -> Any:
        """Fresh instances for this request: a view may change what it is given."""
        user = _rebuilt(get_user_model(), entry.user)
        user._api_permissions = entry.permissions
        auth_token = _rebuilt(get_token_model(), entry.token)
        auth_token.user = user
        relation = _binding_relation()
        binding = None
        if entry.binding is not None:
            binding = _rebuilt(relation.related_model, entry.binding)
            relation.field.set_cached_value(binding, auth_token)
        relation.set_cached_value(auth_token, binding)
        return auth_token

    def _cleanup_token(self, auth_token: Any) -> bool:
        return auth_token.expiry is not None and auth_token.expiry < timezone.now()


# --- Invalidation --------------------------------------------------------------------


def token_cache_invalidate() -> None:
    """Make every process verify every token again, once the current transaction commits.

    After the commit, not before: a process reading the database between a new generation
    and the commit would remember the old rows under the new generation.
    """
    if _shared_cache() is not None:
        transaction.on_commit(_generation_renew)


def _generation_renew() -> None:
    _verified.clear()
    cache = _shared_cache()
    if cache is None:
        return
    try:
        cache.set(GENERATION_KEY, uuid.uuid4().hex, timeout=None)
    except Exception:
        # The change is committed; processes that cannot read the generation either do
        # not trust their entries, and the others forget them within TOKEN_CACHE_SECONDS.
        logger.exception("token cache unavailable: a revocation waits for the cache's expiry")


def _changed(sender: Any, **kwargs: Any) -> None:
    token_cache_invalidate()


def _token_saved(sender: Any, created: bool, **kwargs: Any) -> None:
    if not created:  # a new token is in no process's memory yet
        token_cache_invalidate()


def _user_saved(sender: Any, created: bool, update_fields: Any = None, **kwargs: Any) -> None:
    # A login records its time on the user: that changes nothing a token may do.
    if created or (update_fields is not None and set(update_fields) <= {"last_login"}):
        return
    token_cache_invalidate()


def _memberships_changed(sender: Any, action: str, **kwargs: Any) -> None:
    if action in ("post_add", "post_remove", "post_clear"):
        token_cache_invalidate()


def invalidation_connect() -> None:
    """Connect the signals that invalidate remembered tokens (at start-up of every process).

    ``QuerySet.update()`` and raw SQL send no signal: such a change reaches the processes
    within ``TOKEN_CACHE_SECONDS``, or at once with ``token_cache_invalidate()``.
    """
    user_model = get_user_model()
    token_model = get_token_model()
    binding_model = _binding_relation().related_model
    for model in (token_model, binding_model, user_model, Group, Permission):
        post_delete.connect(_changed, sender=model, dispatch_uid=f"token-cache-{model.__name__}")
    post_save.connect(_token_saved, sender=token_model, dispatch_uid="token-cache-token-saved")
    post_save.connect(_changed, sender=binding_model, dispatch_uid="token-cache-binding-saved")
    post_save.connect(_user_saved, sender=user_model, dispatch_uid="token-cache-user-saved")
    for through in (
        user_model.groups.through,
        user_model.user_permissions.through,
        Group.permissions.through,
    ):
        m2m_changed.connect(
            _memberships_changed, sender=through, dispatch_uid=f"token-cache-{through.__name__}"
        )


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
