"""Writes of usage: recording events and keeping the daily counters exact.

Recording costs a constant number of queries whatever the batch size: one to read the
accounts, on PostgreSQL one to take the (account, metric) locks (``usage_lock``), one
``INSERT ... ON CONFLICT DO NOTHING RETURNING`` for the events, one counter upsert, then
the reads of the answer. Rows are written in a stable order (events by
account and event id, counters by account, metric and day) so that concurrent batches
wait for each other instead of deadlocking. Recording itself
(``backoffice.services.usage_events_record``) is above, beside the crossings it records
in the same transaction; the steps it takes are here.
"""

from __future__ import annotations

import json
import uuid
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, time
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

from django.core.exceptions import ValidationError
from django.db import connection, transaction
from django.db.models import BigIntegerField, F, Sum, Value
from django.db.models.functions import TruncDate
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from accounts.metrics import METRICS
from accounts.models import Account
from accounts.services import MAX_THRESHOLD
from config.request_ids import current_correlation_id, current_request_id

from .ingest import Errors, EventIn, parse_metric
from .models import (
    DAILY_LIMIT,
    CounterRepair,
    EventPurge,
    Extension,
    UsageCounter,
    UsageEvent,
    from_milli,
)
from .periods import Period
from .selectors import (
    MetricUsage,
    current_period,
    earliest_current_day,
    purge_boundary,
)

EVENT_TABLE = UsageEvent._meta.db_table
COUNTER_TABLE = UsageCounter._meta.db_table


@dataclass(frozen=True)
class IngestResult:
    accepted: int
    duplicates: int
    usage: list[MetricUsage]


def _insert_events(events: list[EventIn], received_at: datetime) -> list[tuple[str, str]]:
    """Insert the events that are new; returns ``(account id hex, event_id)`` of those.

    Each row carries the current request and correlation ids (``config.request_ids``).
    """
    columns = (
        "account_id, event_id, metric, quantity_milli, occurred_at, received_at, source, metadata,"
        " request_id, correlation_id"
    )
    request_id, correlation_id = current_request_id(), current_correlation_id()
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            # The batch travels as one JSON text parameter: Django's client-side binding
            # escapes it in one C call, where arrays would be escaped element by element.
            rows = json.dumps(
                [
                    [
                        str(e.account_id),
                        e.event_id,
                        e.metric,
                        e.quantity_milli,
                        e.occurred_at.isoformat(),
                        e.source,
                        e.metadata,
                    ]
                    for e in events
                ]
            )
            cursor.execute(
                f"INSERT INTO {EVENT_TABLE} ({columns}) "
                "SELECT (x->>0)::uuid, x->>1, x->>2, (x->>3)::bigint, (x->>4)::timestamptz, %s,"
                " x->>5, (x->>6)::jsonb, %s, %s FROM jsonb_array_elements(%s::jsonb)"
                " WITH ORDINALITY AS t(x, n) ORDER BY n "
                "ON CONFLICT (account_id, event_id) DO NOTHING RETURNING account_id, event_id",
                [received_at, request_id, correlation_id, rows],
            )
            return [(account_id.hex, event_id) for account_id, event_id in cursor.fetchall()]
        adapt = connection.ops.adapt_datetimefield_value
        received = adapt(received_at)
        placeholders = ", ".join(["(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"] * len(events))
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
                request_id,
                correlation_id,
            ]
        cursor.execute(
            f"INSERT INTO {EVENT_TABLE} ({columns}) VALUES {placeholders} "
            "ON CONFLICT (account_id, event_id) DO NOTHING RETURNING account_id, event_id",
            params,
        )
        return [(str(account_id), event_id) for account_id, event_id in cursor.fetchall()]


def counters_add(
    deltas: dict[tuple[uuid.UUID, str, date], int], now: datetime
) -> dict[tuple[uuid.UUID, str, date], int]:
    """Add ``deltas`` (thousandths by account, metric and local day) to the counters.

    Returns each counter's value after the addition, as the upsert wrote it (``RETURNING``):
    within the caller's transaction, what concurrent writers committed before is included.
    """
    keys = sorted(deltas)  # a stable order: concurrent writers lock counter rows alike
    upsert = (
        "ON CONFLICT (account_id, metric, day) DO UPDATE SET "
        f"quantity_milli = {COUNTER_TABLE}.quantity_milli + excluded.quantity_milli, "
        "updated_at = excluded.updated_at RETURNING account_id, metric, day, quantity_milli"
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
            return {(a, m, d): int(q) for a, m, d, q in cursor.fetchall()}
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
        # SQLite keeps the id as hex text; its date columns are read as dates.
        return {(uuid.UUID(a), m, d): int(q) for a, m, d, q in cursor.fetchall()}


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


# --- Rebuilding counters from events -------------------------------------------------

REBUILD_BATCH = 100  # accounts per transaction (and per progress report)

CounterKey = tuple[uuid.UUID, str, date]


@dataclass(frozen=True)
class Drift:
    """A counter that differs from the sum of its day's events; ``found_milli`` ``None``: no row."""

    account_id: uuid.UUID
    external_id: str
    metric: str
    day: date
    found_milli: int | None
    expected_milli: int

    @property
    def found(self) -> Decimal:
        return from_milli(self.found_milli or 0)

    @property
    def expected(self) -> Decimal:
        return from_milli(self.expected_milli)


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
    """Stored counters and the sums of events per local day in ``zone``, read in one query.

    One statement (``UNION ALL``) reads both from the same snapshot, so an event recorded
    meanwhile is either in both (with its counter increment) or in neither.
    """
    events = UsageEvent.objects.filter(account_id__in=account_ids)
    counters = UsageCounter.objects.filter(account_id__in=account_ids)
    if first is not None:
        events = events.filter(occurred_at__gte=_day_start(first, zone))
        counters = counters.filter(day__gte=first)
    if end is not None:
        events = events.filter(occurred_at__lt=_day_start(end, zone))
        counters = counters.filter(day__lt=end)
    sums = events.values(
        "account_id", "metric", local_day=TruncDate("occurred_at", tzinfo=zone)
    ).annotate(expected=Sum("quantity_milli"), found=Value(None, output_field=BigIntegerField()))
    stored = counters.values("account_id", "metric", local_day=F("day")).annotate(
        expected=Value(0, output_field=BigIntegerField()), found=F("quantity_milli")
    )
    return list(sums.order_by().union(stored.order_by(), all=True))


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
        for zone_name, account_ids in sorted(by_zone.items()):
            for row in _counters_and_sums(account_ids, ZoneInfo(zone_name), lower, end):
                key = (row["account_id"], row["metric"], row["local_day"])
                entry = totals.setdefault(key, [0, None])
                entry[0] += int(row["expected"])
                if row["found"] is not None:
                    entry[1] = int(row["found"])

        # A purge records its boundary before deleting anything: read again, so the days
        # whose events were being deleted while they were summed are left alone.
        boundary = purge_boundary()
        drifts = [
            Drift(
                account_id=key[0],
                external_id=external_ids[key[0]],
                metric=key[1],
                day=key[2],
                found_milli=found,
                expected_milli=expected,
            )
            for key, (expected, found) in sorted(totals.items())
            if (found or 0) != expected and (boundary is None or key[2] >= boundary)
        ]
        if repair and drifts:
            # Add the difference rather than set the sum: events recorded since the read above
            # already added themselves to the counter, and must stay counted.
            counters_add(
                {
                    (d.account_id, d.metric, d.day): d.expected_milli - (d.found_milli or 0)
                    for d in drifts
                },
                now,
            )
            CounterRepair.objects.bulk_create(
                CounterRepair(
                    account_id=d.account_id,
                    metric=d.metric,
                    day=d.day,
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
    return deleted


# --- Extensions --------------------------------------------------------------------------

MSG_EXTENSION_NOT_ENTERPRISE = _("Extensions can only be granted to an Enterprise account.")
MSG_EXTENSION_CLOSED_PERIOD = _(
    "Extensions can only be granted for the current period or a later one."
)


def extension_validate(
    *, account: Account, metric: Any, amount: Any, reason: Any, period: Period | None = None
) -> Period:
    """Check an extension before it is granted; returns its period (the current by default).

    Raises ``ValidationError`` keyed by field when the account is not Enterprise, the
    metric unknown, the amount not a whole number > 0, the reason blank or the period closed.
    """
    errors: dict[str, list[ValidationError]] = {}
    if not account.is_enterprise:
        errors["account"] = [ValidationError(MSG_EXTENSION_NOT_ENTERPRISE, code="not_enterprise")]
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
    current = current_period(account)
    period = period or current
    if period.first_day < current.first_day:
        errors["period"] = [ValidationError(MSG_EXTENSION_CLOSED_PERIOD, code="closed")]
    elif "amount" not in errors and not metric_error:
        # Extensions add up in one sum per period (``usage.selectors``): bounded like a
        # threshold, so that no number of them can overflow it.
        granted = Extension.objects.filter(
            account=account, metric=metric, period=period.first_day
        ).aggregate(total=Sum("amount"))["total"]
        if (granted or 0) + amount > MAX_THRESHOLD:
            errors["amount"] = [
                ValidationError(
                    _(
                        "Ensure the extensions of this metric and period total at most "
                        "%(limit)s (%(granted)s granted already)."
                    ),
                    code="max_value",
                    params={"limit": MAX_THRESHOLD, "granted": granted or 0},
                )
            ]
    if errors:
        raise ValidationError(errors)
    return period


def extension_grant(
    *,
    account: Account,
    metric: str,
    amount: int,
    reason: str,
    actor: Any,
    period: Period | None = None,
) -> Extension:
    """Raise ``metric``'s blocked threshold by ``amount`` for ``period`` (by default the current).

    Refused with ``ValidationError`` as ``extension_validate`` says.
    """
    period = extension_validate(
        account=account, metric=metric, amount=amount, reason=reason, period=period
    )
    granted_by = actor if getattr(actor, "is_authenticated", False) else None
    return Extension.objects.create(
        account=account,
        metric=metric,
        period=period.first_day,
        amount=amount,
        reason=reason.strip(),
        granted_by=granted_by,
    )
