"""Writes of usage: recording events and keeping the daily counters exact.

Recording costs a constant number of queries whatever the batch size: one to read the
accounts, one ``INSERT ... ON CONFLICT DO NOTHING RETURNING`` for the events, one counter
upsert, then the reads of the answer. Rows are written in a stable order (events by
account and event id, counters by account, metric and day) so that concurrent batches
wait for each other instead of deadlocking.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from dataclasses import dataclass
from datetime import date, datetime
from zoneinfo import ZoneInfo

from django.db import connection, transaction
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from accounts.models import Account

from .ingest import EventIn, EventsInvalid, parse_events
from .models import UsageCounter, UsageEvent
from .periods import period_containing
from .selectors import MetricUsage, usage_for

EVENT_TABLE = UsageEvent._meta.db_table
COUNTER_TABLE = UsageCounter._meta.db_table


@dataclass(frozen=True)
class IngestResult:
    accepted: int
    duplicates: int
    usage: list[MetricUsage]


def _insert_events(events: list[EventIn], received_at: datetime) -> list[tuple[str, str]]:
    """Insert the events that are new; returns ``(account id hex, event_id)`` of those."""
    columns = (
        "account_id, event_id, metric, quantity_milli, occurred_at, received_at, source, metadata"
    )
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(
                f"INSERT INTO {EVENT_TABLE} ({columns}) "
                "SELECT a, e, m, q, o, %s, s, md::jsonb FROM unnest("
                "%s::uuid[], %s::text[], %s::text[], %s::bigint[], %s::timestamptz[],"
                " %s::text[], %s::text[]) AS t(a, e, m, q, o, s, md) "
                "ON CONFLICT (account_id, event_id) DO NOTHING RETURNING account_id, event_id",
                [
                    received_at,
                    [e.account_id for e in events],
                    [e.event_id for e in events],
                    [e.metric for e in events],
                    [e.quantity_milli for e in events],
                    [e.occurred_at for e in events],
                    [e.source for e in events],
                    [e.metadata for e in events],
                ],
            )
            return [(account_id.hex, event_id) for account_id, event_id in cursor.fetchall()]
        adapt = connection.ops.adapt_datetimefield_value
        received = adapt(received_at)
        placeholders = ", ".join(["(%s, %s, %s, %s, %s, %s, %s, %s)"] * len(events))
        params: list[object] = []
        for e in events:
            params += [
                e.account_id.hex,
                e.event_id,
                e.metric,
                e.quantity_milli,
                adapt(e.occurred_at),
                received,
                e.source,
                e.metadata,
            ]
        cursor.execute(
            f"INSERT INTO {EVENT_TABLE} ({columns}) VALUES {placeholders} "
            "ON CONFLICT (account_id, event_id) DO NOTHING RETURNING account_id, event_id",
            params,
        )
        return [(str(account_id), event_id) for account_id, event_id in cursor.fetchall()]


def counters_add(deltas: dict[tuple[uuid.UUID, str, date], int], now: datetime) -> None:
    """Add ``deltas`` (thousandths by account, metric and local day) to the counters."""
    keys = sorted(deltas)  # a stable order: concurrent writers lock counter rows alike
    upsert = (
        "ON CONFLICT (account_id, metric, day) DO UPDATE SET "
        f"quantity_milli = {COUNTER_TABLE}.quantity_milli + excluded.quantity_milli, "
        "updated_at = excluded.updated_at"
    )
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(
                f"INSERT INTO {COUNTER_TABLE} (account_id, metric, day, quantity_milli, updated_at) "
                "SELECT a, m, d, q, %s FROM unnest(%s::uuid[], %s::text[], %s::date[], %s::bigint[])"
                f" AS t(a, m, d, q) {upsert}",
                [
                    now,
                    [k[0] for k in keys],
                    [k[1] for k in keys],
                    [k[2] for k in keys],
                    [deltas[k] for k in keys],
                ],
            )
            return
        adapt = connection.ops.adapt_datetimefield_value
        placeholders = ", ".join(["(%s, %s, %s, %s, %s)"] * len(keys))
        params: list[object] = []
        for k in keys:
            params += [k[0].hex, k[1], k[2].isoformat(), deltas[k], adapt(now)]
        cursor.execute(
            f"INSERT INTO {COUNTER_TABLE} (account_id, metric, day, quantity_milli, updated_at) "
            f"VALUES {placeholders} {upsert}",
            params,
        )


def usage_events_record(*, payload: object, now: datetime | None = None) -> IngestResult:
    """Record one event or a batch (SPEC section 5), idempotently per ``(account, event_id)``.

    Raises ``EventsInvalid`` (nothing recorded) when any event is invalid or names an
    unknown or inactive account. Returns how many were new and how many were duplicates,
    and the current-period usage of every account and metric the request touched, read
    after the write.
    """
    now = now or timezone.now()
    events, is_batch = parse_events(payload, now)

    zones: dict[uuid.UUID, ZoneInfo] = {
        row["id"]: ZoneInfo(row["timezone"])
        for row in Account.objects.filter(
            pk__in={e.account_id for e in events}, is_active=True
        ).values("id", "timezone")
    }
    unknown = [i for i, e in enumerate(events) if e.account_id not in zones]
    if unknown:
        message = [_("Unknown or inactive account.")]
        if is_batch:
            raise EventsInvalid({"events": {str(i): {"account": message} for i in unknown}})
        raise EventsInvalid({"account": message})

    # The first copy of an event id wins, in the request as across requests.
    unique: dict[tuple[uuid.UUID, str], EventIn] = {}
    for event in events:
        unique.setdefault((event.account_id, event.event_id), event)
    ordered = [unique[key] for key in sorted(unique)]

    with transaction.atomic():
        inserted = _insert_events(ordered, now)
        by_key = {(key[0].hex, key[1]): event for key, event in unique.items()}
        deltas: dict[tuple[uuid.UUID, str, date], int] = defaultdict(int)
        for account_hex, event_id in inserted:
            event = by_key[(account_hex.replace("-", ""), event_id)]
            day = event.occurred_at.astimezone(zones[event.account_id]).date()
            deltas[(event.account_id, event.metric, day)] += event.quantity_milli
        if deltas:
            counters_add(deltas, now)
        periods = {account_id: period_containing(now, zone) for account_id, zone in zones.items()}
        touched = sorted({(e.account_id, e.metric) for e in events})
        usage = usage_for(periods=periods, pairs=touched)

    return IngestResult(
        accepted=len(inserted),
        duplicates=len(events) - len(inserted),
        usage=[usage[key] for key in touched],
    )
