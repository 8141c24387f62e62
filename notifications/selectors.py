"""Reads of the notifications app."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from django.db import connection, transaction
from django.db.models import QuerySet

from accounts.models import Account, Limit, Plan, ScopedLimit
from accounts.selectors import LimitLine
from accounts.windows import PeriodKind, Window, window_containing
from usage.models import MILLI, Extension, UsageCounter, UsageEvent, UsageHourCounter
from usage.periods import Period, period_containing
from usage.selectors import (
    LineUsage,
    MetricUsage,
    accounts_lines_figures,
    accounts_scoped_lines_usage,
    line_period_start,
    usage_for,
)

from .forecasts import FORECAST_AFTER_SHARE, FORECAST_KINDS
from .models import NoticeLevel, Notification, WebhookEndpoint

_MICROSECOND = timedelta(microseconds=1)


def notification_periods() -> list[date]:
    """The months (their first day) in which notified periods start, newest first."""
    return list(Notification.objects.dates("period", "month", order="DESC"))


def webhook_endpoint_list(*, account: Account) -> QuerySet[WebhookEndpoint]:
    """The account's webhook endpoints, oldest first (the order a ``PUT`` gave them)."""
    return WebhookEndpoint.objects.filter(account=account).order_by("created_at", "pk")


# --- What the sweep reads (SPEC 6, 11.5, 12.3), set-based ---------------------------------
#
# The sweep looks at every line of every Enterprise account, yet has something to do with
# very few: a line past a threshold whose crossing the ledger lacks, or a ``month`` or
# ``week`` line that may be projected past its blocked threshold and has no forecast yet.
# PostgreSQL sums every line's counters over its window and keeps those lines alone, in
# one statement whatever the number of accounts: Python never sees the others.
#
# Windows depend on the time zone and the shape of a line only, so they travel as one JSON
# parameter, one row per (zone, kind, days) in use (``w``), computed here by the one rule of
# ``accounts.windows``. ``k`` says what a line reads (``d``: day counters from ``f`` to ``e``
# excluded; ``h``: the hour counter starting at ``h``; ``m``: events of the current minute,
# read apart, see ``_minute_accounts``), ``s`` is the window's start (the ledger's
# ``period_start`` of a crossing or a forecast), ``t`` the start under which a scoped line's
# extensions are granted (``usage.selectors.line_period_start``). ``fc`` is 1 when a
# forecast may be due (a ``month`` or ``week`` window past its first tenth), ``el`` and
# ``tot`` the microseconds elapsed and in all: the statement keeps a line whose rate may
# reach its threshold before the end (a float test, looser than the exact one that
# ``notifications.forecasts.projected_at`` then makes on the few lines kept).

_SWEEP_SHAPES = {
    "postgresql": (
        "SELECT * FROM jsonb_to_recordset(%s::jsonb) AS w(wk text, z text, p text, d int, k text,"
        " f date, e date, h timestamptz, s timestamptz, t timestamptz, fc int,"
        " el double precision, tot double precision)"
    ),
    "sqlite": (
        "SELECT json_extract(value, '$.wk') AS wk,"
        " json_extract(value, '$.z') AS z, json_extract(value, '$.p') AS p,"
        " json_extract(value, '$.d') AS d, json_extract(value, '$.k') AS k,"
        " json_extract(value, '$.f') AS f, json_extract(value, '$.e') AS e,"
        " json_extract(value, '$.h') AS h, json_extract(value, '$.s') AS s,"
        " json_extract(value, '$.t') AS t, json_extract(value, '$.fc') AS fc,"
        " json_extract(value, '$.el') AS el, json_extract(value, '$.tot') AS tot"
        " FROM json_each(%s)"
    ),
}
# The accounts swept, beside "active and Enterprise": every one, or those of a list.
_SWEEP_LABELS = {"postgresql": "jsonb", "sqlite": "text"}
_SWEEP_ACCOUNTS = {
    "postgresql": " AND a.id = ANY(%s::uuid[])",
    "sqlite": " AND a.id IN (SELECT value FROM json_each(%s))",
}
_COUNTER = UsageCounter._meta.db_table
_EXTENSION = Extension._meta.db_table
_LEDGER = Notification._meta.db_table


def _recorded(level: str, threshold: str) -> str:
    """SQL: the ledger holds the crossing of line ``l`` at ``level`` and ``threshold`` over
    its current window (the index ``notification_once_per_crossing``)."""
    return f"""EXISTS (SELECT 1 FROM {_LEDGER} n
      WHERE n.account_id = l.aid AND n.metric = l.metric AND n.period_kind = l.period
        AND COALESCE(n.window_days, 0) = 0 AND n.labels_key = l.lk AND n.level = '{level}'
        AND n.period_start = l.ws AND n.threshold = {threshold} AND NOT n.is_test)"""


_SWEEP_SQL = f"""
WITH w AS ({{shapes}}),
scoped AS MATERIALIZED (
  SELECT s.id AS sid, s.account_id AS aid, a.timezone AS tz, s.metric AS metric,
    s.period AS period, w.d AS days, s.labels_key AS lk, s.labels AS labels,
    s.warning AS warning, s.blocked AS blocked, w.s AS ws, w.fc AS fc, w.el AS el,
    w.tot AS tot,
    COALESCE(CASE w.k
      WHEN 'd' THEN (SELECT SUM(c.quantity_milli) FROM {_COUNTER} c
                     WHERE c.account_id = s.account_id AND c.metric = s.metric
                       AND c.labels = s.labels_key AND c.day >= w.f AND c.day < w.e)
      WHEN 'h' THEN (SELECT c.quantity_milli FROM {UsageHourCounter._meta.db_table} c
                     WHERE c.account_id = s.account_id AND c.metric = s.metric
                       AND c.labels = s.labels_key AND c.hour = w.h)
    END, 0) AS used,
    COALESCE(x.amount, 0) AS ext
  FROM {ScopedLimit._meta.db_table} s
  JOIN {Account._meta.db_table} a ON a.id = s.account_id
  JOIN w ON w.wk = a.timezone || '|' || s.period || '|' || COALESCE(s.window_days, 0)
  LEFT JOIN (SELECT scoped_limit_id, period_start, SUM(amount) AS amount FROM {_EXTENSION}
             WHERE scoped_limit_id IS NOT NULL GROUP BY scoped_limit_id, period_start) x
    ON x.scoped_limit_id = s.id AND x.period_start = w.t
  WHERE a.is_active AND a.plan = %s{{accounts}} AND w.k <> 'm'
    AND (s.warning IS NOT NULL OR s.blocked IS NOT NULL)
),
monthly AS MATERIALIZED (
  SELECT CAST(NULL AS bigint) AS sid, m.account_id AS aid, a.timezone AS tz, m.metric AS metric,
    w.p AS period, 0 AS days, '' AS lk, CAST(NULL AS {{labels}}) AS labels, m.warning AS warning,
    m.blocked AS blocked, w.s AS ws, w.fc AS fc, w.el AS el, w.tot AS tot,
    COALESCE((SELECT SUM(c.quantity_milli) FROM {_COUNTER} c
              WHERE c.account_id = m.account_id AND c.metric = m.metric AND c.labels = ''
                AND c.day >= w.f AND c.day < w.e), 0) AS used,
    COALESCE(x.amount, 0) AS ext
  FROM {Limit._meta.db_table} m
  JOIN {Account._meta.db_table} a ON a.id = m.account_id
  JOIN w ON w.wk = a.timezone || '|{PeriodKind.MONTH.value}|0'
  LEFT JOIN (SELECT account_id, metric, period, SUM(amount) AS amount FROM {_EXTENSION}
             WHERE scoped_limit_id IS NULL GROUP BY account_id, metric, period) x
    ON x.account_id = m.account_id AND x.metric = m.metric AND x.period = w.f
  WHERE a.is_active AND a.plan = %s{{accounts}}
    AND (m.warning IS NOT NULL OR m.blocked IS NOT NULL)
)
SELECT l.sid, l.aid, l.tz, l.metric, l.period, l.days, l.labels, l.warning, l.blocked,
  l.used, l.ext
FROM (SELECT * FROM scoped UNION ALL SELECT * FROM monthly) AS l
WHERE (l.warning IS NOT NULL AND l.used >= l.warning * {MILLI}
       AND (l.period = '{PeriodKind.ROLLING.value}'
            OR NOT {_recorded(NoticeLevel.WARNING.value, "l.warning")}))
   OR (l.blocked IS NOT NULL AND l.used >= (l.blocked + l.ext) * {MILLI}
       AND (l.period = '{PeriodKind.ROLLING.value}'
            OR NOT {_recorded(NoticeLevel.BLOCKED.value, "(l.blocked + l.ext)")}))
   OR (l.fc = 1 AND l.blocked IS NOT NULL AND l.used > 0
       AND l.used < (l.blocked + l.ext) * {MILLI}
       AND l.used * l.tot * 1.000001 >= l.el * (l.blocked + l.ext) * {MILLI}
       AND NOT EXISTS (SELECT 1 FROM {_LEDGER} n
         WHERE n.account_id = l.aid AND n.metric = l.metric AND n.period_kind = l.period
           AND COALESCE(n.window_days, 0) = 0 AND n.labels_key = l.lk
           AND n.level = '{NoticeLevel.FORECAST.value}' AND n.period_start = l.ws
           AND NOT n.is_test))
ORDER BY l.aid, l.sid
"""
# The shapes in use: the time zones of the accounts swept, and the kinds and days of the
# scoped limits (every zone gets every shape: a handful of windows, computed in microseconds).
_SHAPES_SQL = f"""
SELECT DISTINCT 'z', a.timezone, CAST(NULL AS integer) FROM {Account._meta.db_table} a
WHERE a.is_active AND a.plan = %s{{accounts}}
UNION ALL
SELECT DISTINCT 'p', s.period, CAST(s.window_days AS integer) FROM {ScopedLimit._meta.db_table} s
"""
# The accounts with a minute line and events in the current minute (the minute lines read
# raw events, which only ``usage.selectors.accounts_lines_figures`` matches to labels).
_MINUTE_ACCOUNTS_SQL = f"""
SELECT DISTINCT a.id, a.timezone FROM {UsageEvent._meta.db_table} e
JOIN {Account._meta.db_table} a ON a.id = e.account_id
WHERE e.occurred_at >= %s AND e.occurred_at < %s AND a.is_active AND a.plan = %s{{accounts}}
  AND EXISTS (SELECT 1 FROM {ScopedLimit._meta.db_table} s
              WHERE s.account_id = a.id AND s.period = '{PeriodKind.MINUTE.value}'
                AND (s.warning IS NOT NULL OR s.blocked IS NOT NULL))
"""


@dataclass(frozen=True)
class SweepRead:
    """What the sweep has to look at: the whole-metric monthly lines (``usages``, each
    account's current month in ``periods``) and the scoped lines (``lines``, by account)
    past a threshold whose crossing the ledger may lack, or that may be due a forecast.
    The zones of the accounts swept are in ``zones``. Every other line is left out."""

    usages: list[MetricUsage]
    periods: dict[uuid.UUID, Period]
    lines: dict[Account, list[LineUsage]]
    zones: frozenset[str]


def _shape(
    zone: ZoneInfo,
    kind: PeriodKind,
    days: int | None,
    now: datetime,
    as_db: Callable[[datetime], Any],
) -> dict[str, Any]:
    """The row of ``w`` (see above) for the lines of ``kind`` and ``days`` in ``zone``."""
    window = window_containing(kind=kind, instant=now, zone=zone, days=days)
    row: dict[str, Any] = {
        "wk": f"{zone.key}|{kind.value}|{days or 0}",
        "z": zone.key,
        "p": kind.value,
        "d": days or 0,
        "s": as_db(window.start),
        "t": as_db(line_period_start(window)),
        "fc": 0,
    }
    if kind == PeriodKind.MINUTE:
        row["k"] = "m"
    elif kind == PeriodKind.HOUR:
        row.update(k="h", h=as_db(window.start))
    else:
        row.update(
            k="d",
            f=window.start.astimezone(zone).date().isoformat(),
            e=window.end.astimezone(zone).date().isoformat(),
        )
    if kind in FORECAST_KINDS:
        elapsed, total = (now - window.start) // _MICROSECOND, window.duration // _MICROSECOND
        if elapsed * 100 >= total * FORECAST_AFTER_SHARE:
            row.update(fc=1, el=float(elapsed), tot=float(total))
    return row


def sweep_read(*, account_ids: Sequence[uuid.UUID] | None, now: datetime) -> SweepRead:
    """The lines of the active Enterprise accounts (of ``account_ids``, or all) that the sweep
    has something to do with (see ``SweepRead``), each over its current window, extensions
    included: three queries whatever the number of accounts and lines (four on PostgreSQL,
    see below), two more when a minute line has events in the current minute."""
    vendor = connection.vendor
    postgresql = vendor == "postgresql"

    def as_db(instant: datetime) -> Any:
        return (
            instant.isoformat() if postgresql else connection.ops.adapt_datetimefield_value(instant)
        )

    accounts_sql, accounts_params = "", []
    if account_ids is not None:
        ids = sorted({str(pk) if postgresql else pk.hex for pk in account_ids})
        accounts_sql = _SWEEP_ACCOUNTS[vendor]
        accounts_params = [ids if postgresql else json.dumps(ids)]
    plan = Plan.ENTERPRISE.value
    with connection.cursor() as cursor:
        cursor.execute(_SHAPES_SQL.format(accounts=accounts_sql), [plan, *accounts_params])
        found = cursor.fetchall()
    zones = sorted({name for what, name, _days in found if what == "z"})
    kinds = {(PeriodKind(name), days) for what, name, days in found if what == "p"}
    kinds.add((PeriodKind.MONTH, None))  # the whole-metric monthly lines
    shapes = [
        _shape(ZoneInfo(zone), kind, days, now, as_db)
        for zone in zones
        for kind, days in sorted(kinds, key=lambda shape: (shape[0], shape[1] or 0))
    ]
    read = SweepRead(usages=[], periods={}, lines={}, zones=frozenset(zones))
    if not zones:
        return read
    sql = _SWEEP_SQL.format(
        shapes=_SWEEP_SHAPES[vendor], accounts=accounts_sql, labels=_SWEEP_LABELS[vendor]
    )
    params = [json.dumps(shapes), plan, *accounts_params, plan, *accounts_params]
    with transaction.atomic(savepoint=False), connection.cursor() as cursor:
        if postgresql:
            # The statement's estimated cost (a subplan per line) passes PostgreSQL's JIT
            # thresholds: compiling it took 1.5 to 5 s, longer than running it.
            cursor.execute("SET LOCAL jit = off")
        cursor.execute(sql, params)
        rows = cursor.fetchall()
    windows: dict[tuple[str, str, int], Window] = {}
    accounts: dict[uuid.UUID, Account] = {}
    for sid, aid, tz, metric, period, days, labels, warning, blocked, used, ext in rows:
        account_id = uuid.UUID(str(aid))
        account = accounts.get(account_id)
        if account is None:
            account = accounts[account_id] = Account(
                pk=account_id, timezone=tz, plan=plan, is_active=True
            )
        usage = MetricUsage(
            account_id=account_id,
            metric=metric,
            used_milli=int(used),
            warning=warning,
            blocked=blocked,
            extension=int(ext),
        )
        if sid is None:
            read.usages.append(usage)
            read.periods[account_id] = period_containing(now, account.zone)
            continue
        kind, days = PeriodKind(period), int(days) or None
        window = windows.get((tz, kind, days or 0))
        if window is None:
            window = windows[(tz, kind, days or 0)] = window_containing(
                kind=kind, instant=now, zone=account.zone, days=days
            )
        line = LimitLine(
            metric=metric,
            period=kind,
            window_days=days,
            labels=json.loads(labels) if isinstance(labels, str) else dict(labels),
            warning=warning,
            blocked=blocked,
            scoped_limit_id=sid,
        )
        read.lines.setdefault(account, []).append(LineUsage(line=line, window=window, usage=usage))
    minute = _minute_accounts(accounts_sql, accounts_params, now)
    if minute:
        minute_lines = accounts_scoped_lines_usage(
            accounts=minute, now=now, keep=lambda _account, line: line.period == PeriodKind.MINUTE
        )
        for account, line_usages in minute_lines.items():
            account = accounts.setdefault(account.pk, account)
            read.lines.setdefault(account, []).extend(line_usages)
    return read


def _minute_accounts(accounts_sql: str, accounts_params: list[Any], now: datetime) -> list[Account]:
    """The swept accounts with a minute line and events in the current minute (whose lines
    ``sweep_read`` reads apart)."""
    minute = window_containing(kind=PeriodKind.MINUTE, instant=now, zone=UTC)
    bounds: list[Any] = [minute.start, minute.end]
    if connection.vendor != "postgresql":
        bounds = [connection.ops.adapt_datetimefield_value(bound) for bound in bounds]
    with connection.cursor() as cursor:
        cursor.execute(
            _MINUTE_ACCOUNTS_SQL.format(accounts=accounts_sql),
            [*bounds, Plan.ENTERPRISE.value, *accounts_params],
        )
        rows = cursor.fetchall()
    return [
        Account(pk=uuid.UUID(str(pk)), timezone=name, plan=Plan.ENTERPRISE, is_active=True)
        for pk, name in sorted(rows, key=lambda row: str(row[0]))
    ]


# A line as the ledger names it: (metric, period kind, window days or 0, labels key).
LineKey = tuple[str, str, int, str]


def notice_line_key(notification: Notification) -> LineKey:
    """The line ``notification`` is about."""
    return (
        notification.metric,
        notification.period_kind,
        notification.window_days or 0,
        notification.labels_key,
    )


def blocked_lines_usage(
    *, notifications: Sequence[Notification], now: datetime
) -> dict[tuple[uuid.UUID, LineKey], LineUsage]:
    """Where the line of each of ``notifications`` (with their ``account`` read) stands now,
    over its current window, extensions included, by (account id, ``notice_line_key``);
    a line the account no longer has is absent. At most three queries whatever the number
    of notifications: the whole-metric monthly lines (``usage_for``), the scoped limits of
    the accounts, their figures (``accounts_lines_figures``)."""
    accounts = {n.account_id: n.account for n in notifications}
    monthly = {
        (n.account_id, n.metric)
        for n in notifications
        if n.period_kind == PeriodKind.MONTH and not n.labels_key
    }
    scoped = {
        (n.account_id, notice_line_key(n))
        for n in notifications
        if not (n.period_kind == PeriodKind.MONTH and not n.labels_key)
    }
    found: dict[tuple[uuid.UUID, LineKey], LineUsage] = {}
    if monthly:
        periods = {pk: period_containing(now, accounts[pk].zone) for pk, _metric in monthly}
        for (pk, metric), usage in usage_for(periods=periods, pairs=monthly).items():
            line = LimitLine(
                metric=metric,
                period=PeriodKind.MONTH,
                window_days=None,
                labels={},
                warning=usage.warning,
                blocked=usage.blocked,
            )
            window = window_containing(kind=PeriodKind.MONTH, instant=now, zone=accounts[pk].zone)
            found[(pk, (metric, PeriodKind.MONTH.value, 0, ""))] = LineUsage(
                line=line, window=window, usage=usage
            )
    if not scoped:
        return found
    items: list[tuple[Account, LimitLine]] = []
    keys: list[LineKey] = []
    for limit in ScopedLimit.objects.filter(account_id__in={pk for pk, _key in scoped}).order_by(
        "account_id", "position", "pk"
    ):
        key = (limit.metric, limit.period, limit.window_days or 0, limit.labels_key)
        if (limit.account_id, key) in scoped:
            line = LimitLine(
                metric=limit.metric,
                period=PeriodKind(limit.period),
                window_days=limit.window_days,
                labels=dict(limit.labels),
                warning=limit.warning,
                blocked=limit.blocked,
                scoped_limit_id=limit.pk,
            )
            items.append((accounts[limit.account_id], line))
            keys.append(key)
    windows = [
        window_containing(kind=line.period, instant=now, zone=account.zone, days=line.window_days)
        for account, line in items
    ]
    figures = accounts_lines_figures(items=items, now=now, windows=windows)
    for (account, line), key, window, figure in zip(items, keys, windows, figures, strict=True):
        in_force = account.is_enterprise
        usage = MetricUsage(
            account_id=account.pk,
            metric=line.metric,
            used_milli=figure.used_milli,
            warning=line.warning if in_force else None,
            blocked=line.blocked if in_force else None,
            extension=figure.extension,
        )
        found[(account.pk, key)] = LineUsage(line=line, window=window, usage=usage)
    return found
