"""The lock that makes every writer of an account's metric see the usage of the others."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterable

from django.db import connection

from config.db import bound_cursor


def _lock_key(account_id: uuid.UUID, metric: str) -> int:
    """A stable signed 64-bit key for ``(account, metric)``; a collision only serializes more."""
    digest = hashlib.blake2b(account_id.bytes + metric.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def usage_lock(*, pairs: Iterable[tuple[uuid.UUID, str]]) -> None:
    """Serialize, until the transaction ends, every writer of these (account, metric) pairs.

    Recording usage and changing limits take this lock before they read usage, so each
    reads a total that includes whatever the other committed: a crossing made by two
    concurrent requests (on different daily counters, or a request and a lowered
    threshold) is always seen by the later one, inside its own transaction, and never
    left to the sweep. Keys are taken in ascending order, so writers of several pairs
    never deadlock. On SQLite, writers are already serialized by the database lock.

    Call inside a transaction, before reading usage; the lock is released at its end.
    """
    if connection.vendor != "postgresql":
        return
    keys = sorted({_lock_key(account_id, metric) for account_id, metric in pairs})
    if not keys:
        return
    with bound_cursor() as cursor:
        # unnest() yields the array in order: the locks are taken in ascending key order.
        cursor.execute("SELECT pg_advisory_xact_lock(k) FROM unnest(%s::bigint[]) AS t(k)", [keys])
