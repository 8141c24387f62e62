"""Writes of usage: recording events and keeping the day and hour counters exact.

Recording costs a constant number of queries whatever the batch size: on PostgreSQL one
to take the (account, metric) locks (``usage_lock``), one to read the accounts, one
``INSERT ... ON CONFLICT DO NOTHING RETURNING`` for the events, with labels one to record
their label sets and, when some are new, one to count them, and one to read the label keys
counted for the accounts (``UsageCounterKey``), one counter upsert (two on SQLite: days
and hours), then the reads of the answer. Rows are written in a stable order
(events by account and event id, label sets and counters by account, metric, labels and
day or hour) so that concurrent batches wait for each other instead of deadlocking.
Recording itself (``backoffice.services.usage_events_record``) is above, beside the
crossings it records in the same transaction; the steps it takes are here. A single event
on PostgreSQL is written in one statement (``usage_event_store_one``).
"""

from __future__ import annotations

import dataclasses
import json
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo

import orjson
from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import connection, transaction
from django.db.models import (
    BigIntegerField,
    Case,
    DateField,
    DateTimeField,
    F,
    Q,
    Sum,
    TextField,
    Value,
    When,
)
from django.db.models.functions import Cast, Trunc
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from accounts.generations import accounts_changed
from accounts.labels import PAIR_SEPARATOR, labels_from_key, labels_key
from accounts.metrics import METRICS
from accounts.models import Account, Limit, ScopedLimit
from accounts.selectors import LimitsDocument, quote_name
from accounts.services import MAX_THRESHOLD
from accounts.windows import PeriodKind, window_containing
from config.db import bound_cursor
from config.request_ids import current_correlation_id, current_request_id

from .ingest import Errors, EventIn, EventsInvalid, ReservationIn, parse_metric
from .locks import usage_lock
from .models import (
    DAILY_LIMIT,
    DAILY_LIMIT_MILLI,
    CounterRepair,
    EventPurge,
    Extension,
    Reservation,
    UsageCounter,
    UsageCounterKey,
    UsageEvent,
    UsageHourCounter,
    UsageLabelSet,
    from_milli,
)
from .periods import Period
from .selectors import (
    LineUsage,
    MetricUsage,
    account_lines_current,
    account_lines_with_reservations,
    current_period,
    earliest_current_day,
    line_period_start,
    line_window,
    purge_boundary,
)

EVENT_TABLE = UsageEvent._meta.db_table
COUNTER_TABLE = UsageCounter._meta.db_table
HOUR_COUNTER_TABLE = UsageHourCounter._meta.db_table
LABEL_SET_TABLE = UsageLabelSet._meta.db_table


@dataclass(frozen=True)
class IngestResult:
    accepted: int
    duplicates: int
    usage: list[MetricUsage]


def _insert_events(
    events: list[tuple[str, EventIn]], received_at: datetime
) -> list[tuple[str, str]]:
    """Insert the events that are new, each given with its account id's hex digits; returns
    ``(account id hex, event_id)`` of those.

    Each row carries the current request and correlation ids (``config.request_ids``).
    """
    columns = (
        "account_id, event_id, metric, quantity_milli, occurred_at, received_at, source, metadata,"
        " labels, request_id, correlation_id"
    )
    request_id, correlation_id = current_request_id(), current_correlation_id()
    with bound_cursor() as cursor:
        if connection.vendor == "postgresql":
            # The batch travels as one JSON text parameter, sent apart from the statement
            # (``bound_cursor``), where arrays would be adapted element by element.
            # Ids as their hex digits, which PostgreSQL reads as UUIDs and writes back.
            rows = _json_rows(
                [
                    [
                        account_hex,
                        e.event_id,
                        e.metric,
                        e.quantity_milli,
                        e.occurred_at,
                        e.source,
                        e.metadata,
                        e.labels,
                    ]
                    for account_hex, e in events
                ]
            )
            cursor.execute(
                f"INSERT INTO {EVENT_TABLE} ({columns}) "
                "SELECT (x->>0)::uuid, x->>1, x->>2, (x->>3)::bigint, (x->>4)::timestamptz, %s,"
                " x->>5, (x->>6)::jsonb, (x->>7)::jsonb, %s, %s FROM jsonb_array_elements(%s::jsonb)"
                " WITH ORDINALITY AS t(x, n) ORDER BY n "
                "ON CONFLICT (account_id, event_id) DO NOTHING"
                " RETURNING translate(account_id::text, '-', ''), event_id",
                [received_at, request_id, correlation_id, rows],
            )
            return cursor.fetchall()
        adapt = connection.ops.adapt_datetimefield_value
        received = adapt(received_at)
        placeholders = ", ".join(["(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"] * len(events))
        params: list[object] = []
        for account_hex, e in events:
            params += [
                account_hex,
                e.event_id,
                e.metric,
                e.quantity_milli,
                adapt(e.occurred_at),
                received,
                e.source,
                e.metadata,
                e.labels,
                request_id,
                correlation_id,
            ]
        cursor.execute(
            f"INSERT INTO {EVENT_TABLE} ({columns}) VALUES {placeholders} "
            "ON CONFLICT (account_id, event_id) DO NOTHING RETURNING account_id, event_id",
            params,
        )
        # SQLite keeps the id as its hex digits.
        return [(str(account_id), event_id) for account_id, event_id in cursor.fetchall()]


# account (its UUID, or its hex digits, the same in every key), metric, labels key, local day
DayKey = tuple[uuid.UUID | str, str, str, date]
HourKey = tuple[uuid.UUID | str, str, str, datetime, date]  # ... hour start (UTC), its local day


@dataclass
class CounterDeltas:
    """Thousandths to add to day and hour counters, summed in memory before one upsert each."""

    days: dict[DayKey, int] = field(default_factory=lambda: defaultdict(int))
    hours: dict[HourKey, int] = field(default_factory=lambda: defaultdict(int))

    def add(
        self,
        *,
        account_id: uuid.UUID,
        metric: str,
        keys: tuple[str, ...],
        day: date,
        hour: datetime,
        hour_day: date,
        quantity_milli: int,
    ) -> None:
        """Add to the day and hour counters of each label key of ``keys`` (``keys_counted``)."""
        days, hours = self.days, self.hours
        for key in keys:
            days[(account_id, metric, key, day)] += quantity_milli
            hours[(account_id, metric, key, hour, hour_day)] += quantity_milli

    def __bool__(self) -> bool:
        return bool(self.days or self.hours)


# (account, metric) -> the label keys counted for it (``UsageCounterKey``), sorted
CountedKeys = Mapping[tuple[uuid.UUID, str], tuple[str, ...]]


@lru_cache(maxsize=8192)
def keys_counted(labels: str, counted: tuple[str, ...]) -> tuple[str, ...]:
    """The counters an event with the label set ``labels`` (a canonical key) adds to:
    ``""`` (the whole metric), then each key of ``counted`` whose pairs ``labels`` contains.

    At most one more than the account's scoped limits of the metric, whatever the labels.
    """
    if not labels or not counted:
        return ("",)
    pairs = frozenset(labels.split(PAIR_SEPARATOR))
    return ("", *(key for key in counted if pairs.issuperset(key.split(PAIR_SEPARATOR))))


def counted_keys(account_ids: Iterable[uuid.UUID]) -> dict[tuple[uuid.UUID, str], tuple[str, ...]]:
    """The label keys counted for each (account, metric) of ``account_ids``, in one query."""
    found: dict[tuple[uuid.UUID, str], list[str]] = defaultdict(list)
    rows = (
        UsageCounterKey.objects.filter(account_id__in=set(account_ids))
        .values_list("account_id", "metric", "labels")
        .order_by()
    )
    for account_id, metric, labels in rows:
        found[(account_id, metric)].append(labels)
    return {key: tuple(sorted(labels)) for key, labels in found.items()}


def hour_start(instant: datetime, zone: ZoneInfo) -> tuple[datetime, date]:
    """The start (UTC) of the ``hour`` window containing ``instant``, and its local day.

    The local clock's full hour before ``instant``, unless the UTC offset changed since then:
    the window then starts at the change (``accounts.windows``, computed there).
    """
    local = instant.astimezone(zone)
    start = instant - timedelta(
        minutes=local.minute, seconds=local.second, microseconds=local.microsecond
    )
    if start.astimezone(zone).utcoffset() == local.utcoffset():
        return start, local.date()
    start = window_containing(kind=PeriodKind.HOUR, instant=instant, zone=zone).start
    return start, start.astimezone(zone).date()


QUARTER = timedelta(minutes=15)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)  # quarter hours are counted from it


def _place(instant: datetime, zone: ZoneInfo) -> tuple[datetime, date, date]:
    hour, hour_day = hour_start(instant, zone)
    return hour, hour_day, instant.astimezone(zone).date()


@lru_cache(maxsize=16384)
def _quarter_place(zone: ZoneInfo, quarter: datetime) -> tuple[datetime, date, date] | None:
    """The place (``event_place``) of every instant of the UTC quarter hour from
    ``quarter``, or ``None`` when a window or a local day starts inside it."""
    first = _place(quarter, zone)
    last = _place(quarter + QUARTER - timedelta(microseconds=1), zone)
    return first if first == last else None


def event_place(instant: datetime, zone: ZoneInfo) -> tuple[datetime, date, date]:
    """The ``hour`` window (start in UTC, and its local day) and the local day of ``instant``.

    Windows and days are intervals: when the first and the last instant of a UTC quarter
    hour share a place, every instant between does, so it is computed once per zone and
    quarter. A quarter in which one starts (offsets and their changes fall on quarters in
    every zone today; some did on other minutes, e.g. America/Goose_Bay until 2011) is
    computed per instant.
    """
    utc = instant.astimezone(UTC)
    quarter = utc - timedelta(
        minutes=utc.minute % 15, seconds=utc.second, microseconds=utc.microsecond
    )
    return _quarter_place(zone, quarter) or _place(utc, zone)


def _json_rows(rows: list[list[Any]]) -> str:
    """``rows`` as one JSON text for ``jsonb_array_elements``, written by orjson.

    orjson writes ids (``UUID`` or their hex digits), dates and aware times (ISO 8601, with
    their offset) itself, several times faster than the standard library's encoder and
    without a ``str`` per value first. Its input here is checked already: event ids and
    JSON texts free of lone surrogates (``config.parsers``), quantities within 64 bits.
    """
    return orjson.dumps(rows).decode()


def _hex(account_id: uuid.UUID | str) -> str:
    """An account id as its hex digits, given as a ``UUID`` or as those digits."""
    return account_id if isinstance(account_id, str) else account_id.hex


def counter_rows(deltas: CounterDeltas) -> tuple[str, str]:
    """The hour and the day rows of ``deltas`` as ``counters_add`` sends them on PostgreSQL:
    two JSON texts, rows sorted in the order of their keys (an id sorts as its hex digits
    do), a stable order, so that concurrent writers lock counter rows alike."""
    hour_list = [[*k, delta] for k, delta in deltas.hours.items()]
    day_list = [[*k, delta] for k, delta in deltas.days.items()]
    hour_list.sort()
    day_list.sort()
    return _json_rows(hour_list), _json_rows(day_list)


def counters_add(
    deltas: CounterDeltas, now: datetime, rows: tuple[str, str] | None = None
) -> dict[tuple[uuid.UUID, str, date], int]:
    """Add ``deltas`` to the day and hour counters, rows in a stable order.

    On PostgreSQL one statement writes both (the hour upsert in a ``WITH``); on SQLite one
    upsert each. ``rows``: ``counter_rows(deltas)``, when the caller made them already.

    Returns the value after the addition of each whole-metric day counter written (labels
    ``""``), as the upsert wrote it (``RETURNING``): within the caller's transaction, what
    concurrent writers committed before is included.
    """
    accounts_changed({key[0] for key in deltas.days} | {key[0] for key in deltas.hours})
    totals: dict[tuple[uuid.UUID, str, date], int] = {}
    day_upsert = (
        "ON CONFLICT (account_id, metric, labels, day) DO UPDATE SET "
        f"quantity_milli = {COUNTER_TABLE}.quantity_milli + excluded.quantity_milli, "
        "updated_at = excluded.updated_at "
        "RETURNING account_id, metric, day, quantity_milli, labels = '' AS whole"
    )
    hour_upsert = (
        "ON CONFLICT (account_id, metric, labels, hour) DO UPDATE SET "
        f"quantity_milli = {HOUR_COUNTER_TABLE}.quantity_milli + excluded.quantity_milli, "
        "updated_at = excluded.updated_at"
    )
    day_columns = "account_id, metric, labels, day, quantity_milli, updated_at"
    hour_columns = "account_id, metric, labels, hour, day, quantity_milli, updated_at"
    with bound_cursor() as cursor:
        if connection.vendor == "postgresql":
            # One statement, both upserts as data-modifying WITHs, of which only the day
            # counters' whole-metric totals come back (the same shape as a single event's
            # statement, ``_EVENT_ONE_SQL``). The rows travel as
            # two JSON texts, sent apart from the statement (``bound_cursor``) as they are,
            # where arrays would be adapted element by element (a batch spread over many
            # hours and label sets writes thousands of rows), in a stable order
            # (``counter_rows``).
            hour_rows, day_rows = rows or counter_rows(deltas)
            cursor.execute(
                f"WITH h AS (INSERT INTO {HOUR_COUNTER_TABLE} ({hour_columns})"
                " SELECT (x->>0)::uuid, x->>1, x->>2, (x->>3)::timestamptz, (x->>4)::date,"
                " (x->>5)::bigint, %s FROM jsonb_array_elements(%s::jsonb) WITH ORDINALITY"
                f" AS t(x, n) ORDER BY n {hour_upsert}), "
                f"d AS (INSERT INTO {COUNTER_TABLE} ({day_columns})"
                " SELECT (x->>0)::uuid, x->>1, x->>2, (x->>3)::date, (x->>4)::bigint, %s"
                " FROM jsonb_array_elements(%s::jsonb) WITH ORDINALITY AS t(x, n) ORDER BY n"
                f" {day_upsert}) SELECT account_id, metric, day, quantity_milli FROM d WHERE whole",
                [now, hour_rows, now, day_rows],
            )
            return {(a, m, d): int(q) for a, m, d, q in cursor.fetchall()}
        # SQLite: the same rows as one JSON text per table (any number of rows, one
        # parameter each), ids as SQLite keeps them (hex) and times as Django writes them.
        days = sorted(deltas.days)  # a stable order, as on PostgreSQL
        hours = sorted(deltas.hours)
        adapt = connection.ops.adapt_datetimefield_value
        updated = adapt(now)
        if days:
            rows = json.dumps(
                [[_hex(k[0]), k[1], k[2], k[3].isoformat(), deltas.days[k]] for k in days]
            )
            cursor.execute(
                f"INSERT INTO {COUNTER_TABLE} ({day_columns}) SELECT {_json_columns(5)}, %s"
                f" FROM json_each(%s) WHERE true ORDER BY key {day_upsert}",
                [updated, rows],
            )
            # SQLite keeps the id as hex text; its date columns are read as dates.
            totals = {
                (uuid.UUID(a), m, d): int(q) for a, m, d, q, whole in cursor.fetchall() if whole
            }
        if hours:
            rows = json.dumps(
                [
                    [_hex(k[0]), k[1], k[2], adapt(k[3]), k[4].isoformat(), deltas.hours[k]]
                    for k in hours
                ]
            )
            cursor.execute(
                f"INSERT INTO {HOUR_COUNTER_TABLE} ({hour_columns}) SELECT {_json_columns(6)}, %s"
                f" FROM json_each(%s) WHERE true ORDER BY key {hour_upsert}",
                [updated, rows],
            )
        return totals


def _json_columns(count: int) -> str:
    """The first ``count`` items of SQLite's ``json_each`` row (a JSON array), as columns."""
    return ", ".join(f"json_extract(value, '$[{i}]')" for i in range(count))


LabelSetKey = tuple[uuid.UUID, str, date, str]  # account, metric, local day, labels key


def label_sets_add(keys: list[LabelSetKey]) -> list[LabelSetKey]:
    """Record the label sets ``keys`` as seen; returns those that were not seen before.

    One ``INSERT ... ON CONFLICT DO NOTHING RETURNING``, rows in a stable order.
    """
    keys = sorted(keys)
    if not keys:
        return []
    columns = "account_id, metric, day, labels"
    conflict = (
        "ON CONFLICT (account_id, metric, day, labels) DO NOTHING"
        " RETURNING account_id, metric, day, labels"
    )
    with bound_cursor() as cursor:
        if connection.vendor == "postgresql":
            # One JSON text, sent as it is (arrays are adapted element by element).
            rows = _json_rows([list(k) for k in keys])
            cursor.execute(
                f"INSERT INTO {LABEL_SET_TABLE} ({columns}) SELECT (x->>0)::uuid, x->>1,"
                " (x->>2)::date, x->>3 FROM jsonb_array_elements(%s::jsonb) WITH ORDINALITY"
                f" AS t(x, n) ORDER BY n {conflict}",
                [rows],
            )
            return [(a, m, d, labels) for a, m, d, labels in cursor.fetchall()]
        params: list[object] = []
        for k in keys:
            params += [k[0].hex, k[1], k[2].isoformat(), k[3]]
        placeholders = ", ".join(["(%s, %s, %s, %s)"] * len(keys))
        cursor.execute(
            f"INSERT INTO {LABEL_SET_TABLE} ({columns}) VALUES {placeholders} {conflict}", params
        )
        return [(uuid.UUID(a), m, d, labels) for a, m, d, labels in cursor.fetchall()]


def label_sets_count(
    days: set[tuple[uuid.UUID, str, date]],
) -> dict[tuple[uuid.UUID, str, date], int]:
    """How many label sets each (account, metric, local day) of ``days`` has, in one query."""
    if not days:
        return {}
    ordered = sorted(days)
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(
                f"SELECT account_id, metric, day, count(*) FROM {LABEL_SET_TABLE}"
                " WHERE (account_id, metric, day) IN"
                " (SELECT * FROM unnest(%s::uuid[], %s::text[], %s::date[]))"
                " GROUP BY account_id, metric, day",
                [[k[0] for k in ordered], [k[1] for k in ordered], [k[2] for k in ordered]],
            )
            return {(a, m, d): int(count) for a, m, d, count in cursor.fetchall()}
        rows = json.dumps([[k[0].hex, k[1], k[2].isoformat()] for k in ordered])
        cursor.execute(
            f"SELECT account_id, metric, day, count(*) FROM {LABEL_SET_TABLE}"
            f" WHERE (account_id, metric, day) IN (SELECT {_json_columns(3)} FROM json_each(%s))"
            " GROUP BY account_id, metric, day",
            [rows],
        )
        return {
            (uuid.UUID(a), m, d if isinstance(d, date) else date.fromisoformat(d)): int(count)
            for a, m, d, count in cursor.fetchall()
        }


MSG_TOO_MANY_LABEL_SETS = _(
    "Account %(account)s already has %(limit)s different label sets for %(metric)s on "
    "%(day)s, the most allowed per metric and day: labels must take few values (a model or "
    "a vendor, never a request id). Events without labels, or with a label set already "
    "used that day, are still accepted."
)


def _label_sets_check(firsts: dict[LabelSetKey, int], *, is_batch: bool) -> None:
    """Record the label sets of the new events; refuse the request past the bound.

    ``firsts`` maps each label set of the request's new events to the index of its first
    event. Under the (account, metric) lock, so concurrent requests count each other's sets.
    """
    added = label_sets_add(list(firsts))
    if not added:
        return
    limit = settings.USAGE_MAX_LABEL_SETS
    by_day: dict[tuple[uuid.UUID, str, date], list[LabelSetKey]] = defaultdict(list)
    for key in added:
        by_day[key[:3]].append(key)
    counts = label_sets_count(set(by_day))
    refused: dict[int, Any] = {}
    for day_key, new in by_day.items():
        room = limit - (counts.get(day_key, 0) - len(new))  # sets before this request
        new.sort(key=firsts.__getitem__)
        for key in new[max(room, 0) :]:
            account_id, metric, day, _labels = key
            refused[firsts[key]] = MSG_TOO_MANY_LABEL_SETS % {
                "account": account_id,
                "limit": limit,
                "metric": metric,
                "day": day.isoformat(),
            }
    if refused:
        if is_batch:
            raise EventsInvalid(
                {"events": {str(index): {"labels": [refused[index]]} for index in sorted(refused)}}
            )
        raise EventsInvalid({"labels": list(refused.values())})


def _daily_limit_errors(keys: list[tuple[uuid.UUID, str, date]], *, is_batch: bool) -> Errors:
    """The refusal of a request that would take the counters ``keys`` past ``DAILY_LIMIT``."""
    messages = [
        _(
            "The usage of %(metric)s on %(day)s for account %(account)s would pass "
            "%(limit)s %(unit)s, the most an account may record per metric and day."
        )
        % {
            "metric": metric,
            "day": day.isoformat(),
            "account": account_id,
            "limit": DAILY_LIMIT,
            "unit": METRICS[metric].unit,
        }
        for account_id, metric, day in keys
    ]
    return {"events": messages} if is_batch else {"quantity": messages}


@dataclass(frozen=True)
class EventsInserted:
    """What ``usage_events_insert`` wrote: the request's events, the index of the first copy
    of each ``(account id hex, event_id)``, and those keys of the events that were new."""

    events: list[EventIn]
    first: dict[tuple[str, str], int]
    new: list[tuple[str, str]]


def usage_events_insert(*, events: list[EventIn], now: datetime) -> EventsInserted:
    """Insert the request's checked ``events`` that are new (the first copy of an event id
    wins, in the request as across requests), in request order of their first copies.

    Call inside the recording transaction, *before* taking the usage locks: the unique
    index on ``(account, event_id)`` alone decides which copy is first (a concurrent copy
    waits for this transaction to end), and nothing here reads usage, so the batch's
    largest statement runs while another batch of the same accounts holds their locks.
    ``usage_events_store`` then counts the new events, under the locks.

    On PostgreSQL an event naming no account raises ``IntegrityError`` (a foreign key
    violation, SQLSTATE ``23503``) here, which rolls the transaction back; the caller tells
    which events those are.
    """
    # Per event, accounts are keyed by their ids' hex digits: a ``UUID`` hashes and compares
    # in Python, a ``str`` in C (and keeps its hash). Each id object of the request is
    # spelled once (``id()`` is safe here: the events hold every one of them).
    hex_of: dict[int, str] = {}
    first: dict[tuple[str, str], int] = {}  # (account hex, event_id) -> its first index
    for index, event in enumerate(events):
        account_id = event.account_id
        account_hex = hex_of.get(id(account_id))
        if account_hex is None:
            account_hex = hex_of[id(account_id)] = account_id.hex
        first.setdefault((account_hex, event.event_id), index)
    # Hex digits sort as the ids do: rows go in (account, event id) order, as ever.
    rows = [(key[0], events[first[key]]) for key in sorted(first)]
    if connection.vendor != "postgresql":
        return EventsInserted(events=events, first=first, new=_insert_events(rows, now))
    with connection.cursor() as cursor:
        # Each event's account is checked as its row is inserted, here, rather than at
        # COMMIT as Django's deferred foreign keys are: a batch's thousand checks then run
        # before the locks instead of under them. The constraints are deferred again after.
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
        new = _insert_events(rows, now)
        cursor.execute("SET CONSTRAINTS ALL DEFERRED")
    return EventsInserted(events=events, first=first, new=new)


@dataclass(frozen=True)
class EventsSummed:
    """The new events of a request summed as ``usage_events_store`` counts them, in the
    time zones ``zones``: per account (hex digits), metric, label set and place (local
    hour and day, ``event_place``); the first index of each label set per account, metric
    and local day; and the events that settle a reservation."""

    zones: dict[uuid.UUID, str]  # account id -> the time zone's key
    groups: dict[tuple[str, str, str, tuple[datetime, date, date]], int]
    label_sets: dict[tuple[str, str, date, str], int]
    settling: list[EventIn]
    # The counter deltas and rows (PostgreSQL) of the sums, for the label keys counted as
    # this process last read them (``counted``); ``None`` when it had not read them all.
    counted: dict[tuple[str, str], tuple[str, ...]] | None = None
    deltas: CounterDeltas | None = None
    rows: tuple[str, str] | None = None


# What this process last read of each account under the usage locks (``usage_events_store``):
# its time zone, and per metric the label keys counted. A guess that lets a batch sum its
# events and make its counter rows before it takes them (``usage_events_guess``), never
# trusted. A bound on the memory: past it, all is forgotten.
_zones_read: dict[uuid.UUID, ZoneInfo] = {}
_counted_read: dict[uuid.UUID, dict[str, tuple[str, ...]]] = {}
MAX_READ = 10_000


def _counter_deltas(
    groups: Mapping[tuple[str, str, str, tuple[datetime, date, date]], int],
    counted: Mapping[tuple[str, str], tuple[str, ...]],
) -> CounterDeltas:
    """The sums spread over the counters of their metric and of the counted keys their
    label sets contain; ids stay hex digits (``counters_add`` writes either spelling)."""
    deltas = CounterDeltas()
    days, hours = deltas.days, deltas.hours
    for (account_hex, metric, labels, (hour, hour_day, day)), quantity in groups.items():
        for key in keys_counted(labels, counted.get((account_hex, metric), ())):
            days[(account_hex, metric, key, day)] += quantity
            hours[(account_hex, metric, key, hour, hour_day)] += quantity
    return deltas


def _counted_guess(
    label_sets: Iterable[tuple[str, str, date, str]], zones: Mapping[uuid.UUID, ZoneInfo]
) -> dict[tuple[str, str], tuple[str, ...]] | None:
    """What ``usage_events_store`` will read of the counted keys for these label sets'
    accounts, as this process last read them; ``None`` when it has not read one of them."""
    ids = {account_id.hex: account_id for account_id in zones}
    guess: dict[tuple[str, str], tuple[str, ...]] = {}
    for account_hex in {k[0] for k in label_sets}:
        known = _counted_read.get(ids[account_hex])
        if known is None:
            return None
        guess.update(((account_hex, metric), keys) for metric, keys in known.items())
    return guess


def usage_events_sum(
    *, inserted: EventsInserted, zones: Mapping[uuid.UUID, ZoneInfo]
) -> EventsSummed:
    """Sum the events ``usage_events_insert`` found new, in the time zones ``zones`` (of
    every account they name). Python alone, no query: the caller may sum before it takes
    the usage locks, in the zones it expects, and hand the sums to ``usage_events_store``,
    which sums again if the zones it reads under the locks are others."""
    events, first = inserted.events, inserted.first
    zone_of = {account_id.hex: zone for account_id, zone in zones.items()}
    # Summed per label set and hour first, then spread over the counted keys of each set.
    groups: dict[tuple[str, str, str, tuple[datetime, date, date]], int] = defaultdict(int)
    label_sets: dict[tuple[str, str, date, str], int] = {}
    settling: list[EventIn] = []
    places: dict[tuple[str, int], tuple[datetime, date, date] | None] = {}
    for account_hex, event_id in inserted.new:
        index = first[(account_hex, event_id)]
        event = events[index]
        if event.reservation_id:
            settling.append(event)
        # The place of an event is its account's zone's for its UTC quarter hour
        # (``event_place``), looked up once per account and quarter.
        occurred_at = event.occurred_at
        quarter = (occurred_at - EPOCH) // QUARTER
        place = places.get((account_hex, quarter), False)
        if place is False:
            place = places[(account_hex, quarter)] = _quarter_place(
                zone_of[account_hex], EPOCH + quarter * QUARTER
            )
        if place is None:  # a window or a local day starts inside this quarter
            place = _place(occurred_at, zone_of[account_hex])
        labels = event.labels_key
        groups[(account_hex, event.metric, labels, place)] += event.quantity_milli
        if labels:
            set_key = (account_hex, event.metric, place[2], labels)
            if index < label_sets.get(set_key, len(events)):
                label_sets[set_key] = index
    counted = _counted_guess(label_sets, zones)
    deltas = rows = None
    if counted is not None:
        deltas = _counter_deltas(groups, counted)
        if deltas and connection.vendor == "postgresql":
            rows = counter_rows(deltas)
    return EventsSummed(
        zones={account_id: zone.key for account_id, zone in zones.items()},
        groups=groups,
        label_sets=label_sets,
        settling=settling,
        counted=counted,
        deltas=deltas,
        rows=rows,
    )


def usage_events_guess(
    *, inserted: EventsInserted, account_ids: Iterable[uuid.UUID]
) -> EventsSummed | None:
    """``usage_events_sum`` in the time zones this process last read for ``account_ids``
    (the accounts of the events), to be made before the usage locks; ``None`` when it has
    not read one of them."""
    zones = {account_id: _zones_read.get(account_id) for account_id in account_ids}
    if None in zones.values():
        return None
    return usage_events_sum(inserted=inserted, zones=zones)


def usage_events_store(
    *,
    inserted: EventsInserted,
    zones: Mapping[uuid.UUID, ZoneInfo],
    now: datetime,
    is_batch: bool,
    summed: EventsSummed | None = None,
) -> int:
    """Count the events ``usage_events_insert`` found new; returns how many they are.

    Call inside the recording transaction, under the (account, metric) lock of every event
    (``usage_lock``); ``zones`` holds each account's time zone. Each new event adds to the
    day and hour counters of its metric and of the counted label keys its labels contain
    (``keys_counted``, ``CounterDeltas``), and settles the reservation it names, if active
    (``reservations_settle``). ``summed``: the new events summed before the locks
    (``usage_events_guess``), used when summed in ``zones``.

    Raises ``EventsInvalid``, which rolls the transaction back, when a new event would add
    a label set past ``USAGE_MAX_LABEL_SETS`` for its account, metric and local day (keyed
    by its ``labels``), or when the request would take a daily counter past
    ``DAILY_LIMIT`` (``usage.models``).
    """
    if len(_zones_read) > MAX_READ or len(_counted_read) > MAX_READ:
        _zones_read.clear()
        _counted_read.clear()
    _zones_read.update(zones)
    if summed is None or summed.zones != {a: zone.key for a, zone in zones.items()}:
        summed = usage_events_sum(inserted=inserted, zones=zones)
    groups, label_sets, settling = summed.groups, summed.label_sets, summed.settling
    ids = {account_id.hex: account_id for account_id in zones}
    if label_sets:
        _label_sets_check(
            {(ids[k[0]], k[1], k[2], k[3]): index for k, index in sorted(label_sets.items())},
            is_batch=is_batch,
        )
        # Read under the usage lock: a key that a change of limits starts counting is
        # either committed with its counters filled before this read, or waits for this
        # transaction and fills from its events (``counter_keys_sync``).
        labelled = {ids[k[0]] for k in label_sets}
        read = counted_keys(labelled)
        for account_id in labelled:
            _counted_read[account_id] = {}
        for (account_id, metric), keys in read.items():
            _counted_read[account_id][metric] = keys
        counted = {(account_id.hex, metric): keys for (account_id, metric), keys in read.items()}
    else:
        counted = {}
    deltas, rows = summed.deltas, summed.rows
    if deltas is None or summed.counted != counted:  # made for other keys, or not made
        deltas, rows = _counter_deltas(groups, counted), None
    if deltas:
        # Checked on the totals the upsert wrote, under the usage lock and the counter
        # rows' locks, so concurrent batches never pass the limit together.
        totals = counters_add(deltas, now, rows)
        passed = sorted(key for key, total in totals.items() if total > DAILY_LIMIT_MILLI)
        if passed:
            raise EventsInvalid(_daily_limit_errors(passed, is_batch=is_batch))
    if settling:
        # In the same transaction as the usage: capacity moves from reserved to used at once.
        reservations_settle(events=settling, now=now)
    return len(inserted.new)


# --- One event in one statement (PostgreSQL) -------------------------------------------

# The event, the label set it adds, its day and hour counters and the reservation it settles,
# written in one statement whose data-modifying ``WITH`` parts each read the event inserted
# (``e``): a duplicate writes nothing else. The main query counts, in the statement's
# snapshot, the label sets the account's metric had that day before this one.
_EVENT_ONE_SQL = f"""
WITH e AS (
  INSERT INTO {EVENT_TABLE} (account_id, event_id, metric, quantity_milli, occurred_at,
    received_at, source, metadata, labels, request_id, correlation_id)
  VALUES (%(a)s::uuid, %(event_id)s, %(m)s, %(q)s, %(occurred)s, %(now)s, %(source)s,
    %(metadata)s::jsonb, %(labels)s::jsonb, %(request_id)s, %(correlation_id)s)
  ON CONFLICT (account_id, event_id) DO NOTHING RETURNING 1
), d AS (
  INSERT INTO {COUNTER_TABLE} (account_id, metric, labels, day, quantity_milli, updated_at)
  SELECT %(a)s::uuid, %(m)s, k, %(day)s::date, %(q)s, %(now)s
  FROM e, unnest(%(keys)s::text[]) AS k ORDER BY k
  ON CONFLICT (account_id, metric, labels, day) DO UPDATE SET
    quantity_milli = {COUNTER_TABLE}.quantity_milli + excluded.quantity_milli,
    updated_at = excluded.updated_at
  RETURNING labels, quantity_milli
), h AS (
  INSERT INTO {HOUR_COUNTER_TABLE} (account_id, metric, labels, hour, day, quantity_milli,
    updated_at)
  SELECT %(a)s::uuid, %(m)s, k, %(hour)s, %(hour_day)s::date, %(q)s, %(now)s
  FROM e, unnest(%(keys)s::text[]) AS k ORDER BY k
  ON CONFLICT (account_id, metric, labels, hour) DO UPDATE SET
    quantity_milli = {HOUR_COUNTER_TABLE}.quantity_milli + excluded.quantity_milli,
    updated_at = excluded.updated_at
){{label_set}}{{settle}}
SELECT (SELECT count(*) FROM e), (SELECT quantity_milli FROM d WHERE labels = ''){{label_sets}}
"""
_EVENT_ONE_LABEL_SET = f""", s AS (
  INSERT INTO {LABEL_SET_TABLE} (account_id, metric, day, labels)
  SELECT %(a)s::uuid, %(m)s, %(day)s::date, %(labels_key)s FROM e
  ON CONFLICT (account_id, metric, day, labels) DO NOTHING RETURNING 1
)"""
_EVENT_ONE_LABEL_SETS = f""", (SELECT count(*) FROM s),
  (SELECT count(*) FROM {LABEL_SET_TABLE}
   WHERE account_id = %(a)s::uuid AND metric = %(m)s AND day = %(day)s::date)"""
_EVENT_ONE_SETTLE = f""", r AS (
  UPDATE {Reservation._meta.db_table} SET status = '{Reservation.Status.SETTLED.value}',
    ended_at = %(now)s, settled_by = %(event_id)s
  WHERE account_id = %(a)s::uuid AND reservation_id = %(reservation_id)s
    AND status = '{Reservation.Status.ACTIVE.value}' AND expires_at > %(now)s
    AND EXISTS (SELECT 1 FROM e)
  RETURNING 1
)"""


def usage_event_store_one(
    *, event: EventIn, zone: ZoneInfo, counted: tuple[str, ...], now: datetime
) -> bool:
    """Store one checked ``event`` as ``usage_events_store`` would, in one statement, on
    PostgreSQL; returns whether it was new.

    Call inside the recording transaction, after ``usage_lock`` of its (account, metric)
    and after reading ``counted``, the label keys counted for it (``UsageCounterKey``), in
    a statement of that transaction: the keys, the label sets counted here and the totals
    written are then all that other writers committed. Raises ``EventsInvalid`` as
    ``usage_events_store`` does (label sets past ``USAGE_MAX_LABEL_SETS``, a day past
    ``DAILY_LIMIT``), which rolls the transaction back.
    """
    accounts_changed([event.account_id])
    hour, hour_day, day = event_place(event.occurred_at, zone)
    params = {
        "a": str(event.account_id),
        "event_id": event.event_id,
        "m": event.metric,
        "q": event.quantity_milli,
        "occurred": event.occurred_at,
        "now": now,
        "source": event.source,
        "metadata": event.metadata,
        "labels": event.labels,
        "labels_key": event.labels_key,
        "request_id": current_request_id(),
        "correlation_id": current_correlation_id(),
        "day": day,
        "hour": hour,
        "hour_day": hour_day,
        "keys": list(keys_counted(event.labels_key, counted)),
        "reservation_id": event.reservation_id,
    }
    sql = _EVENT_ONE_SQL.format(
        label_set=_EVENT_ONE_LABEL_SET if event.labels_key else "",
        settle=_EVENT_ONE_SETTLE if event.reservation_id else "",
        label_sets=_EVENT_ONE_LABEL_SETS if event.labels_key else "",
    )
    with bound_cursor() as cursor:
        cursor.execute(sql, params)
        row = cursor.fetchone()
    inserted, total = int(row[0]), row[1]
    if not inserted:
        return False
    if event.labels_key and row[2] and row[3] >= settings.USAGE_MAX_LABEL_SETS:
        # A new label set, and the day had as many as allowed before it (the count is the
        # statement's snapshot, which does not see the set inserted beside it).
        raise EventsInvalid(
            {
                "labels": [
                    MSG_TOO_MANY_LABEL_SETS
                    % {
                        "account": event.account_id,
                        "limit": settings.USAGE_MAX_LABEL_SETS,
                        "metric": event.metric,
                        "day": day.isoformat(),
                    }
                ]
            }
        )
    if total is not None and total > DAILY_LIMIT_MILLI:
        raise EventsInvalid(
            _daily_limit_errors([(event.account_id, event.metric, day)], is_batch=False)
        )
    return True


# --- The label keys counted ----------------------------------------------------------


def counter_keys_sync(*, account: Account, now: datetime | None = None) -> None:
    """Count the label keys that ``account``'s scoped limits read, from the day each needs.

    Call in the transaction that wrote the scoped limits (``backoffice.services
    .limits_replace``, which the admin, the API and ``set_limits`` all go through), before
    reading their usage. Takes the usage locks of every metric of the account first, as
    recording does: an event is either committed before the fill below reads the events,
    or recorded after this transaction, once the new key is counted; never both, never
    neither. A line whose window starts on a day its key is not complete from (a new key,
    or a longer window than the key's lines had) gets the counters of those days rebuilt
    from the events: what was recorded in its current period counts (SPEC 11.2). A key no
    line reads any more stops being counted, and its counters are deleted. ``minute``
    lines read their events and need no counter.
    """
    now = now or timezone.now()
    usage_lock(pairs=[(account.pk, metric) for metric in METRICS])
    zone = account.zone
    needed: dict[tuple[str, str], date] = {}
    lines = (
        ScopedLimit.objects.filter(account=account)
        .exclude(labels_key="")
        .exclude(period=PeriodKind.MINUTE)
    )
    for line in lines:
        first = line_window(line=line, zone=zone, now=now).start.astimezone(zone).date()
        key = (line.metric, line.labels_key)
        needed[key] = min(first, needed.get(key, first))
    counted = {
        (row.metric, row.labels): row for row in UsageCounterKey.objects.filter(account=account)
    }
    for (metric, labels), row in sorted(counted.items()):
        if (metric, labels) not in needed:
            _key_counters_delete(account, metric, labels, None, None)
            row.delete()
    deltas = CounterDeltas()
    for (metric, labels), first in sorted(needed.items()):
        row = counted.get((metric, labels))
        if row is not None and (row.since is None or row.since <= first):
            continue
        until = None if row is None else row.since
        # Those days' counters were not kept up to date: replaced by their events' sums.
        _key_counters_delete(account, metric, labels, first, until)
        _key_fill(deltas, account=account, metric=metric, labels=labels, first=first, until=until)
        if row is None:
            UsageCounterKey.objects.create(
                account=account, metric=metric, labels=labels, since=first
            )
        else:
            UsageCounterKey.objects.filter(pk=row.pk).update(since=first)
    if deltas:
        counters_add(deltas, now)


def _key_counters_delete(
    account: Account, metric: str, labels: str, first: date | None, until: date | None
) -> None:
    """Delete the day and hour counters of one label key of ``account``'s ``metric``, of the
    local days from ``first`` (``None``: every day) to ``until`` excluded (``None``: on)."""
    condition = Q(account=account, metric=metric, labels=labels)
    if first is not None:
        condition &= Q(day__gte=first)
    if until is not None:
        condition &= Q(day__lt=until)
    UsageCounter.objects.filter(condition).delete()
    UsageHourCounter.objects.filter(condition).delete()


def _key_fill(
    deltas: CounterDeltas,
    *,
    account: Account,
    metric: str,
    labels: str,
    first: date,
    until: date | None,
) -> None:
    """Add to ``deltas`` the events of ``account``'s ``metric`` whose labels contain
    ``labels``, of the local days from ``first`` to ``until`` (excluded; ``None``: on).

    One query: the database sums the events per UTC minute, each placed here in its hour
    and local day (every hour window starts on a full UTC minute).
    """
    zone = account.zone
    events = UsageEvent.objects.filter(
        account=account, metric=metric, occurred_at__gte=_day_start(first, zone)
    )
    if until is not None:
        events = events.filter(occurred_at__lt=_day_start(until, zone))
    for name, value in labels_from_key(labels).items():
        events = events.filter(**{f"labels__{name}": value})
    minutes = (
        events.values(
            moment=Trunc("occurred_at", "minute", tzinfo=UTC, output_field=DateTimeField())
        )
        .annotate(total=Sum("quantity_milli"))
        .order_by()
    )
    keys = (labels,)
    for row in minutes:
        minute = row["moment"].astimezone(UTC)
        hour, hour_day = hour_start(minute, zone)
        deltas.add(
            account_id=account.pk,
            metric=metric,
            keys=keys,
            day=minute.astimezone(zone).date(),
            hour=hour,
            hour_day=hour_day,
            quantity_milli=int(row["total"]),
        )


# --- Rebuilding counters from events -------------------------------------------------

REBUILD_BATCH = 100  # accounts per transaction (and per progress report)

# account, metric, labels key, local day, hour start (UTC; ``None`` for a day counter)
CounterKey = tuple[uuid.UUID, str, str, date, datetime | None]


@dataclass(frozen=True)
class Drift:
    """A counter that differs from the sum of its events; ``found_milli`` ``None``: no row.

    A day counter has ``hour`` ``None``; an hour counter has its start (UTC), and ``day`` is
    its local day. ``labels`` is the counter's label subset (``""``: the whole metric).
    """

    account_id: uuid.UUID
    external_id: str
    metric: str
    day: date
    found_milli: int | None
    expected_milli: int
    labels: str = ""
    hour: datetime | None = None

    @property
    def found(self) -> Decimal:
        return from_milli(self.found_milli or 0)

    @property
    def expected(self) -> Decimal:
        return from_milli(self.expected_milli)

    @property
    def place(self) -> str:
        """Which counter: ``2027-03-28``, then its hour (UTC) and labels when it has them."""
        parts = [self.day.isoformat()]
        if self.hour is not None:
            parts.append(self.hour.astimezone(UTC).strftime("%H:%MZ"))
        if self.labels:
            parts.append(self.labels)
        return " ".join(parts)


@dataclass(frozen=True)
class RebuildProgress:
    """Where a rebuild stands, reported after each batch of accounts."""

    accounts_done: int
    accounts_total: int
    checked: int  # counters compared so far (stored, expected, or both)
    drifted: int


def _day_start(day: date, zone: ZoneInfo) -> datetime:
    """The moment ``day`` begins in ``zone`` (the first moment that exists, across a DST gap)."""
    return datetime.combine(day, time(), tzinfo=zone)


def _counters_and_sums(
    account_ids: list[uuid.UUID], zone: ZoneInfo, first: date | None, end: date | None
) -> list[dict[str, Any]]:
    """Stored day and hour counters, and the sums of events per label set and UTC minute.

    One statement (``UNION ALL``) reads them from the same snapshot, so an event recorded
    meanwhile is either in all (with its counter increments) or in none. Events are summed
    per minute: every hour window (hence every local day) starts on a full UTC minute, so
    the caller places each minute in its hour and day.
    """
    events = UsageEvent.objects.filter(account_id__in=account_ids)
    days = UsageCounter.objects.filter(account_id__in=account_ids)
    hours = UsageHourCounter.objects.filter(account_id__in=account_ids)
    if first is not None:
        events = events.filter(occurred_at__gte=_day_start(first, zone))
        days = days.filter(day__gte=first)
        hours = hours.filter(day__gte=first)
    if end is not None:
        events = events.filter(occurred_at__lt=_day_start(end, zone))
        days = days.filter(day__lt=end)
        hours = hours.filter(day__lt=end)
    nothing = Value(None, output_field=BigIntegerField())
    sums = events.values(
        "account_id",
        "metric",
        lab=Cast("labels", TextField()),
        local_day=Value(None, output_field=DateField()),
        moment=Trunc("occurred_at", "minute", tzinfo=UTC, output_field=DateTimeField()),
    ).annotate(expected=Sum("quantity_milli"), found=nothing)
    stored_days = days.values(
        "account_id",
        "metric",
        lab=Cast("labels", TextField()),
        local_day=F("day"),
        moment=Value(None, output_field=DateTimeField()),
    ).annotate(expected=nothing, found=F("quantity_milli"))
    stored_hours = hours.values(
        "account_id",
        "metric",
        lab=Cast("labels", TextField()),
        local_day=F("day"),
        moment=F("hour"),
    ).annotate(expected=nothing, found=F("quantity_milli"))
    return list(sums.order_by().union(stored_days.order_by(), stored_hours.order_by(), all=True))


# (account, metric) -> {counted label key: the first day its counters are complete from}
CountedSince = Mapping[tuple[uuid.UUID, str], Mapping[str, date | None]]


def counted_since(
    account_ids: Iterable[uuid.UUID],
) -> dict[tuple[uuid.UUID, str], dict[str, date | None]]:
    """The label keys counted for each (account, metric) of ``account_ids``, each with its
    ``since``, in one query."""
    found: dict[tuple[uuid.UUID, str], dict[str, date | None]] = defaultdict(dict)
    rows = UsageCounterKey.objects.filter(account_id__in=set(account_ids)).values_list(
        "account_id", "metric", "labels", "since"
    )
    for account_id, metric, labels, since in rows:
        found[(account_id, metric)][labels] = since
    return dict(found)


def _is_kept(
    counted: CountedSince, account_id: uuid.UUID, metric: str, labels: str, day: date
) -> bool:
    """Whether the counter of ``labels`` on ``day`` is kept up to date: always for ``""``,
    else from its key's ``since`` on while the key is counted."""
    if not labels:
        return True
    keys = counted.get((account_id, metric))
    if keys is None or labels not in keys:
        return False
    since = keys[labels]
    return since is None or day >= since


def _counter_totals(
    rows: list[dict[str, Any]],
    zone: ZoneInfo,
    totals: dict[CounterKey, list[Any]],
    counted: CountedSince,
) -> None:
    """Add the rows of ``_counters_and_sums`` to ``totals``: ``[expected, found]`` per counter.

    Only the counters kept up to date are compared (``_is_kept``): ``""``, and the counted
    label keys from their ``since``; the rows of a key no longer counted are not read.
    """
    for row in rows:
        account_id, metric = row["account_id"], row["metric"]
        if row["expected"] is None:  # a stored counter
            if _is_kept(counted, account_id, metric, row["lab"], row["local_day"]):
                hour = row["moment"]
                key = (account_id, metric, row["lab"], row["local_day"], hour)
                totals.setdefault(key, [0, None])[1] = int(row["found"])
            continue
        minute = row["moment"].astimezone(UTC)
        labels = row["lab"]
        labels = labels_key(json.loads(labels) if isinstance(labels, str) else labels or {})
        hour, hour_day = hour_start(minute, zone)
        day = minute.astimezone(zone).date()
        quantity = int(row["expected"])
        keys = tuple(sorted(counted.get((account_id, metric), {})))
        for key in keys_counted(labels, keys):
            if _is_kept(counted, account_id, metric, key, day):
                totals.setdefault((account_id, metric, key, day, None), [0, None])[0] += quantity
            if _is_kept(counted, account_id, metric, key, hour_day):
                totals.setdefault((account_id, metric, key, hour_day, hour), [0, None])[0] += (
                    quantity
                )


def _drift_order(key: CounterKey) -> tuple[Any, ...]:
    account_id, metric, labels, day, hour = key
    return (account_id, metric, day, hour is not None, hour.timestamp() if hour else 0.0, labels)


def _rebuild_batch(
    batch: list[tuple[uuid.UUID, str, str]],
    *,
    first: date | None,
    end: date | None,
    repair: bool,
    repaired_by: str,
    now: datetime,
) -> tuple[list[Drift], int]:
    """Compare (and repair) the counters of ``batch``, rows of (id, external id, time zone).

    Returns the drifts and how many counters were compared.
    """
    ids = [account_id for account_id, _external_id, _zone in batch]
    external_ids = {account_id: external_id for account_id, external_id, _zone in batch}
    by_zone: dict[str, list[uuid.UUID]] = defaultdict(list)
    for account_id, _external_id, zone_name in batch:
        by_zone[zone_name].append(account_id)

    with transaction.atomic():
        if repair:
            # Two rebuilds of the same accounts would both add the same correction: the second
            # waits here, then finds nothing to repair. NO KEY UPDATE does not conflict with the
            # KEY SHARE locks of foreign-key checks, so recording events never waits for this.
            list(
                Account.objects.select_for_update(no_key=True)
                .filter(pk__in=ids)
                .order_by("pk")
                .values_list("pk", flat=True)
            )
        boundary = purge_boundary()
        lower = max((day for day in (first, boundary) if day is not None), default=None)

        totals: dict[CounterKey, list[Any]] = {}
        # Read before the counters: a key counted since is filled in the transaction that
        # counts it (``counter_keys_sync``), so its counters are either all read or skipped.
        counted = counted_since(ids)
        for zone_name, account_ids in sorted(by_zone.items()):
            zone = ZoneInfo(zone_name)
            rows = _counters_and_sums(account_ids, zone, lower, end)
            _counter_totals(rows, zone, totals, counted)

        # A purge records its boundary before deleting anything: read again, so the days
        # whose events were being deleted while they were summed are left alone.
        boundary = purge_boundary()
        drifts = [
            Drift(
                account_id=key[0],
                external_id=external_ids[key[0]],
                metric=key[1],
                labels=key[2],
                day=key[3],
                hour=key[4],
                found_milli=found,
                expected_milli=expected,
            )
            for key, (expected, found) in sorted(
                totals.items(), key=lambda item: _drift_order(item[0])
            )
            if (found or 0) != expected and (boundary is None or key[3] >= boundary)
        ]
        if repair and drifts:
            # Add the difference rather than set the sum: events recorded since the read above
            # already added themselves to the counter, and must stay counted.
            deltas = CounterDeltas()
            for d in drifts:
                difference = d.expected_milli - (d.found_milli or 0)
                if d.hour is None:
                    deltas.days[(d.account_id, d.metric, d.labels, d.day)] = difference
                else:
                    deltas.hours[(d.account_id, d.metric, d.labels, d.hour, d.day)] = difference
            counters_add(deltas, now)
            CounterRepair.objects.bulk_create(
                CounterRepair(
                    account_id=d.account_id,
                    metric=d.metric,
                    labels=d.labels,
                    day=d.day,
                    hour=d.hour,
                    found_milli=d.found_milli or 0,
                    expected_milli=d.expected_milli,
                    repaired_by=repaired_by,
                )
                for d in drifts
            )
    return drifts, len(totals)


def counters_rebuild(
    *,
    account: Account | None = None,
    period: Period | None = None,
    since_day: date | None = None,
    repair: bool = True,
    repaired_by: str,
    progress: Callable[[RebuildProgress], None] | None = None,
    now: datetime | None = None,
) -> list[Drift]:
    """Compare the daily counters with the sums of their events; set them right when ``repair``.

    Covers every account (or ``account``), and the local days (each in its account's
    time zone) of ``period``'s month and from ``since_day`` on; a counter without events
    and events without a counter are drifts too. Days before the latest purge boundary
    (``EventPurge.before``) are never checked: their events are gone, their counters stay.

    Events are summed by the database, per account, metric and local day, one query per
    time zone and batch of ``REBUILD_BATCH`` accounts, each batch in its own transaction.
    A repair adds the difference to the counter (events recorded meanwhile stay counted)
    and writes one ``CounterRepair`` row per counter. Events are never changed.
    """
    now = now or timezone.now()
    first = since_day
    end = None
    if period is not None:
        # A period's days are the same dates in every zone: each account's own month is read.
        first = max(first, period.first_day) if first is not None else period.first_day
        end = period.end_day

    accounts = Account.objects.order_by("pk")
    if account is not None:
        accounts = accounts.filter(pk=account.pk)
    total = accounts.count()
    drifts: list[Drift] = []
    checked = done = 0
    last_id: uuid.UUID | None = None
    while True:
        page = accounts if last_id is None else accounts.filter(pk__gt=last_id)
        batch = list(page.values_list("pk", "external_id", "timezone")[:REBUILD_BATCH])
        if not batch:
            break
        last_id = batch[-1][0]
        found, batch_checked = _rebuild_batch(
            batch, first=first, end=end, repair=repair, repaired_by=repaired_by, now=now
        )
        drifts += found
        checked += batch_checked
        done += len(batch)
        if progress is not None:
            progress(
                RebuildProgress(
                    accounts_done=done,
                    accounts_total=max(total, done),
                    checked=checked,
                    drifted=len(drifts),
                )
            )
    return drifts


# --- Purging old events ----------------------------------------------------------------

PURGE_CHUNK = 10_000  # events per DELETE: a big purge never holds one huge transaction


def usage_events_purge(
    *,
    before: date,
    dry_run: bool,
    now: datetime | None = None,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Delete the events of every local day before ``before`` (each account's own time zone).

    Counters are kept. Refuses (``ValueError``) a ``before`` after the first day of the
    earliest current period in any time zone, so no current period ever loses events.
    The boundary is recorded (``EventPurge``) before the first deletion so that
    ``counters_rebuild`` never takes a half-purged day for drift. Returns how many events
    were deleted, or with ``dry_run`` would be.
    """
    limit = earliest_current_day(now)
    if before > limit:
        raise ValueError(
            _(
                "Refused: %(before)s is in a current period. Events can only be purged "
                "before %(limit)s or an earlier day."
            )
            % {"before": before.isoformat(), "limit": limit.isoformat()}
        )
    zone_names = Account.objects.order_by("timezone").values_list("timezone", flat=True).distinct()
    doomed = [
        UsageEvent.objects.filter(
            account__timezone=zone_name, occurred_at__lt=_day_start(before, ZoneInfo(zone_name))
        )
        for zone_name in zone_names
    ]
    if dry_run:
        return sum(events.count() for events in doomed)

    purge = EventPurge.objects.create(before=before)
    deleted = 0
    for events in doomed:
        while ids := list(events.values_list("pk", flat=True)[:PURGE_CHUNK]):
            with transaction.atomic():
                count, _by_model = UsageEvent.objects.filter(pk__in=ids).delete()
                EventPurge.objects.filter(pk=purge.pk).update(deleted=F("deleted") + count)
            deleted += count
            if progress is not None:
                progress(deleted)
    # The label sets of those days only served the bound of their day, long closed.
    UsageLabelSet.objects.filter(day__lt=before).delete()
    return deleted


# --- Extensions --------------------------------------------------------------------------

MSG_EXTENSION_NOT_ENTERPRISE = _("Extensions can only be granted to an Enterprise account.")
MSG_EXTENSION_CLOSED_PERIOD = _(
    "Extensions can only be granted for the current period or a later one."
)
MSG_EXTENSION_NOT_CURRENT = _(
    "An extension of a scoped limit can only be granted for the line's current period."
)
MSG_EXTENSION_UNKNOWN_LINE = _("This limit line does not exist (any more) on this account.")
MSG_EXTENSION_NO_BLOCKED = _(
    "This line has no blocked threshold: an extension raises the blocked threshold, "
    "so set one first."
)


@dataclass(frozen=True)
class ExtensionTarget:
    """What an extension raises: a line and one of its periods (see ``Extension``).

    ``scoped_limit`` ``None`` is the whole-metric monthly line of ``metric``, ``period``
    the first day of its month; else ``period_start`` starts the line's period (a rolling
    window's: its last day) and ``period`` is that instant's local day.
    """

    metric: str
    scoped_limit: ScopedLimit | None
    period: date
    period_start: datetime | None = None


def _extension_line(
    account: Account, scoped_limit_id: Any, errors: dict[str, list[ValidationError]]
) -> ScopedLimit | None:
    if isinstance(scoped_limit_id, bool) or not isinstance(scoped_limit_id, int):
        line = None
    else:
        line = ScopedLimit.objects.filter(account=account, pk=scoped_limit_id).first()
    if line is None:
        errors["line"] = [ValidationError(MSG_EXTENSION_UNKNOWN_LINE, code="unknown_line")]
    return line


def extension_validate(
    *,
    account: Account,
    metric: Any = None,
    amount: Any,
    reason: Any,
    period: Period | None = None,
    scoped_limit_id: Any = None,
    period_start: datetime | None = None,
    now: datetime | None = None,
    limits: LimitsDocument | None = None,
) -> ExtensionTarget:
    """Check an extension before it is granted; returns the line and period it raises.

    Without ``scoped_limit_id``, the monthly line of ``metric`` for ``period`` (the current
    month by default, or a later one). With it, that scoped limit of ``account`` for its
    current period (``period_start``, when given, must start it: a page shown before the
    period moved on is refused rather than applied to the next one). Raises
    ``ValidationError`` keyed by field when the account is not Enterprise, the metric or
    line unknown, the line without a blocked threshold, the amount not a whole number > 0,
    the reason blank, the period closed or not the line's current one. ``limits``: the
    account's limits as they will be when the extension is granted (a page that changes
    them and grants at once), read instead of the stored ones for the line's blocked
    threshold; a scoped limit it leaves out is unknown.
    """
    errors: dict[str, list[ValidationError]] = {}
    if not account.is_enterprise:
        errors["account"] = [ValidationError(MSG_EXTENSION_NOT_ENTERPRISE, code="not_enterprise")]
    line: ScopedLimit | None = None
    if scoped_limit_id is not None:
        line = _extension_line(account, scoped_limit_id, errors)
        metric_error = None if line is None or metric in (None, line.metric) else "mismatch"
        if metric_error:
            errors["metric"] = [
                ValidationError(_("The line is of another metric."), code="invalid")
            ]
    else:
        _metric, metric_error = parse_metric(metric)
        if metric_error:
            errors["metric"] = [ValidationError(metric_error, code="invalid")]
    if isinstance(amount, bool) or not isinstance(amount, int):
        errors["amount"] = [ValidationError(_("A whole number is required."), code="invalid")]
    elif amount <= 0:
        errors["amount"] = [
            ValidationError(_("Ensure this value is greater than 0."), code="min_value")
        ]
    elif amount > MAX_THRESHOLD:
        errors["amount"] = [
            ValidationError(
                _("Ensure this value is less than or equal to %(limit)s."),
                code="max_value",
                params={"limit": MAX_THRESHOLD},
            )
        ]
    if not isinstance(reason, str) or not reason.strip():
        errors["reason"] = [ValidationError(_("This field is required."), code="required")]
    if errors.keys() & {"line", "metric"}:
        raise ValidationError(errors)

    now = now or timezone.now()
    zone = account.zone
    if line is not None:
        window = line_window(line=line, zone=zone, now=now)
        anchor = line_period_start(window)
        target = ExtensionTarget(
            metric=line.metric,
            scoped_limit=line,
            period=anchor.astimezone(zone).date(),
            period_start=anchor,
        )
        blocked = line.blocked
        if limits is not None:
            identity = (line.metric, line.period, line.window_days, line.labels_key)
            kept = [spec for spec in limits.scoped_limits if spec.identity == identity]
            if not kept:
                errors["line"] = [ValidationError(MSG_EXTENSION_UNKNOWN_LINE, code="unknown_line")]
                raise ValidationError(errors)
            blocked = kept[0].blocked
        if period is not None or (period_start is not None and period_start != anchor):
            errors["period"] = [ValidationError(MSG_EXTENSION_NOT_CURRENT, code="not_current")]
        granted_already = Extension.objects.filter(scoped_limit=line, period_start=anchor)
    else:
        current = current_period(account, now)
        period = period or current
        target = ExtensionTarget(metric=metric, scoped_limit=None, period=period.first_day)
        blocked = (
            Limit.objects.filter(account=account, metric=metric)
            .values_list("blocked", flat=True)
            .first()
            if limits is None
            else limits.limits[metric].blocked
        )
        if period.first_day < current.first_day:
            errors["period"] = [ValidationError(MSG_EXTENSION_CLOSED_PERIOD, code="closed")]
        granted_already = Extension.objects.filter(
            account=account, metric=metric, period=period.first_day, scoped_limit__isnull=True
        )
    if blocked is None and "account" not in errors:
        errors["line"] = [ValidationError(MSG_EXTENSION_NO_BLOCKED, code="no_blocked_threshold")]
    if "amount" not in errors and "period" not in errors:
        # Extensions add up in one sum per line and period (``usage.selectors``): bounded
        # like a threshold, so that no number of them can overflow it.
        granted = granted_already.aggregate(total=Sum("amount"))["total"]
        if (granted or 0) + amount > MAX_THRESHOLD:
            errors["amount"] = [
                ValidationError(
                    _(
                        "Ensure the extensions of this line and period total at most "
                        "%(limit)s (%(granted)s granted already)."
                    ),
                    code="max_value",
                    params={"limit": MAX_THRESHOLD, "granted": granted or 0},
                )
            ]
    if errors:
        raise ValidationError(errors)
    return target


def extension_grant(
    *,
    account: Account,
    metric: Any = None,
    amount: int,
    reason: str,
    actor: Any,
    period: Period | None = None,
    scoped_limit_id: Any = None,
    period_start: datetime | None = None,
) -> Extension:
    """Raise a line's blocked threshold by ``amount`` for one period: the monthly line of
    ``metric`` for ``period`` (by default the current), or the scoped limit
    ``scoped_limit_id`` for its current period.

    Refused with ``ValidationError`` as ``extension_validate`` says.
    """
    target = extension_validate(
        account=account,
        metric=metric,
        amount=amount,
        reason=reason,
        period=period,
        scoped_limit_id=scoped_limit_id,
        period_start=period_start,
    )
    granted_by = actor if getattr(actor, "is_authenticated", False) else None
    return Extension.objects.create(
        account=account,
        metric=target.metric,
        scoped_limit=target.scoped_limit,
        period=target.period,
        period_start=target.period_start,
        amount=amount,
        reason=reason.strip(),
        granted_by=granted_by,
    )


# --- Reservations (SPEC 12.1) ---


class ReservationRefused(Exception):
    """A reservation not held: ``code`` is ``insufficient_capacity`` (``lines`` say where
    there is no room) or ``reservation_id_reused`` (the id names another request)."""

    INSUFFICIENT_CAPACITY = "insufficient_capacity"
    REUSED = "reservation_id_reused"

    def __init__(
        self, code: str, *, lines: list[LineUsage] | None = None, quantity_milli: int = 0
    ) -> None:
        self.code = code
        self.lines = lines or []
        self.quantity_milli = quantity_milli
        if code == self.REUSED:
            self.message = _(
                "This reservation id is already used by a reservation of another metric, "
                "quantity or labels."
            )
        else:
            self.message = _("Not enough capacity left on a line to hold this reservation.")
        super().__init__(str(self.message))


@dataclass(frozen=True)
class ReservationHeld:
    """The answer of ``reservation_create``: the account, the reservation, whether this
    call created it, and the lines it applies to as they stand after the call."""

    account: Account
    reservation: Reservation
    created: bool
    lines: list[LineUsage]


def _reservation_column(reservation_id: str) -> tuple[str, list[Any]]:
    """A column for ``account_lines_current``: the id of the account's reservation
    ``reservation_id``, if any."""
    table = Reservation._meta.db_table
    sql = (
        f"(SELECT r.id FROM {table} r WHERE r.account_id = {Account._meta.db_table}.id"
        " AND r.reservation_id = %s)"
    )
    return sql, [reservation_id]


def _reservation_insert(reservation: Reservation) -> bool:
    """Insert ``reservation`` unless its account has one of that id; whether it did.

    ``ON CONFLICT DO NOTHING`` rather than an ``IntegrityError`` caught in a savepoint.
    """
    fields = [f for f in Reservation._meta.concrete_fields if not f.primary_key]
    columns = ", ".join(quote_name(f.column) for f in fields)
    values = [f.get_db_prep_save(getattr(reservation, f.attname), connection) for f in fields]
    placeholders = ", ".join(["%s"] * len(fields))
    with bound_cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {Reservation._meta.db_table} ({columns}) VALUES ({placeholders})"
            " ON CONFLICT (account_id, reservation_id) DO NOTHING RETURNING id",
            values,
        )
        row = cursor.fetchone()
    if row is None:
        return False
    accounts_changed([reservation.account_id])
    reservation.pk = row[0]
    reservation._state.adding = False
    reservation._state.db = connection.alias
    return True


def reservation_create(
    *, account_id: uuid.UUID, request: ReservationIn, now: datetime | None = None
) -> ReservationHeld | None:
    """Hold ``request.quantity_milli`` of ``request.metric`` on every line that applies, for
    the account ``account_id`` (``None``: there is no such account).

    Under the same (account, metric) lock as recording usage (``usage_lock``), so the usage
    and reservations read here are all that any other writer committed, and nothing of
    them changes until this transaction ends: concurrent reservations and events never
    together pass a cap. The lines, their usage and reservations and the id looked for are
    read in one statement after the lock (``account_lines_current``), the reservation
    written in one more. An id already used answers that reservation (``created`` false)
    when the request is the same, else raises ``ReservationRefused`` (``reused``); a
    quantity that does not fit on a line beside used and reserved raises it
    (``insufficient_capacity``), holding nothing.
    """
    now = now or timezone.now()
    with transaction.atomic():
        usage_lock(pairs=[(account_id, request.metric)])
        found = account_lines_current(
            account_id=account_id,
            metric=request.metric,
            labels=request.labels,
            now=now,
            columns={"reservation_found": _reservation_column(request.reservation_id)},
        )
        if found is None:
            return None
        account, lines = found
        existing_pk = account.__dict__.pop("reservation_found", None)
        existing = None
        if existing_pk is None:
            if not all(line.allows(request.quantity_milli) for line in lines):
                raise ReservationRefused(
                    ReservationRefused.INSUFFICIENT_CAPACITY,
                    lines=lines,
                    quantity_milli=request.quantity_milli,
                )
            reservation = Reservation(
                account=account,
                reservation_id=request.reservation_id,
                metric=request.metric,
                quantity_milli=request.quantity_milli,
                labels=request.labels,
                labels_key=labels_key(request.labels),
                created_at=now,
                expires_at=now + timedelta(seconds=request.ttl_seconds),
            )
            if _reservation_insert(reservation):
                held = [
                    dataclasses.replace(
                        line, reserved_milli=line.reserved_milli + request.quantity_milli
                    )
                    for line in lines
                ]
                return ReservationHeld(
                    account=account, reservation=reservation, created=True, lines=held
                )
        # The same id, reserved before (the lines read include what it holds), or at once
        # for another metric, under another lock.
        existing = Reservation.objects.get(account=account, reservation_id=request.reservation_id)
        same = (
            existing.metric == request.metric
            and existing.quantity_milli == request.quantity_milli
            and existing.labels_key == labels_key(request.labels)
        )
        if not same:
            raise ReservationRefused(ReservationRefused.REUSED)
        if existing_pk is None:  # inserted meanwhile: read the lines again with its hold
            lines = account_lines_with_reservations(
                account=account, metric=existing.metric, labels=existing.labels, now=now
            )
        return ReservationHeld(account=account, reservation=existing, created=False, lines=lines)


def reservation_release(
    *, account: Account, reservation_id: str, now: datetime | None = None
) -> Reservation | None:
    """Release an active reservation (``released``); one no longer active is left as it is.

    Returns the reservation, ``None`` when the account has none of that id. Freeing
    capacity can never pass a cap, so no usage lock is needed: the conditional update
    changes the row only while it is active and not past its expiry.
    """
    now = now or timezone.now()
    if Reservation.objects.filter(
        account=account,
        reservation_id=reservation_id,
        status=Reservation.Status.ACTIVE,
        expires_at__gt=now,
    ).update(status=Reservation.Status.RELEASED, ended_at=now):
        accounts_changed([account.pk])
    return Reservation.objects.filter(account=account, reservation_id=reservation_id).first()


SETTLE_CHUNK = 200  # reservations per UPDATE (SQLite refuses very large expressions)


def reservations_settle(*, events: list[EventIn], now: datetime) -> int:
    """Mark ``settled`` the active reservations that the new ``events`` name; returns how many.

    Call in the transaction that records the events, so that their usage and the end of the
    reservations commit together. An event naming an unknown, released or expired
    reservation settles nothing (its usage is recorded all the same); the first event of a
    request naming a reservation settles it.
    """
    by_reservation: dict[tuple[uuid.UUID, str], str] = {}
    for event in events:
        by_reservation.setdefault((event.account_id, event.reservation_id), event.event_id)
    by_account: dict[uuid.UUID, list[tuple[str, str]]] = defaultdict(list)
    for (account_id, reservation_id), event_id in by_reservation.items():
        by_account[account_id].append((reservation_id, event_id))
    settled = 0
    accounts_changed(by_account)
    for account_id, pairs in by_account.items():
        for start in range(0, len(pairs), SETTLE_CHUNK):
            chunk = pairs[start : start + SETTLE_CHUNK]
            settled += Reservation.objects.filter(
                account_id=account_id,
                reservation_id__in=[reservation_id for reservation_id, _event in chunk],
                status=Reservation.Status.ACTIVE,
                expires_at__gt=now,
            ).update(
                status=Reservation.Status.SETTLED,
                ended_at=now,
                settled_by=Case(
                    *[When(reservation_id=r, then=Value(e)) for r, e in chunk],
                    default=Value(""),
                ),
            )
    return settled


def reservations_expire(*, now: datetime | None = None) -> int:
    """Write ``expired`` on the active reservations past their expiry; returns how many.

    Tidying only: reads already take a reservation past ``expires_at`` as expired (and
    what the lines read remembered holds until the first expiry: nothing to announce).
    """
    now = now or timezone.now()
    return Reservation.objects.filter(status=Reservation.Status.ACTIVE, expires_at__lte=now).update(
        status=Reservation.Status.EXPIRED, ended_at=F("expires_at")
    )
