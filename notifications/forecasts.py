"""Forecast notices (SPEC 12.3): a blocked threshold foreseen before the period ends.

A ``month`` or ``week`` line with a blocked threshold, once a tenth of its period has
passed, is projected at its average rate since the period began: used so far, divided by
the time elapsed. When the projection reaches the effective blocked threshold (extensions
included) before the period ends, the line gets one forecast notice for the period, naming
the instant it is projected to reach it. A line already blocked gets none: its blocked
notice says more.

The computation reads nothing: it works on the figures the sweep has already read
(``usage.selectors.usage_for`` for the whole-metric monthly lines, ``account_lines_usage``
for the scoped lines), so it adds no query per account. The ledger's unique constraint
``notification_forecast_once_per_period`` makes "one per line and period" hold across
sweeps and workers: the insert is ``ON CONFLICT DO NOTHING``.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from functools import lru_cache

from django.db import connection

from accounts.labels import labels_key
from accounts.models import Account
from accounts.windows import PeriodKind, Window, window_from_key
from config.request_ids import current_correlation_id, current_request_id
from usage.models import MILLI
from usage.periods import Period
from usage.selectors import LineUsage, MetricUsage

from .models import NoticeLevel, Notification

# The kinds of line a forecast is made for: long enough for a rate to mean something.
FORECAST_KINDS = (PeriodKind.MONTH, PeriodKind.WEEK)
# No forecast before this share of the period has passed (a tenth): an early burst is
# not a rate.
FORECAST_AFTER_SHARE = 10  # percent
_MICROSECOND = timedelta(microseconds=1)
# Rows per INSERT: well below the parameters SQLite (32,766) and PostgreSQL (65,535) take.
_CHUNK = 500


@dataclass(frozen=True)
class Forecast:
    """A line projected to reach its effective blocked ``threshold`` at ``projected_at``,
    before its period (``period``, the local day it starts; ``period_start``, that instant)
    ends."""

    account_id: uuid.UUID
    metric: str
    period_kind: str
    labels_key: str
    period: date
    period_start: datetime
    threshold: int
    used_milli: int
    projected_at: datetime

    @property
    def key(self) -> tuple[str, str, str, str]:
        """The line (one sweep looks at each line over one period, its current one)."""
        return (self.account_id.hex, self.metric, self.period_kind, self.labels_key)


def projected_at(*, usage: MetricUsage, window: Window, now: datetime) -> datetime | None:
    """When ``usage`` over ``window``, at its average rate since the window began, reaches
    its effective blocked threshold, if that is before the window ends; ``None`` otherwise,
    and ``None`` before a tenth of the window has passed, without a blocked threshold,
    without usage, or once the line is blocked.

    Durations are real ones (the window's ``start`` and ``end`` are UTC instants): a month
    with a DST change lasts an hour more or less than its days say. The instant is rounded
    up to the second: usage projected to reach the threshold during a second has reached
    it by the end of that second.
    """
    threshold = usage.effective_blocked
    used = usage.used_milli
    # Blocked at evaluation: the one rule of "reached" (``MetricUsage.reaches``).
    if threshold is None or used <= 0 or usage.reaches(threshold):
        return None
    elapsed, total = _elapsed_and_total(window, now)
    if elapsed * 100 < total * FORECAST_AFTER_SHARE:
        return None
    # Ceiling of elapsed x threshold / used, in microseconds since the window began.
    needed = -(-elapsed * threshold * MILLI // used)
    if needed >= total:
        return None
    at = window.start + needed * _MICROSECOND
    if at.microsecond:
        at = at.replace(microsecond=0) + timedelta(seconds=1)
    return at if at < window.end else None


@lru_cache(maxsize=64)
def _elapsed_and_total(window: Window, now: datetime) -> tuple[int, int]:
    """Microseconds since ``window`` began, and its length (the sweep asks for thousands of
    lines of the same few windows)."""
    return (now - window.start) // _MICROSECOND, (window.end - window.start) // _MICROSECOND


def forecasts_of(
    *,
    usages: Iterable[MetricUsage],
    periods: Mapping[uuid.UUID, Period],
    lines: Mapping[Account, Iterable[LineUsage]],
    now: datetime,
) -> list[Forecast]:
    """The forecasts of the whole-metric monthly ``usages`` (each account's current period in
    ``periods``) and of the scoped ``month`` and ``week`` ``lines`` over their current
    windows. Reads nothing."""
    found = []
    # One window per month and zone, not per account: the sweep reads thousands of lines.
    windows: dict[tuple[str, str], Window] = {}
    for usage in usages:
        if usage.effective_blocked is None:
            continue
        period = periods[usage.account_id]
        window = windows.get((period.code, period.zone.key))
        if window is None:
            window = window_from_key(kind=PeriodKind.MONTH, key=period.code, zone=period.zone)
            windows[(period.code, period.zone.key)] = window
        at = projected_at(usage=usage, window=window, now=now)
        if at is not None:
            found.append(
                Forecast(
                    account_id=usage.account_id,
                    metric=usage.metric,
                    period_kind=PeriodKind.MONTH.value,
                    labels_key="",
                    period=period.first_day,
                    period_start=window.start,
                    threshold=usage.effective_blocked or 0,
                    used_milli=usage.used_milli,
                    projected_at=at,
                )
            )
    for account, account_lines in lines.items():
        for line_usage in account_lines:
            line, window, usage = line_usage.line, line_usage.window, line_usage.usage
            if line_usage.is_whole_metric_month or line.period not in FORECAST_KINDS:
                continue
            at = projected_at(usage=usage, window=window, now=now)
            if at is not None:
                found.append(
                    Forecast(
                        account_id=account.pk,
                        metric=line.metric,
                        period_kind=PeriodKind(line.period).value,
                        labels_key=labels_key(line.labels),
                        period=window.local_start.date(),
                        period_start=window.start,
                        threshold=usage.effective_blocked or 0,
                        used_milli=usage.used_milli,
                        projected_at=at,
                    )
                )
    return found


_COLUMNS = (
    "account_id, metric, period_kind, window_days, labels_key, level, period, period_start,"
    " threshold, used_milli, projected_at, created_at, is_test, recorded_only, request_id,"
    " correlation_id"
)


def _recorded(forecasts: list[Forecast]) -> set[tuple[str, str, str, str, datetime]]:
    """The lines and periods among ``forecasts`` whose forecast is in the ledger already, in
    one query (through the forecasts' own unique index, which holds forecasts only)."""
    if not forecasts:
        return set()
    rows = Notification.objects.filter(
        level=NoticeLevel.FORECAST,
        is_test=False,
        period_start__gte=min(f.period_start for f in forecasts),
    ).values_list("account_id", "metric", "period_kind", "labels_key", "period_start")
    return {(account.hex, *rest) for account, *rest in rows}


def forecasts_insert(forecasts: list[Forecast], now: datetime) -> list[tuple[int, Forecast]]:
    """Insert the forecasts the ledger lacks; returns ``(id, forecast)`` of the new ones.

    ``ON CONFLICT DO NOTHING`` is the guarantee: a line's forecast of a period already
    recorded (by an earlier sweep or a concurrent one) inserts nothing, whatever its
    projection. The forecasts already recorded before this sweep are left out first, so
    that a sweep does not send again, every minute, the inserts of every line projected
    to reach its threshold all period long; one read replaces them.
    """
    recorded = _recorded(forecasts)
    forecasts = [f for f in forecasts if (*f.key, f.period_start) not in recorded]
    # One row per key, in a stable order (the order in which the index entries are locked).
    forecasts = sorted({f.key: f for f in forecasts}.values(), key=lambda f: f.key)
    adapt = connection.ops.adapt_datetimefield_value
    request_id, correlation_id = current_request_id(), current_correlation_id()
    by_key = {f.key: f for f in forecasts}
    created = []
    for first in range(0, len(forecasts), _CHUNK):
        chunk = forecasts[first : first + _CHUNK]
        params: list[object] = []
        for f in chunk:
            account = f.account_id if connection.vendor == "postgresql" else f.account_id.hex
            params += [account, f.metric, f.period_kind, None, f.labels_key]
            params += [NoticeLevel.FORECAST.value, f.period, adapt(f.period_start), f.threshold]
            params += [f.used_milli, adapt(f.projected_at), adapt(now), False, False]
            params += [request_id, correlation_id]
        rows = ", ".join(["(" + ", ".join(["%s"] * 16) + ")"] * len(chunk))
        with connection.cursor() as cursor:
            cursor.execute(
                f"INSERT INTO {Notification._meta.db_table} ({_COLUMNS}) VALUES {rows} "
                "ON CONFLICT DO NOTHING RETURNING id, account_id, metric, period_kind,"
                " labels_key",
                params,
            )
            returned = cursor.fetchall()
        for pk, account, metric, kind, labels in returned:
            created.append((pk, by_key[(uuid.UUID(str(account)).hex, metric, kind, labels)]))
    return created
