"""Handing notifications to the broker without a request ever waiting for it.

The ledger is the outbox: a notification whose task was never handed to the broker has
no ``published_at``, and the periodic sweep publishes it (``deliveries_recover``). A
request only puts the ids of the notifications it created on this process's queue, after
its transaction commits; a daemon thread publishes them. With the broker down or slow,
the thread waits, the request does not, and nothing depends on this process surviving:
what the thread could not publish stays unpublished in the database for the sweep.
"""

from __future__ import annotations

import contextvars
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterable

from django.db import connection

logger = logging.getLogger(__name__)

# Hand-overs waiting for the publisher; past this many, new ones are left to the sweep.
QUEUE_SIZE = 10_000
# A hand-over that waited this many seconds for the publisher (the broker was slow to
# refuse the ones before it) is left to the sweep, so that a backlog never delays the
# notifications recorded once the broker is back.
STALE_AFTER = 30.0

Publish = Callable[[list[int]], list[int]]

_lock = threading.Lock()
HandOver = tuple[float, contextvars.Context, list[int]]
_queue: queue.Queue[HandOver] = queue.Queue(QUEUE_SIZE)
_owner_pid: int | None = None


def publish_later(notification_ids: Iterable[int], publish: Publish) -> None:
    """Queue ``notification_ids`` for this process's publisher thread; never blocks.

    ``publish`` is called in that thread, in a copy of the caller's context (so the
    request's ids travel with the tasks), and returns the ids it published.
    """
    ids = list(notification_ids)
    if not ids:
        return
    _ensure_publisher(publish)
    try:
        _queue.put_nowait((time.monotonic(), contextvars.copy_context(), ids))
    except queue.Full:
        logger.warning("publisher queue full: notifications %s left to the sweep", ids)


def _ensure_publisher(publish: Publish) -> None:
    """Start the publisher thread once per process (again in a forked child)."""
    global _owner_pid, _queue
    pid = os.getpid()
    if _owner_pid == pid:
        return
    with _lock:
        if _owner_pid == pid:
            return
        if _owner_pid is not None:  # a forked child: the parent's thread and queue stay there
            _queue = queue.Queue(QUEUE_SIZE)
        threading.Thread(
            target=_run, args=(_queue, publish), name="notifications-publisher", daemon=True
        ).start()
        _owner_pid = pid


def _run(pending: queue.Queue[HandOver], publish: Publish) -> None:
    while True:
        queued_at, context, ids = pending.get()
        if time.monotonic() - queued_at > STALE_AFTER:
            logger.warning("publisher behind: notifications %s left to the sweep", ids)
            continue
        try:
            context.run(publish, ids)
        except Exception:  # the thread must outlive any error: the sweep repairs what it missed
            logger.exception("publisher: notifications %s left to the sweep", ids)
        finally:
            connection.close()
