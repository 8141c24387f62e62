"""Each account's *generation* in the shared cache: what tells every process that something
an account's lines read has changed (SPEC 11.3, 11.4; ``usage.selectors.account_lines_known``).

A generation is a random value kept in Redis under the account's key, never an increasing
number, so that a Redis emptied and refilled cannot bring an old one back. A reader takes
the generation *before* it reads the database and tags what it read with it; a writer
deletes the key once its transaction has committed (``accounts_changed``), so that
whatever was read before the commit carries a generation that no longer exists. A reader
that finds no generation sets a new one (``SET NX``: the first of two racing readers wins,
the other keeps nothing) before it reads. So an entry tagged with the current generation
was read after the last committed change that was announced.

Without Redis as the shared cache (the embedded default's process memory) there is no
generation and nothing is kept: a process cannot hear of a change made in another. The reasoning is in
``docs/how-it-works.md`` ("Lines known since the last change").
"""

from __future__ import annotations

import logging
import secrets
import uuid
from collections.abc import Iterable
from typing import Any

from django.conf import settings
from django.core.cache import caches
from django.core.cache.backends.redis import RedisCache
from django.db import transaction
from django.db.models.signals import post_delete, post_save

logger = logging.getLogger(__name__)

KEY_FORMAT = "lines:generation:%s"
# ``account_generation``'s ``found`` when the caller read nothing.
UNREAD = object()


def _redis() -> RedisCache | None:
    """The default cache when it is Redis and lines may be remembered; else ``None``.

    A generation is a random positive integer, which Django's Redis cache stores as its
    digits: the token's authentication reads it with the token's generation, in one
    ``MGET`` through the cache (``config.authentication``), and this module reads and
    writes it with the Redis client itself (``SET NX``, ``DEL`` of many keys).
    """
    if settings.LINES_MEMORY_SECONDS <= 0:
        return None
    cache = caches["default"]
    return cache if isinstance(cache, RedisCache) else None


def _hex(account_id: uuid.UUID | str) -> str:
    return account_id.hex if isinstance(account_id, uuid.UUID) else uuid.UUID(account_id).hex


def generation_key(account_id: uuid.UUID | str) -> str | None:
    """The default cache's key of the account's generation; ``None`` when nothing is
    remembered."""
    return None if _redis() is None else KEY_FORMAT % _hex(account_id)


def account_generation(account_id: uuid.UUID, *, found: Any = UNREAD) -> int | None:
    """The account's current generation, a new one when it had none; ``None`` when nothing
    may be remembered (no shared cache, or it did not answer). ``found``: the value of its
    key (``generation_key``; ``None`` when missing) if the caller read it already."""
    if isinstance(found, int):
        return found
    cache = _redis()
    if cache is None:
        return None
    key = cache.make_key(KEY_FORMAT % account_id.hex)
    try:
        client = cache._cache.get_client(key, write=True)
        if found is UNREAD:
            found = client.get(key)
            if found is not None:
                return int(found)
        fresh = secrets.randbits(62) + 1
        return fresh if client.set(key, fresh, nx=True) else None
    except Exception:
        logger.warning("lines cache unavailable, lines read in the database", exc_info=True)
        return None


def accounts_changed(account_ids: Iterable[uuid.UUID | str]) -> None:
    """Announce, once the current transaction commits (at once outside one), that what the
    lines of these accounts read has changed: every process reads them again."""
    cache = _redis()
    if cache is None:
        return
    keys = sorted({cache.make_key(KEY_FORMAT % _hex(account_id)) for account_id in account_ids})
    if not keys:
        return

    def announce() -> None:
        try:
            cache._cache.get_client(keys[0], write=True).delete(*keys)
        except Exception:
            # What was remembered is forgotten within LINES_MEMORY_SECONDS at most.
            logger.error("lines cache unavailable, change not announced", exc_info=True)

    transaction.on_commit(announce, robust=True)


def _instance_changed(sender: Any, instance: Any, **kwargs: Any) -> None:
    account_id = instance.pk if sender._meta.label == "accounts.Account" else instance.account_id
    if account_id is not None:
        accounts_changed([account_id])


def announce_changes_of(*models: type) -> None:
    """Announce every save and delete of these models made through the ORM (the admin, the
    services, cascades) as a change of its account (the account itself for ``Account``).
    Writes made by ``QuerySet.update()`` or in SQL announce themselves."""
    for model in models:
        for signal in (post_save, post_delete):
            signal.connect(_instance_changed, sender=model, dispatch_uid=f"lines:{model.__name__}")
