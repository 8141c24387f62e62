"""Reads of usage: period totals from daily counters, thresholds, status (SPEC section 4)."""

from __future__ import annotations

import dataclasses
import functools
import itertools
import json
import operator
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any, Protocol
from zoneinfo import ZoneInfo

import orjson
from django.conf import settings
from django.db import connection
from django.db.models import Max, Min, Q, QuerySet, Sum
from django.utils import timezone
from django.utils.text import format_lazy
from django.utils.translation import gettext
from django.utils.translation import gettext_lazy as _

from accounts.forms import limit_label
from accounts.generations import UNREAD, account_generation
from accounts.labels import labels_from_key, labels_key, labels_match
from accounts.metrics import METRICS
from accounts.models import Account, Language, Level, Limit, Plan, Recipient, ScopedLimit
from accounts.selectors import (
    LimitLine,
    account_lines_annotations,
    account_lines_of,
    account_with_columns,
    account_with_lines,
)
from accounts.windows import PeriodKind, Window, cover, window_current
from config.dates import datetime_text
from config.db import bound_cursor

from .models import (
    MILLI,
    EventPurge,
    Extension,
    Reservation,
    UsageCounter,
    UsageCounterKey,
    UsageEvent,
    UsageHourCounter,
    monthly_line_text,
)
from .periods import Period, period_containing, period_from_code
from .quantities import quantity_number, threshold_amount_text


class Status:
    OK = "ok"
    WARNING = Level.WARNING.value
    BLOCKED = Level.BLOCKED.value


@dataclass(frozen=True)
class MetricUsage:
    """Where one metric of one account stands in one period.

    ``warning`` and ``blocked`` are the thresholds in force: ``None`` when not set, and
    always ``None`` for an account whose plan is not Enterprise (its stored limits are
    kept but inactive). ``extension`` is what was granted on this line for this period, in
    force or not (for a monthly line, on the whole metric; for a scoped line, on that
    scoped limit for its current window, ``account_lines_usage``).
    """

    account_id: uuid.UUID
    metric: str
    used_milli: int
    warning: int | None
    blocked: int | None
    extension: int

    @property
    def effective_blocked(self) -> int | None:
        """The blocked threshold plus the line's extensions for the period; ``None`` when not
        set (SPEC 4: the effective blocked threshold)."""
        return None if self.blocked is None else self.blocked + self.extension

    def reaches(self, threshold: int | None) -> bool:
        """Whether ``used`` has reached ``threshold`` (an exact hit included); ``None`` never is."""
        return threshold is not None and self.used_milli >= threshold * MILLI

    @functools.cached_property
    def status(self) -> str:
        # Cached: an answer asks for it several times per line (status, remaining, allowed).
        if self.reaches(self.effective_blocked):
            return Status.BLOCKED
        if self.reaches(self.warning):
            return Status.WARNING
        return Status.OK

    @functools.cached_property
    def remaining_milli(self) -> int | None:
        effective = self.effective_blocked
        return None if effective is None else max(0, effective * MILLI - self.used_milli)

    @property
    def is_within_budget(self) -> bool:
        return self.status != Status.BLOCKED

    def allows(self, quantity_milli: int) -> bool:
        """The pre-flight answer: may ``quantity_milli`` more be processed?"""
        effective = self.effective_blocked
        if effective is None:
            return True
        if quantity_milli == 0:
            return self.status != Status.BLOCKED
        return self.used_milli + quantity_milli <= effective * MILLI


def current_period(account: Account, now: datetime | None = None) -> Period:
    return period_containing(now or timezone.now(), account.zone)


def usage_for(
    *,
    periods: dict[uuid.UUID, Period],
    pairs: Iterable[tuple[uuid.UUID, str]] | None = None,
) -> dict[tuple[uuid.UUID, str], MetricUsage]:
    """Usage of several accounts, each in its own period, in one query whatever the count.

    ``periods`` maps account ids to the period to read; ``pairs`` narrows the
    (account id, metric) pairs to read (every metric of every account by default).
    Only Enterprise accounts are limited: the limits of an account on another plan are
    not read, so it is unlimited wherever usage is read (API, pre-flight, ingestion
    answer, report, admin, notifications).
    """
    if not periods:
        return {}
    wanted = (
        set(pairs)
        if pairs is not None
        else {(account_id, metric) for account_id in periods for metric in METRICS}
    )
    rows = _usage_rows(wanted, periods)
    return {
        key: MetricUsage(
            account_id=key[0],
            metric=key[1],
            used_milli=rows[key][0],
            warning=rows[key][2],
            blocked=rows[key][3],
            extension=rows[key][1],
        )
        for key in wanted
    }


# What to read travels as one JSON parameter, unpacked by the database into rows
# (account, metric, first day, end day); each row's sums then use the unique indexes.
# Limits count only when the account's plan (a parameter) is Enterprise: the stored limits
# of other accounts are kept but inactive. The planner cannot tell how many rows the JSON
# holds (it assumes 100), so the statement's shape says how to reach the accounts and
# limits. For a few rows (a usage read, one account's report, a small batch's answer), a
# subquery per row through the indexes: the cost of the rows, whatever the number of
# accounts stored (joined, they were read whole: a usage read among 10,000 accounts took
# five times as long as among 100). For more, one join: the accounts and limits read once,
# which a subquery per row of hundreds would cost more than on a small table, and which the
# sweep and the report, reading every account, want anyway.
_WANTED = {
    "postgresql": "SELECT * FROM jsonb_to_recordset(%s::jsonb) AS w(a uuid, m text, f date, e date)",
    "sqlite": (
        "SELECT json_extract(value, '$.a') AS a, json_extract(value, '$.m') AS m,"
        " json_extract(value, '$.f') AS f, json_extract(value, '$.e') AS e FROM json_each(%s)"
    ),
}
USAGE_FEW_ROWS = 30
_USAGE_SUMS = f"""
WITH w AS ({{wanted}})
SELECT w.a AS c1, w.m AS c2,
  COALESCE((SELECT SUM(c.quantity_milli) FROM {UsageCounter._meta.db_table} c
            WHERE c.account_id = w.a AND c.metric = w.m AND c.labels = ''
              AND c.day >= w.f AND c.day < w.e), 0) AS c3,
  COALESCE((SELECT SUM(x.amount) FROM {Extension._meta.db_table} x
            WHERE x.account_id = w.a AND x.metric = w.m AND x.period = w.f
              AND x.scoped_limit_id IS NULL), 0) AS c4,"""
_USAGE_LIMIT = f"""(SELECT l.{{column}} FROM {Limit._meta.db_table} l
   JOIN {Account._meta.db_table} acc ON acc.id = l.account_id AND acc.plan = %s
   WHERE l.account_id = w.a AND l.metric = w.m)"""
_USAGE_SQL_FEW = f"""{_USAGE_SUMS}
  {_USAGE_LIMIT.format(column="warning")} AS c5,
  {_USAGE_LIMIT.format(column="blocked")} AS c6
FROM w
"""
_USAGE_SQL_MANY = f"""{_USAGE_SUMS}
  l.warning AS c5, l.blocked AS c6
FROM w
LEFT JOIN {Account._meta.db_table} acc ON acc.id = w.a AND acc.plan = %s
LEFT JOIN {Limit._meta.db_table} l ON l.account_id = acc.id AND l.metric = w.m
"""


def _usage_rows(
    wanted: set[tuple[uuid.UUID, str]], periods: dict[uuid.UUID, Period]
) -> dict[tuple[uuid.UUID, str], tuple[int, int, int | None, int | None]]:
    """``(used_milli, extension, warning, blocked)`` of each wanted pair, in one query."""
    sql, params = _usage_statement(wanted, periods)
    # Bound apart from the statement: a batch's answer reads a pair per account and metric.
    with bound_cursor() as cursor:
        cursor.execute(sql, params)
        return _usage_parse(cursor.fetchall(), periods)


def _usage_statement(
    wanted: set[tuple[uuid.UUID, str]], periods: dict[uuid.UUID, Period]
) -> tuple[str, list[Any]]:
    """The statement of ``_usage_rows`` and its parameters; its rows are ``(account,
    metric, used, extension, warning, blocked)``, named ``c1`` to ``c6``."""
    vendor = connection.vendor
    as_db = str if vendor == "postgresql" else (lambda account_id: account_id.hex)
    payload = orjson.dumps(
        [
            {
                "a": as_db(account_id),
                "m": metric,
                "f": periods[account_id].first_day,
                "e": periods[account_id].end_day,
            }
            for account_id, metric in sorted(wanted)
        ]
    ).decode()
    enterprise = Plan.ENTERPRISE.value
    if len(wanted) <= USAGE_FEW_ROWS:
        return _USAGE_SQL_FEW.format(wanted=_WANTED[vendor]), [payload, enterprise, enterprise]
    return _USAGE_SQL_MANY.format(wanted=_WANTED[vendor]), [payload, enterprise]


def _usage_parse(
    rows: Iterable[Sequence[Any]], periods: dict[uuid.UUID, Period]
) -> dict[tuple[uuid.UUID, str], tuple[int, int, int | None, int | None]]:
    """What ``_usage_rows`` returns, from the rows of ``_usage_statement``."""
    ids = {str(account_id): account_id for account_id in periods}
    ids.update((account_id.hex, account_id) for account_id in periods)
    return {
        (ids[str(account)], metric): (int(used), int(extension), warning, blocked)
        for account, metric, used, extension, warning, blocked in rows
    }


def usage_received_before(
    *, account_id: uuid.UUID, metric: str, period: Period, before: datetime
) -> int:
    """Thousandths of ``metric`` in ``period`` from the events received before ``before``.

    Scans the period's raw events of one account and metric: for rare checks only (what a
    period had reached when it closed), never for the hot path, which reads counters.
    """
    total = UsageEvent.objects.filter(
        account_id=account_id,
        metric=metric,
        occurred_at__gte=period.start,
        occurred_at__lt=period.end,
        received_at__lt=before,
    ).aggregate(total=Sum("quantity_milli"))["total"]
    return int(total or 0)


# --- Usage of limit lines (SPEC 11.2 and 11.3) ------------------------------------------


class Line(Protocol):
    """What ``lines_figures`` reads of a limit line (``accounts.selectors.LimitLine``); its
    extensions are read when it also has a ``scoped_limit_id``."""

    metric: str
    period: str
    window_days: int | None
    labels: Mapping[str, str]


def line_counts(line: Line, metric: str, labels: Mapping[str, str]) -> bool:
    """Whether ``line`` counts usage of ``metric`` carrying ``labels``: its metric, and every
    pair of its labels among them (SPEC 11.2, 11.4)."""
    return line.metric == metric and labels_match(line=line.labels, event=labels)


# Each line travels as one element of a JSON parameter: its index, what it reads (``d``: day
# counters from ``f`` to ``e`` excluded; ``h``: the hour counter starting at ``h``; ``m``:
# nothing, see below), its metric and labels key, and for a scoped limit its id ``s`` and
# its period's start ``t``, under which its extensions are summed; ``x`` set marks a
# whole-metric monthly line, whose extensions are those of the metric for the month ``f``.
# Events of the current minute are read beside, in the same query, summed per metric and
# label set (rows numbered ``MINUTE_ROWS``), and matched to the minute lines here; so are
# the active reservations, summed per metric and label set (``RESERVED_ROWS``).
_LINES_WANTED = {
    "postgresql": (
        "SELECT * FROM jsonb_to_recordset(%s::jsonb)"
        " AS w(i int, k text, m text, l text, f date, e date, h timestamptz, s bigint,"
        " t timestamptz, x int)"
    ),
    "sqlite": (
        "SELECT json_extract(value, '$.i') AS i, json_extract(value, '$.k') AS k,"
        " json_extract(value, '$.m') AS m, json_extract(value, '$.l') AS l,"
        " json_extract(value, '$.f') AS f, json_extract(value, '$.e') AS e,"
        " json_extract(value, '$.h') AS h, json_extract(value, '$.s') AS s,"
        " json_extract(value, '$.t') AS t, json_extract(value, '$.x') AS x FROM json_each(%s)"
    ),
}
MINUTE_ROWS = -1
RESERVED_ROWS = -2
_LINES_SQL = f"""
WITH w AS ({{wanted}})
SELECT w.i AS c1, NULL AS c2, NULL AS c3, CASE w.k
  WHEN 'd' THEN (SELECT SUM(c.quantity_milli) FROM {UsageCounter._meta.db_table} c
                 WHERE c.account_id = %s AND c.metric = w.m AND c.labels = w.l
                   AND c.day >= w.f AND c.day < w.e)
  WHEN 'h' THEN (SELECT c.quantity_milli FROM {UsageHourCounter._meta.db_table} c
                 WHERE c.account_id = %s AND c.metric = w.m AND c.labels = w.l AND c.hour = w.h)
  END AS c4,
  CASE WHEN w.s IS NOT NULL THEN
    (SELECT SUM(x.amount) FROM {Extension._meta.db_table} x
     WHERE x.scoped_limit_id = w.s AND x.period_start = w.t)
  WHEN w.x IS NOT NULL THEN
    (SELECT SUM(x.amount) FROM {Extension._meta.db_table} x
     WHERE x.account_id = %s AND x.metric = w.m AND x.period = w.f
       AND x.scoped_limit_id IS NULL)
  END AS c5
FROM w
"""
_MINUTE_SQL = f"""
UNION ALL
SELECT {MINUTE_ROWS}, e.metric, {{labels}}, SUM(e.quantity_milli), NULL
FROM {UsageEvent._meta.db_table} e
WHERE e.account_id = %s AND e.occurred_at >= %s AND e.occurred_at < %s
GROUP BY e.metric, e.labels
"""
_RESERVED_SQL = f"""
UNION ALL
SELECT {RESERVED_ROWS}, r.metric, r.labels_key, SUM(r.quantity_milli), NULL
FROM {Reservation._meta.db_table} r
WHERE r.account_id = %s AND r.status = '{Reservation.Status.ACTIVE.value}' AND r.expires_at > %s
GROUP BY r.metric, r.labels_key
"""


# The same, for lines of several accounts (``accounts_lines_figures``): each line carries
# its account ``a``, and the current minute's events are summed per account too.
_ACCOUNTS_LINES_WANTED = {
    "postgresql": (
        "SELECT * FROM jsonb_to_recordset(%s::jsonb)"
        " AS w(i int, a uuid, k text, m text, l text, f date, e date, h timestamptz, s bigint,"
        " t timestamptz)"
    ),
    "sqlite": (
        "SELECT json_extract(value, '$.i') AS i, json_extract(value, '$.a') AS a,"
        " json_extract(value, '$.k') AS k,"
        " json_extract(value, '$.m') AS m, json_extract(value, '$.l') AS l,"
        " json_extract(value, '$.f') AS f, json_extract(value, '$.e') AS e,"
        " json_extract(value, '$.h') AS h, json_extract(value, '$.s') AS s,"
        " json_extract(value, '$.t') AS t FROM json_each(%s)"
    ),
}
_ACCOUNTS_LINES_SQL = f"""
WITH w AS ({{wanted}})
SELECT w.i, NULL, NULL, NULL, CASE w.k
  WHEN 'd' THEN (SELECT SUM(c.quantity_milli) FROM {UsageCounter._meta.db_table} c
                 WHERE c.account_id = w.a AND c.metric = w.m AND c.labels = w.l
                   AND c.day >= w.f AND c.day < w.e)
  WHEN 'h' THEN (SELECT c.quantity_milli FROM {UsageHourCounter._meta.db_table} c
                 WHERE c.account_id = w.a AND c.metric = w.m AND c.labels = w.l AND c.hour = w.h)
  END,
  (SELECT SUM(x.amount) FROM {Extension._meta.db_table} x
   WHERE x.scoped_limit_id = w.s AND x.period_start = w.t)
FROM w
"""
_ACCOUNTS_MINUTE_SQL = f"""
UNION ALL
SELECT NULL, e.account_id, e.metric, {{labels}}, SUM(e.quantity_milli), NULL
FROM {UsageEvent._meta.db_table} e
WHERE e.account_id IN ({{accounts}}) AND e.occurred_at >= %s AND e.occurred_at < %s
GROUP BY e.account_id, e.metric, e.labels
"""
_MINUTE_ACCOUNTS = {
    "postgresql": "SELECT unnest(%s::uuid[])",
    "sqlite": "SELECT value FROM json_each(%s)",
}


def line_window(*, line: Line, zone: ZoneInfo, now: datetime) -> Window:
    """The current window of ``line`` in ``zone`` at ``now``."""
    return window_current(kind=line.period, instant=now, zone=zone, days=line.window_days)


def line_period_start(window: Window) -> datetime:
    """The start of a line's period as extensions and SPEC 11.5 name it: the window's
    start, or for a rolling window the start of its last day (its ``key``)."""
    return window.last_day.start if window.kind == PeriodKind.ROLLING else window.start


@dataclass(frozen=True)
class LineFigures:
    """What ``lines_figures`` reads of one line: usage in its current window (thousandths)
    and the extensions granted on it for that window (whole units)."""

    used_milli: int
    extension: int


def lines_used_milli(*, account: Account, lines: Sequence[Line], now: datetime) -> list[int]:
    """What each line of ``account`` has used in its current window, in thousandths, in order.

    See ``lines_figures``, which also reads the extensions, in the same one query.
    """
    return [figures.used_milli for figures in lines_figures(account=account, lines=lines, now=now)]


def lines_figures(*, account: Account, lines: Sequence[Line], now: datetime) -> list[LineFigures]:
    """What each line of ``account`` has used in its current window, and its extensions for
    that window, in order.

    One query whatever the number of lines or of stored events: ``month``, ``week``,
    ``day`` and ``rolling`` lines sum the day counters of their label key (at most 366
    rows each), ``hour`` lines read one hour counter, and ``minute`` lines the events of the
    current minute (SPEC 11.2, 11.3). The counters of a scoped line's label key are kept
    from the first day of its current window on (``usage.models.UsageCounterKey``), what
    was recorded before the line was saved included.
    A line's extensions are those granted on its scoped limit (``scoped_limit_id``; a line
    without one has none here) for the period its window starts (``line_period_start``):
    once the window moves on, they no longer count (SPEC 4 and 11.5).
    """
    zone = account.zone
    windows = [line_window(line=line, zone=zone, now=now) for line in lines]
    figures, _reserved = _lines_read(account=account, lines=lines, windows=windows, now=now)
    return figures


def _lines_read(
    *,
    account: Account,
    lines: Sequence[Line],
    windows: Sequence[Window],
    now: datetime,
    monthly_extensions: bool = False,
    reservations: bool = False,
) -> tuple[list[LineFigures], list[int]]:
    """``lines_figures`` of ``lines`` over ``windows`` (theirs at ``now``), and what active
    reservations hold on each at ``now`` (zeros unless ``reservations``), in one query.

    ``monthly_extensions``: a whole-metric monthly line (no ``scoped_limit_id``, a month,
    no labels) reads the extensions of its metric for its month, as ``usage_for`` does.
    """
    if not lines:
        return [], []
    sql, params = _lines_statement(
        account_id=account.pk,
        zone=account.zone,
        lines=lines,
        windows=windows,
        now=now,
        monthly_extensions=monthly_extensions,
        reservations=reservations,
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return _lines_parse(cursor.fetchall(), lines)


def _lines_statement(
    *,
    account_id: uuid.UUID,
    zone: ZoneInfo,
    lines: Sequence[Line],
    windows: Sequence[Window],
    now: datetime,
    monthly_extensions: bool,
    reservations: bool,
    wanted: tuple[str, Window | None] | None = None,
) -> tuple[str, list[Any]]:
    """The statement of ``_lines_read`` and its parameters; its rows are
    ``(index, metric, labels, total, granted)``, named ``c1`` to ``c5``. ``wanted``: what
    ``_lines_wanted`` gave for these lines and windows, when the caller kept it."""
    vendor = connection.vendor
    postgresql = vendor == "postgresql"
    account_param = str(account_id) if postgresql else account_id.hex
    if wanted is None:
        wanted = _lines_wanted(
            zone=zone, lines=lines, windows=windows, monthly_extensions=monthly_extensions
        )
    wanted_json, minute = wanted
    sql = _LINES_SQL.format(wanted=_LINES_WANTED[vendor])
    params: list[Any] = [wanted_json, account_param, account_param, account_param]
    if minute is not None:
        labels = "e.labels::text" if postgresql else "e.labels"
        sql += _MINUTE_SQL.format(labels=labels)
        bounds: list[Any] = [minute.start, minute.end]
        if not postgresql:
            bounds = [connection.ops.adapt_datetimefield_value(bound) for bound in bounds]
        params += [account_param, *bounds]
    if reservations:
        sql += _RESERVED_SQL
        params += [
            account_param,
            now if postgresql else connection.ops.adapt_datetimefield_value(now),
        ]
    return sql, params


def _lines_wanted(
    *, zone: ZoneInfo, lines: Sequence[Line], windows: Sequence[Window], monthly_extensions: bool
) -> tuple[str, Window | None]:
    """The JSON parameter of ``_lines_statement`` naming what each line reads over its
    window, and the current minute's window when a line reads it."""
    postgresql = connection.vendor == "postgresql"

    def as_db(instant: datetime) -> Any:
        if postgresql:
            return instant.isoformat()
        return connection.ops.adapt_datetimefield_value(instant)

    wanted: list[dict[str, Any]] = []
    minute: Window | None = None
    for index, (line, window) in enumerate(zip(lines, windows, strict=True)):
        scoped_limit_id = getattr(line, "scoped_limit_id", None)
        item: dict[str, Any] = {
            "i": index,
            "m": line.metric,
            "l": labels_key(line.labels),
            "s": scoped_limit_id,
        }
        if scoped_limit_id is not None:
            item["t"] = as_db(line_period_start(window))
        kind = window.kind
        if kind == PeriodKind.MINUTE:
            minute = window
            item["k"] = "m"
        elif kind == PeriodKind.HOUR:
            item.update(k="h", h=as_db(window.start))
        else:
            item.update(
                k="d",
                f=window.start.astimezone(zone).date().isoformat(),
                e=window.end.astimezone(zone).date().isoformat(),
            )
            if (
                monthly_extensions
                and scoped_limit_id is None
                and kind == PeriodKind.MONTH
                and not line.labels
            ):
                item["x"] = 1
        wanted.append(item)
    return json.dumps(wanted), minute


def _lines_parse(
    rows: Iterable[Sequence[Any]], lines: Sequence[Line]
) -> tuple[list[LineFigures], list[int]]:
    """What ``_lines_read`` returns, from the rows of ``_lines_statement``."""
    used = [0] * len(lines)
    extension = [0] * len(lines)
    minute_sums: list[tuple[str, dict[str, str], int]] = []
    held: list[tuple[str, dict[str, str], int]] = []
    for index, metric, labels, total, granted in rows:
        if index == MINUTE_ROWS:
            minute_sums.append((metric, json.loads(labels) if labels else {}, int(total)))
        elif index == RESERVED_ROWS:
            held.append((metric, labels_from_key(labels), int(total)))
        else:
            used[int(index)] = int(total or 0)
            extension[int(index)] = int(granted or 0)
    for index, line in enumerate(lines):
        if line.period == PeriodKind.MINUTE:
            used[index] = _matching(minute_sums, line)
    reserved = [_matching(held, line) if held else 0 for line in lines]
    figures = [LineFigures(used_milli=u, extension=x) for u, x in zip(used, extension, strict=True)]
    return figures, reserved


# A statement's rows as one JSON text, so that it can be read as a column of another: its
# columns are named ``c1`` to ``cN``.
_AS_JSON_ROWS = {
    "postgresql": "(SELECT json_agg(json_build_array({columns}))::text FROM ({sql}) AS q)",
    "sqlite": "(SELECT json_group_array(json_array({columns})) FROM ({sql}) AS q)",
}


def _as_json_rows(sql: str, params: list[Any], columns: int) -> tuple[str, list[Any]]:
    names = ", ".join(f"q.c{number}" for number in range(1, columns + 1))
    return _AS_JSON_ROWS[connection.vendor].format(columns=names, sql=sql), params


def _matching(groups: list[tuple[str, dict[str, str], int]], line: Line) -> int:
    """The sum of the ``(metric, labels, total)`` groups that ``line`` counts."""
    return sum(total for metric, labels, total in groups if line_counts(line, metric, labels))


def _lines_windows(items: Sequence[tuple[Account, Line]], now: datetime) -> list[Window]:
    """The current window of each ``(account, line)``, computed once per zone and shape."""
    found: dict[tuple[str, str, int | None], Window] = {}
    windows = []
    for account, line in items:
        shape = (account.timezone, line.period, line.window_days)
        window = found.get(shape)
        if window is None:
            window = found[shape] = line_window(line=line, zone=account.zone, now=now)
        windows.append(window)
    return windows


def accounts_lines_figures(
    *,
    items: Sequence[tuple[Account, Line]],
    now: datetime,
    windows: Sequence[Window] | None = None,
) -> list[LineFigures]:
    """``lines_figures`` of lines of several accounts, each ``(account, line)``, in order: one
    query whatever the number of accounts and lines. ``windows``: their current windows,
    when the caller has them (``_lines_windows``)."""
    if not items:
        return []
    if windows is None:
        windows = _lines_windows(items, now)
    vendor = connection.vendor

    def as_db(instant: datetime) -> Any:
        if vendor == "postgresql":
            return instant.isoformat()
        return connection.ops.adapt_datetimefield_value(instant)

    def account_db(account: Account) -> str:
        return str(account.pk) if vendor == "postgresql" else account.pk.hex

    wanted: list[dict[str, Any]] = []
    minute: Window | None = None
    minute_accounts: dict[str, Account] = {}
    for index, (account, line) in enumerate(items):
        zone = account.zone
        window = windows[index]
        item: dict[str, Any] = {
            "i": index,
            "a": account_db(account),
            "m": line.metric,
            "l": labels_key(line.labels),
            "s": getattr(line, "scoped_limit_id", None),
            "t": as_db(line_period_start(window)),
        }
        if window.kind == PeriodKind.MINUTE:
            # Every time zone's offset is a whole number of minutes: the current minute is
            # the same instants in all.
            minute = window
            minute_accounts[account_db(account)] = account
            item["k"] = "m"
        elif window.kind == PeriodKind.HOUR:
            item.update(k="h", h=as_db(window.start))
        else:
            item.update(
                k="d",
                f=window.start.astimezone(zone).date().isoformat(),
                e=window.end.astimezone(zone).date().isoformat(),
            )
        wanted.append(item)
    sql = _ACCOUNTS_LINES_SQL.format(wanted=_ACCOUNTS_LINES_WANTED[vendor])
    params: list[Any] = [orjson.dumps(wanted).decode()]
    if minute is not None:
        labels = "e.labels::text" if vendor == "postgresql" else "e.labels"
        sql += _ACCOUNTS_MINUTE_SQL.format(labels=labels, accounts=_MINUTE_ACCOUNTS[vendor])
        ids = sorted(minute_accounts)
        bounds = [minute.start, minute.end]
        if vendor != "postgresql":
            bounds = [connection.ops.adapt_datetimefield_value(bound) for bound in bounds]
        params += [ids if vendor == "postgresql" else json.dumps(ids), *bounds]
    used = [0] * len(items)
    extension = [0] * len(items)
    minute_sums: list[tuple[str, str, dict[str, str], int]] = []
    # Bound apart from the statement: a batch's hundreds of lines travel as one JSON text
    # that PostgreSQL neither parses as SQL nor plans again (``config.db.bound_cursor``).
    with bound_cursor() as cursor:
        cursor.execute(sql, params)
        for index, account_id, metric, labels, total, granted in cursor.fetchall():
            if index is not None:
                used[int(index)] = int(total or 0)
                extension[int(index)] = int(granted or 0)
            else:
                owner = str(account_id)  # as ``account_db`` spells it on either database
                minute_sums.append(
                    (owner, metric, json.loads(labels) if labels else {}, int(total))
                )
    for index, (account, line) in enumerate(items):
        if line.period == PeriodKind.MINUTE:
            owner = account_db(account)
            used[index] = sum(
                total
                for account_id, metric, labels, total in minute_sums
                if account_id == owner and line_counts(line, metric, labels)
            )
    return [LineFigures(used_milli=u, extension=x) for u, x in zip(used, extension, strict=True)]


def account_usage(*, account: Account, period: Period | None = None) -> list[MetricUsage]:
    """Every metric of ``account`` in ``period`` (the current one by default), in METRICS order."""
    period = period or current_period(account)
    found = usage_for(periods={account.pk: period})
    return [found[(account.pk, metric)] for metric in METRICS]


# The westernmost time zone in use (UTC-12) is the last to leave a month: the first day of
# its current month is the earliest first day of any account's current period.
WESTERNMOST_ZONE = ZoneInfo("Etc/GMT+12")
# Accounts read per ``usage_for`` call, which ORs one condition per account: SQLite refuses
# about 1,000 of them ("Expression tree is too large"), and compiling them costs ~0.3 ms each.
REPORT_CHUNK = 500


def earliest_current_day(now: datetime | None = None) -> date:
    """The first day of the earliest current period of any account, whatever its time zone."""
    return period_containing(now or timezone.now(), WESTERNMOST_ZONE).first_day


def purge_boundary() -> date | None:
    """The day before which raw events were purged (``None``: never); older counters are final."""
    return EventPurge.objects.aggregate(boundary=Max("before"))["boundary"]


REPORT_COLUMNS = (
    "account",
    "external_id",
    "name",
    "period",
    "period_kind",
    "window_days",
    "labels",
    "metric",
    "unit",
    "used",
    "warning",
    "blocked",
    "extension",
    "remaining",
    "status",
)


@dataclass(frozen=True)
class ReportRow:
    """One line of the usage report: one limit line of one account in one period.

    ``line`` is ``None`` for a whole-metric monthly line (``period`` is then its month);
    for a scoped limit it is the line over its current window.
    """

    account: Account
    period: Period
    usage: MetricUsage
    line: LineUsage | None = None

    def as_data(self) -> dict[str, Any]:
        """``REPORT_COLUMNS``, quantities written as the API writes them; ``None`` when not set.

        ``period`` is ``YYYY-MM`` for a monthly line, else the start of the line's current
        window with the account's local offset; ``labels`` is the canonical ``key=value``
        list (``X-Usage-Labels``), empty for none.
        """
        usage, line = self.usage, self.line
        return {
            "account": str(self.account.pk),
            "external_id": self.account.external_id,
            "name": self.account.name,
            "period": self.period.code
            if line is None
            else line.window.start.astimezone(self.account.zone).isoformat(),
            "period_kind": PeriodKind.MONTH.value if line is None else line.line.period.value,
            "window_days": None if line is None else line.line.window_days,
            "labels": "" if line is None else labels_key(line.line.labels),
            "metric": usage.metric,
            "unit": METRICS[usage.metric].unit,
            "used": quantity_number(usage.used_milli, usage.metric),
            "warning": usage.warning,
            "blocked": usage.blocked,
            "extension": usage.extension,
            "remaining": quantity_number(usage.remaining_milli, usage.metric),
            "status": usage.status,
        }


def usage_report_rows(*, account: Account | None, period_code: str | None) -> list[ReportRow]:
    """Every metric of every active account (or of ``account`` alone, active or not).

    ``period_code`` (``YYYY-MM``) names the month, in each account's time zone; the
    current period of each account by default, and then each account's scoped limits follow
    its monthly lines, each over its current window (SPEC 11.3). A past month lists the
    monthly lines only: a scoped line has many windows in a month. Raises ``ValueError``
    for a malformed code. Costs one query plus one per ``REPORT_CHUNK`` accounts, and a few
    per account that has scoped limits.
    """
    if period_code is not None:
        period_from_code(period_code, WESTERNMOST_ZONE)  # refuses a bad code with no account
    if account is not None:
        accounts = [account]
    else:
        accounts = list(Account.objects.filter(is_active=True).order_by("name", "external_id"))
    now = timezone.now()
    periods = {
        item.pk: period_from_code(period_code, item.zone)
        if period_code is not None
        else current_period(item, now)
        for item in accounts
    }
    rows: list[ReportRow] = []
    for start in range(0, len(accounts), REPORT_CHUNK):
        chunk = accounts[start : start + REPORT_CHUNK]
        found = usage_for(periods={item.pk: periods[item.pk] for item in chunk})
        scoped = _accounts_with_scoped_limits(chunk) if period_code is None else set()
        for item in chunk:
            rows += [
                ReportRow(account=item, period=periods[item.pk], usage=found[(item.pk, metric)])
                for metric in METRICS
            ]
            if item.pk in scoped:
                rows += [
                    ReportRow(account=item, period=periods[item.pk], usage=line.usage, line=line)
                    for line in account_lines_usage(account=item, now=now)
                    if not line.is_whole_metric_month
                ]
    return rows


# --- Usage of the current period, per account (SPEC sections 4 and 7) ---

# Worst last: an account's status is the worst status of its metrics.
STATUSES = (Status.OK, Status.WARNING, Status.BLOCKED)


def worst_status(usages: Iterable[MetricUsage]) -> str:
    return max((usage.status for usage in usages), key=STATUSES.index, default=Status.OK)


def current_usage_attach(accounts: Iterable[Account], now: datetime | None = None) -> None:
    """Read the current-period usage of every metric of ``accounts`` in one query.

    Each account gets ``current_usage``: metric -> ``MetricUsage``, in METRICS order.
    """
    now = now or timezone.now()
    accounts = list(accounts)
    found = usage_for(periods={account.pk: current_period(account, now) for account in accounts})
    for account in accounts:
        account.current_usage = {metric: found[(account.pk, metric)] for metric in METRICS}


def current_usage_of(account: Account) -> dict[str, MetricUsage]:
    """``account.current_usage``, read now (one query) when no list attached it."""
    if not hasattr(account, "current_usage"):
        current_usage_attach([account])
    return account.current_usage


def account_statuses_reached(now: datetime | None = None) -> dict[Any, str]:
    """The status of every account past a threshold of its current period (others are ok).

    Only metrics with a threshold of an Enterprise account can leave ``ok``: four queries
    whatever the number of accounts (the limits with their accounts' time zones, then
    ``usage_for``).
    """
    now = now or timezone.now()
    periods: dict[Any, Period] = {}
    pairs = set()
    by_zone: dict[str, Period] = {}
    rows = (
        Limit.objects.filter(Q(warning__isnull=False) | Q(blocked__isnull=False))
        .filter(account__plan=Plan.ENTERPRISE)
        .values_list("account_id", "metric", "account__timezone")
    )
    for account_id, metric, zone in rows:
        if zone not in by_zone:
            by_zone[zone] = period_containing(now, ZoneInfo(zone))
        periods[account_id] = by_zone[zone]
        pairs.add((account_id, metric))
    reached: dict[Any, str] = {}
    for usage in usage_for(periods=periods, pairs=pairs).values():
        status = usage.status
        if STATUSES.index(status) > STATUSES.index(reached.get(usage.account_id, Status.OK)):
            reached[usage.account_id] = status
    return reached


# --- History of the limits, in the metrics' units ---

HISTORY_LENGTH = 50


_RECIPIENT_LABELS = {Level.WARNING: _("Warning recipient"), Level.BLOCKED: _("Blocked recipient")}
_LINE_LEVEL_LABELS = {
    Level.WARNING: _("{line}: warning threshold"),
    Level.BLOCKED: _("{line}: blocked threshold"),
}


# Where a change of limits came from (``limits_replace``'s ``reason``), for people.
REASON_LABELS = {
    "admin": _("admin"),
    "api": _("API"),
    "command": _("command"),
    "seed_demo": _("demo data"),
}
# The account's own fields (synced from the CRM) whose changes its history shows.
ACCOUNT_HISTORY_FIELDS = ("name", "external_id", "plan", "language", "timezone", "is_active")


@dataclass(frozen=True)
class LimitsChange:
    """One changed value of an account's limits or recipients, or of its own fields.

    ``who`` is ``—`` for a change made outside a person's session (a command, the CRM
    sync); ``version_id`` is the past version of the account a change of its own fields
    made (``None`` for limits and recipients, which have no version to go back to).
    """

    when: datetime
    who: str
    what: str
    old: str
    new: str
    reason: str
    zone: str = "UTC"
    version_id: int | None = None

    @property
    def when_text(self) -> str:
        return datetime_text(self.when, self.zone)

    @property
    def reason_text(self) -> str:
        return str(REASON_LABELS.get(self.reason, self.reason)) or "—"


def _recipient_display(record: Any) -> str:
    if record is None:
        return "—"
    language = dict(Language.choices).get(record.language, record.language)
    return f"{record.email} ({language})"


def _records_with_previous(history: QuerySet, *, account: Account, limit: int) -> list[tuple]:
    """The newest ``limit`` records of the account's rows, each with the record before it."""
    records = list(
        history.filter(account_id=account.pk)
        .select_related("history_user")
        .order_by("-history_date", "-history_id")[:limit]
    )
    by_row: dict[Any, list] = defaultdict(list)
    for record in records:
        by_row[record.id].append(record)
    pairs = []
    for newest_first in by_row.values():
        pairs.extend(itertools.pairwise(newest_first))
        # The oldest record fetched of a row needs one query for its predecessor, so at
        # most one query per row (a limit row per metric, a few recipients).
        oldest = newest_first[-1]
        pairs.append((oldest, None if oldest.history_type == "+" else oldest.prev_record))
    return pairs


def _limit_changes(record: Any, previous: Any) -> list[tuple[str, str, str]]:
    spec = METRICS.get(record.metric)
    levels = Level.values
    if record.history_type == "~" and previous is not None:
        delta = record.diff_against(previous, included_fields=levels)
        values = [(change.field, change.old, change.new) for change in delta.changes]
    elif record.history_type == "-":
        values = [(level, getattr(record, level), None) for level in levels]
    else:
        values = [(level, None, getattr(record, level)) for level in levels]
    return [
        (
            str(limit_label(spec, level)) if spec else f"{record.metric}: {level}",
            threshold_amount_text(old, record.metric),
            threshold_amount_text(new, record.metric),
        )
        for level, old, new in sorted(values, key=lambda value: levels.index(value[0]))
        if old != new
    ]


def _recipient_changes(record: Any, previous: Any) -> list[tuple[str, str, str]]:
    label = _RECIPIENT_LABELS.get(record.level, record.level)
    before = {"+": None, "-": record}.get(record.history_type, previous)
    old = _recipient_display(before)
    new = _recipient_display(None if record.history_type == "-" else record)
    return [(str(label), old, new)] if old != new else []


def _scoped_thresholds_display(record: Any) -> str:
    return gettext("warning %(warning)s, blocked %(blocked)s") % {
        "warning": threshold_amount_text(record.warning, record.metric),
        "blocked": threshold_amount_text(record.blocked, record.metric),
    }


def _scoped_limit_changes(record: Any, previous: Any) -> list[tuple[str, str, str]]:
    """A scoped limit added or removed: one entry with both thresholds; changed: one entry
    per threshold changed (a change of position alone shows nothing)."""
    line = record.instance.line_text()
    if record.history_type == "+":
        return [(line, "—", _scoped_thresholds_display(record))]
    if record.history_type == "-":
        return [(line, _scoped_thresholds_display(record), "—")]
    if previous is None:
        return []
    delta = record.diff_against(previous, included_fields=Level.values)
    return [
        (
            str(format_lazy(_LINE_LEVEL_LABELS[Level(change.field)], line=line)),
            threshold_amount_text(change.old, record.metric),
            threshold_amount_text(change.new, record.metric),
        )
        for change in sorted(delta.changes, key=lambda change: Level.values.index(change.field))
        if change.old != change.new
    ]


def limits_history_list(*, account: Account, limit: int = HISTORY_LENGTH) -> list[LimitsChange]:
    """The ``limit`` most recent changes of the account's limits, scoped limits and
    recipients, newest first.

    Built from simple-history's records (written by ``limits_replace`` with who and why),
    one entry per changed value.
    """
    found: list[tuple[Any, LimitsChange]] = []
    for history, describe in (
        (Limit.history, _limit_changes),
        (Recipient.history, _recipient_changes),
        (ScopedLimit.history, _scoped_limit_changes),
    ):
        for record, previous in _records_with_previous(history, account=account, limit=limit):
            user = record.history_user
            for what, old, new in describe(record, previous):
                change = LimitsChange(
                    when=record.history_date,
                    who=user.get_username() if user is not None else "—",
                    what=what,
                    old=old,
                    new=new,
                    reason=record.history_change_reason or "",
                    zone=account.timezone,
                )
                found.append(((record.history_date, record.history_id), change))
    found.sort(key=lambda item: item[0], reverse=True)
    return [change for _key, change in found[:limit]]


def _account_value(field_name: str, value: Any) -> str:
    field = Account._meta.get_field(field_name)
    if value is None or value == "":
        return "—"
    if field.choices:
        return str(dict(field.flatchoices).get(value, value))
    if isinstance(value, bool):
        return gettext("Yes") if value else gettext("No")
    return str(value)


def account_history_list(*, account: Account, limit: int = HISTORY_LENGTH) -> list[LimitsChange]:
    """The ``limit`` most recent changes of the account: of its own fields (each with the
    version it made) and of its limits, scoped limits and recipients, newest first, one
    entry per changed value, values written for people (labels, units)."""
    records = list(
        Account.history.filter(id=account.pk)
        .select_related("history_user")
        .order_by("-history_date", "-history_id")[: limit + 1]
    )
    found = list(limits_history_list(account=account, limit=limit))
    for record, previous in itertools.zip_longest(records[:limit], records[1:]):
        user = record.history_user
        who = user.get_username() if user is not None else "—"
        common = {
            "when": record.history_date,
            "who": who,
            "reason": record.history_change_reason or "",
            "zone": account.timezone,
            "version_id": record.history_id,
        }
        if record.history_type == "+" or previous is None:
            found.append(
                LimitsChange(
                    what=gettext("Account created"), old="—", new=str(record.name), **common
                )
            )
            continue
        delta = record.diff_against(previous, included_fields=list(ACCOUNT_HISTORY_FIELDS))
        for change in delta.changes:
            label = Account._meta.get_field(change.field).verbose_name
            found.append(
                LimitsChange(
                    what=str(label)[:1].upper() + str(label)[1:],
                    old=_account_value(change.field, change.old),
                    new=_account_value(change.field, change.new),
                    **common,
                )
            )
    found.sort(key=lambda change: change.when, reverse=True)
    return found[:limit]


def _accounts_with_scoped_limits(accounts: list[Account]) -> set[uuid.UUID]:
    return set(
        ScopedLimit.objects.filter(account__in=accounts).values_list("account_id", flat=True)
    )


# --- Limit lines (SPEC 11.3 and 11.4) ---
#
# An account's lines are the three whole-metric monthly lines (``accounts.selectors
# .limit_lines``, always, limited or not) and its scoped limits. Each is read over its own
# current window in the account's time zone (``accounts.windows``), from counters only, with
# the extensions granted on the line for that window (``lines_figures``), so a read costs the
# same at a thousand and at ten million stored events. Status, remaining and the pre-flight
# answer follow the one rule of section 4, ``MetricUsage``: a line is a ``MetricUsage`` over
# its window, whose ``effective_blocked`` is the line's blocked threshold plus its extensions.


@dataclass(frozen=True)
class LineUsage:
    """Where one limit line stands over its current window."""

    line: LimitLine
    window: Window
    usage: MetricUsage
    # What active reservations hold on the line (SPEC 12.1); 0 unless read with
    # ``account_lines_with_reservations``.
    reserved_milli: int = 0

    @property
    def is_whole_metric_month(self) -> bool:
        return self.line.scoped_limit_id is None

    @functools.cached_property
    def remaining_milli(self) -> int | None:
        """The effective blocked threshold minus used and reserved, never negative;
        ``None`` when the line has no blocked threshold (SPEC 11.3 and 12.1)."""
        remaining = self.usage.remaining_milli
        return None if remaining is None else max(0, remaining - self.reserved_milli)

    def allows(self, quantity_milli: int) -> bool:
        """The pre-flight answer with reservations counted: ``quantity_milli`` more fits
        beside what is used and reserved; 0 asks whether the line is blocked."""
        if quantity_milli == 0:
            return self.usage.allows(0)
        return self.usage.allows(self.reserved_milli + quantity_milli)

    @property
    def is_extended(self) -> bool:
        """An extension raises the line's blocked threshold in the current window."""
        return self.usage.blocked is not None and self.usage.extension > 0


def account_lines_usage(
    *,
    account: Account,
    metric: str | None = None,
    labels: Mapping[str, str] | None = None,
    now: datetime | None = None,
) -> list[LineUsage]:
    """The account's lines in their order (SPEC 11.3), each over its current window.

    ``metric`` keeps the lines of that metric; ``labels`` keeps those that apply to usage
    carrying these labels (SPEC 11.4: the line's labels are contained in them). Stored
    thresholds of an account that is not Enterprise are kept but not in force, as for the
    monthly limits. Two queries: the lines (``accounts.selectors.account_with_lines``),
    then every line's usage and extensions (``lines_figures``, the monthly lines'
    extensions as ``usage_for`` reads them).
    """
    found = account_with_lines(account_id=account.pk)
    lines = [] if found is None else found[1]
    return _lines_usage(
        account=account, lines=lines, metric=metric, labels=labels, now=now, reservations=False
    )


def _lines_usage(
    *,
    account: Account,
    lines: Sequence[LimitLine],
    metric: str | None,
    labels: Mapping[str, str] | None,
    now: datetime | None,
    reservations: bool,
) -> list[LineUsage]:
    """``lines`` of ``account`` kept by ``metric`` and ``labels`` (see
    ``account_lines_usage``), each with its figures, in one query."""
    now = now or timezone.now()
    kept, windows = _lines_kept(account=account, lines=lines, metric=metric, labels=labels, now=now)
    figures, reserved = _lines_read(
        account=account,
        lines=kept,
        windows=windows,
        now=now,
        monthly_extensions=True,
        reservations=reservations,
    )
    return _lines_built(account, kept, windows, figures, reserved)


def _lines_kept(
    *,
    account: Account,
    lines: Sequence[LimitLine],
    metric: str | None,
    labels: Mapping[str, str] | None,
    now: datetime,
) -> tuple[list[LimitLine], list[Window]]:
    """The lines of ``metric`` that apply to ``labels`` (all by default), with their windows."""
    zone = account.zone
    kept = [
        line
        for line in lines
        if (metric is None or line.metric == metric)
        and (labels is None or labels_match(line=line.labels, event=labels))
    ]
    return kept, [line_window(line=line, zone=zone, now=now) for line in kept]


def _lines_built(
    account: Account,
    lines: Sequence[LimitLine],
    windows: Sequence[Window],
    figures: Sequence[LineFigures],
    reserved: Sequence[int],
) -> list[LineUsage]:
    # The monthly lines' thresholds are those in force already (``account_with_lines``).
    in_force = account.is_enterprise
    return [
        LineUsage(
            line=line,
            window=window,
            usage=MetricUsage(
                account_id=account.pk,
                metric=line.metric,
                used_milli=figure.used_milli,
                warning=line.warning if in_force or line.scoped_limit_id is None else None,
                blocked=line.blocked if in_force or line.scoped_limit_id is None else None,
                extension=figure.extension,
            ),
            reserved_milli=held,
        )
        for line, window, figure, held in zip(lines, windows, figures, reserved, strict=True)
    ]


# --- One statement for a read of an account's lines (capacities, the pre-flight) ---
#
# Each process remembers, per account, the time zone, plan and lines it last read. A read
# computes the windows from them and sends, in one statement, the account with its current
# lines and the figures of the remembered ones; the figures are used only when what the
# statement read of the account is what was remembered (in the same snapshot), else they
# are read again for the lines just read (a second statement). So the memory saves a round
# trip and is never trusted: a change made anywhere shows in the next read.


@dataclass
class _Remembered:
    timezone: str
    plan: str
    lines: tuple[LimitLine, ...]
    # The lines' two columns as the statement returned them: the same text again is the
    # same lines, known without parsing them.
    read: tuple[Any, Any] = (None, None)
    # Per metric and labels asked: the lines that apply, and the windows and ``wanted``
    # parameter of their last statement (``_lines_wanted``), kept while those windows last.
    kept: dict[tuple[str | None, str | None], _Kept] = field(default_factory=dict)

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)


@dataclass(frozen=True)
class _Kept:
    lines: list[LimitLine]
    windows: list[Window]
    wanted: tuple[str, Window | None]


# The most (metric, labels) pairs kept per account (about 3.5 kB each with 13 lines,
# tracemalloc): past it, they are forgotten.
MAX_KEPT = 4


_remembered: dict[uuid.UUID, _Remembered] = {}
# A bound on the memory (about 10 kB an account with 13 lines, 25 kB with every pair kept:
# 25 MB at most): past it, all is forgotten.
MAX_REMEMBERED = 1_000


def _remember(account_id: uuid.UUID, entry: _Remembered) -> None:
    if len(_remembered) >= MAX_REMEMBERED:
        _remembered.clear()
    _remembered[account_id] = entry


# The local month of an instant in any time zone in use (UTC-12 to UTC+14) is the month
# of that instant in one of these two: at most two months to read before the zone is known.
_EDGE_ZONES = (WESTERNMOST_ZONE, ZoneInfo("Etc/GMT-14"))


def account_usage_current(
    *, account_id: uuid.UUID, period_code: str | None = None, now: datetime | None = None
) -> tuple[Account, Period, list[MetricUsage]] | None:
    """The account with this id, its month ``period_code`` (``YYYY-MM``; the current period
    by default) in its time zone, and ``account_usage`` in it; ``None`` when there is no
    such account, ``ValueError`` for a bad code (once the account is known to exist).

    One statement: the account with the usage of each month its period may be before its
    time zone is read (the current month in any zone is one of two, ``_EDGE_ZONES``);
    the one of its zone is kept.
    """
    now = now or timezone.now()
    if period_code is None:
        candidates = {period_containing(now, zone).code: None for zone in _EDGE_ZONES}
    else:
        try:
            period_from_code(period_code, UTC)
        except ValueError:
            if not Account.objects.filter(pk=account_id).exists():
                return None
            raise
        candidates = {period_code: None}
    annotations = _usage_annotations(account_id, tuple(candidates), connection.vendor)
    account = account_with_columns(account_id=account_id, columns=annotations)
    if account is None:
        return None
    rows = {
        code: json.loads(account.__dict__.pop(f"usage_rows_{number}") or "[]")
        for number, code in enumerate(candidates)
    }
    zone = account.zone
    if period_code is None:
        period = period_containing(now, zone)
    else:
        period = period_from_code(period_code, zone)
    if period.code in rows:
        found = _usage_parse(rows[period.code], {account_id: period})
    else:  # a time zone beyond those in use today
        found = _usage_rows(set(itertools.product([account_id], METRICS)), {account_id: period})
    usage = [
        MetricUsage(
            account_id=account_id,
            metric=metric,
            used_milli=found[(account_id, metric)][0],
            warning=found[(account_id, metric)][2],
            blocked=found[(account_id, metric)][3],
            extension=found[(account_id, metric)][1],
        )
        for metric in METRICS
    ]
    return account, period, usage


@functools.lru_cache(maxsize=1024)
def _usage_annotations(
    account_id: uuid.UUID, codes: tuple[str, ...], vendor: str
) -> dict[str, tuple[str, tuple[Any, ...]]]:
    """The columns of ``account_usage_current`` reading the account's usage in each month
    of ``codes``: the same for every read of the month, so made once per process (and
    never changed by a caller)."""
    annotations = {}
    for number, code in enumerate(codes):
        sql, params = _usage_statement(
            set(itertools.product([account_id], METRICS)),
            {account_id: period_from_code(code, UTC)},
        )
        sql, params = _as_json_rows(sql, params, 6)
        annotations[f"usage_rows_{number}"] = (sql, tuple(params))
    return annotations


def account_lines_current(
    *,
    account_id: uuid.UUID,
    metric: str | None = None,
    labels: Mapping[str, str] | None = None,
    now: datetime | None = None,
    reservations: bool = True,
    columns: Mapping[str, tuple[str, list[Any]]] | None = None,
) -> tuple[Account, list[LineUsage]] | None:
    """The account with this id and ``account_lines_with_reservations`` of it (without the
    reservations unless ``reservations``); ``None`` when there is no such account. One
    statement, or two when the account's time zone, plan or lines changed since this
    process last read them (see above). ``columns`` are read with the account, in the
    same statement, as ``account_with_columns`` reads them: the writers that call this
    after taking the usage locks read what they need in the same snapshot."""
    now = now or timezone.now()
    annotations = {**account_lines_annotations(), **(columns or {})}
    remembered = _remembered.get(account_id)
    guess: _Kept | None = None
    if remembered is not None:
        guess = _guess(remembered, metric=metric, labels=labels, now=now)
        if guess.lines:
            sql, params = _lines_statement(
                account_id=account_id,
                zone=remembered.zone,
                lines=guess.lines,
                windows=guess.windows,
                now=now,
                monthly_extensions=True,
                reservations=reservations,
                wanted=guess.wanted,
            )
            annotations["lines_figures"] = _as_json_rows(sql, params, 5)
    account = account_with_columns(account_id=account_id, columns=annotations)
    if account is None:
        _remembered.pop(account_id, None)
        return None
    rows = json.loads(account.__dict__.pop("lines_figures", None) or "[]")
    read = (account.lines_monthly, account.lines_scoped)
    # The monthly lines' thresholds are in force on Enterprise only: the same text on
    # another plan is other lines.
    if remembered is not None and read == remembered.read and account.plan == remembered.plan:
        del account.lines_monthly, account.lines_scoped
        lines = remembered.lines
    else:
        lines = tuple(account_lines_of(account))
    if (
        remembered is not None
        and guess is not None
        and (account.timezone, account.plan) == (remembered.timezone, remembered.plan)
        and (lines is remembered.lines or lines == remembered.lines)
    ):
        remembered.read = read  # the same lines, as this text spells them
        figures, reserved = _lines_parse(rows, guess.lines)
        return account, _lines_built(account, guess.lines, guess.windows, figures, reserved)
    _remember(
        account.pk,
        _Remembered(timezone=account.timezone, plan=account.plan, lines=lines, read=read),
    )
    return account, _lines_usage(
        account=account,
        lines=lines,
        metric=metric,
        labels=labels,
        now=now,
        reservations=reservations,
    )


# --- Lines known since the last change (capacities, the pre-flight, the usage read) ---
#
# A process remembers the lines it read for an account, tagged with the account's
# generation in the shared cache (``accounts.generations``), until the first of: another
# generation (a change committed anywhere), the end of the shortest window of a line or of
# the first reservation to expire, ``LINES_MEMORY_SECONDS``. A read of an account that
# nothing changed since makes no statement; its generation comes with the token's
# (``config.authentication``).


@dataclass(frozen=True)
class KnownLines:
    """``account_lines_current`` of an account, all its lines with their reservations, and
    a place for a view to keep what it made of them while they hold."""

    account: Account
    lines: list[LineUsage]
    generation: int | None
    # The instant the figures stop holding (a window ends, a reservation expires) and the
    # ``time.monotonic()`` past which they are read again whatever happened.
    valid_until: datetime
    forget_at: float
    made: dict[Any, Any] = field(default_factory=dict, compare=False)

    def applying(self, *, metric: str, labels: Mapping[str, str]) -> list[LineUsage]:
        """The lines of ``metric`` that apply to usage carrying ``labels`` (SPEC 11.4)."""
        return [line for line in self.lines if line_counts(line.line, metric, labels)]


_known: dict[uuid.UUID, KnownLines] = {}


def account_lines_known(
    *, account_id: uuid.UUID, now: datetime | None = None, found: Any = UNREAD
) -> KnownLines | None:
    """The account's lines as ``account_lines_current`` reads them (every metric, with
    reservations), from this process's memory while nothing changed (see above); ``None``
    when there is no such account. ``found``: the value of the account's ``generation_key``
    if the caller read it (``account_generation``)."""
    now = now or timezone.now()
    generation = account_generation(account_id, found=found)
    if generation is not None:
        known = _known.get(account_id)
        if (
            known is not None
            and known.generation == generation
            and now < known.valid_until
            and time.monotonic() < known.forget_at
        ):
            return known
    read = account_lines_current(account_id=account_id, now=now)
    if read is None:
        _known.pop(account_id, None)
        return None
    account, lines = read
    if generation is None:  # nothing remembered
        return KnownLines(account, lines, None, valid_until=now, forget_at=0.0)
    valid_until = min((line.window.end for line in lines), default=now)
    if any(line.reserved_milli for line in lines):
        first_expiry = reservations_active(account=account, now=now).aggregate(
            first=Min("expires_at")
        )["first"]
        if first_expiry is not None:
            valid_until = min(valid_until, first_expiry)
    known = KnownLines(
        account=account,
        lines=lines,
        generation=generation,
        valid_until=valid_until,
        forget_at=time.monotonic() + settings.LINES_MEMORY_SECONDS,
    )
    if len(_known) >= MAX_REMEMBERED:
        _known.clear()
    _known[account_id] = known
    return known


def account_usage_read(
    *,
    account_id: uuid.UUID,
    period_code: str | None = None,
    now: datetime | None = None,
    found: Any = UNREAD,
) -> tuple[Account, Period, list[MetricUsage], dict[Any, Any]] | None:
    """``account_usage_current``, and a place for the view to keep what it made of it while
    it holds (``KnownLines.made``; a new one each time when not remembered). The current
    period, with a shared cache, comes from ``account_lines_known``: the usage of each
    whole-metric monthly line (reservations are not usage, SPEC 12.1), in the order of
    ``METRICS``. ``None`` when there is no such account; ``ValueError`` for a bad code.
    Without a generation (no shared cache, or it did not answer), one statement.
    ``found``: as ``account_lines_known``'s."""
    now = now or timezone.now()
    generation = None if period_code is not None else account_generation(account_id, found=found)
    if generation is not None:
        known = account_lines_known(account_id=account_id, now=now, found=generation)
        if known is None:
            return None
        account = known.account
        usage = [line.usage for line in known.lines if line.is_whole_metric_month]
        return account, period_containing(now, account.zone), usage, known.made
    read = account_usage_current(account_id=account_id, period_code=period_code, now=now)
    return None if read is None else (*read, {})


def _guess(
    remembered: _Remembered,
    *,
    metric: str | None,
    labels: Mapping[str, str] | None,
    now: datetime,
) -> _Kept:
    """The remembered lines of ``metric`` that apply to ``labels``, their windows at
    ``now`` and their statement's ``wanted`` parameter, made again only when a window has
    moved on. Entries are replaced, never changed: a thread holds its own."""
    key = (metric, None if labels is None else labels_key(labels))
    kept = remembered.kept.get(key)
    zone = remembered.zone
    if kept is None:
        account = Account(timezone=remembered.timezone, plan=remembered.plan)
        lines, windows = _lines_kept(
            account=account, lines=remembered.lines, metric=metric, labels=labels, now=now
        )
    else:
        lines = kept.lines
        windows = [line_window(line=line, zone=zone, now=now) for line in lines]
        if all(a is b for a, b in zip(windows, kept.windows, strict=True)):
            return kept
    wanted = _lines_wanted(zone=zone, lines=lines, windows=windows, monthly_extensions=True)
    if len(remembered.kept) >= MAX_KEPT:
        remembered.kept.clear()
    kept = remembered.kept[key] = _Kept(lines=lines, windows=windows, wanted=wanted)
    return kept


def counted_keys_column(*, metric: str) -> tuple[str, list[Any]]:
    """A column for ``account_lines_current``: the label keys counted for the account's
    ``metric`` (``UsageCounterKey``), read by ``counted_keys_of``."""
    table = UsageCounterKey._meta.db_table
    aggregate = {
        "postgresql": "json_agg(k.labels)::text",
        "sqlite": "json_group_array(k.labels)",
    }[connection.vendor]
    sql = (
        f"(SELECT {aggregate} FROM {table} k"
        f" WHERE k.account_id = {Account._meta.db_table}.id AND k.metric = %s)"
    )
    return sql, [metric]


def counted_keys_of(text: str | None) -> tuple[str, ...]:
    """The keys ``counted_keys_column`` read, sorted (as ``usage.services.counted_keys``)."""
    return tuple(sorted(json.loads(text or "[]")))


def line_with_event(line: LineUsage, *, occurred_at: datetime, quantity_milli: int) -> LineUsage:
    """``line`` with one more event of its metric and labels: it counts when it occurred in
    the line's current window, as the counters (or, for a minute, the events) that the line
    reads say."""
    if not line.window.start <= occurred_at < line.window.end:
        return line
    usage = dataclasses.replace(line.usage, used_milli=line.usage.used_milli + quantity_milli)
    return dataclasses.replace(line, usage=usage)


# The scoped limits with a threshold of some accounts, in each account's order (the model's
# ``ordering``), their labels as their canonical key. Ids travel as an array on
# PostgreSQL, as a JSON text of their hex digits (as SQLite keeps them) on SQLite.
_SCOPED_LINES_SQL = {
    vendor: f"SELECT account_id, id, metric, period, window_days, labels_key, warning, blocked"
    f" FROM {ScopedLimit._meta.db_table} WHERE account_id IN ({accounts})"
    " AND (warning IS NOT NULL OR blocked IS NOT NULL) ORDER BY account_id, position, id"
    for vendor, accounts in _MINUTE_ACCOUNTS.items()
}


def accounts_scoped_lines_usage(
    *,
    accounts: Iterable[Account],
    now: datetime,
    keep: Callable[[Account, LimitLine], bool] | None = None,
) -> dict[Account, list[LineUsage]]:
    """The scoped lines of ``accounts`` with a threshold (those that can stand past one),
    each over its current window, in each account's order; ``keep`` narrows them.

    Two statements whatever the number of accounts and lines (the scoped limits, then
    ``accounts_lines_figures``): recording a batch of many accounts reads them all at once.
    """
    by_id = {account.pk: account for account in accounts}
    if not by_id:
        return {}
    vendor = connection.vendor
    ids = sorted(by_id)
    with bound_cursor() as cursor:
        cursor.execute(
            _SCOPED_LINES_SQL[vendor],
            [ids if vendor == "postgresql" else json.dumps([i.hex for i in ids])],
        )
        rows = cursor.fetchall()
    # A batch reads hundreds of lines that spell few label sets: each set parsed once.
    labels_of: dict[str, dict[str, str]] = {}
    items: list[tuple[Account, LimitLine]] = []
    for account_id, pk, metric, period, window_days, key, warning, blocked in rows:
        account = by_id[account_id if vendor == "postgresql" else uuid.UUID(account_id)]
        labels = labels_of.get(key)
        if labels is None:
            labels = labels_of[key] = labels_from_key(key)
        line = LimitLine(
            metric=metric,
            period=PeriodKind(period),
            window_days=window_days,
            labels=dict(labels),
            warning=warning,
            blocked=blocked,
            scoped_limit_id=pk,
        )
        if keep is None or keep(account, line):
            items.append((account, line))
    windows = _lines_windows(items, now)
    figures = accounts_lines_figures(items=items, now=now, windows=windows)
    found: dict[Account, list[LineUsage]] = {}
    for (account, line), figure, window in zip(items, figures, windows, strict=True):
        in_force = account.is_enterprise
        usage = MetricUsage(
            account_id=account.pk,
            metric=line.metric,
            used_milli=figure.used_milli,
            warning=line.warning if in_force else None,
            blocked=line.blocked if in_force else None,
            extension=figure.extension,
        )
        found.setdefault(account, []).append(LineUsage(line=line, window=window, usage=usage))
    return found


def line_period_data(line: LineUsage, account: Account) -> dict[str, object]:
    """The ``current_period`` object of SPEC 11.3: kind, days, start and end, local offsets."""
    window = line.window
    if window.zone.key == account.timezone:
        start, end = window.local_start_text, window.local_end_text
    else:
        zone = account.zone
        start, end = (
            window.start.astimezone(zone).isoformat(),
            window.end.astimezone(zone).isoformat(),
        )
    return {
        "period": line.line.period,
        "window_days": line.line.window_days,
        "start_time": start,
        "end_time": end,
    }


# --- Usage of each limit line over its current window, step by step (the account page) ---
#
# A line is charted over its current window, cumulative, one step per local day for the
# lines whose window is made of days (``month``, ``week``, ``rolling``) and one step per
# local hour for ``day`` lines, whose window is a single day. An ``hour`` or ``minute`` line
# is too short for a useful curve: it has no steps and shows its current figure alone.

_STEP_KINDS = {
    PeriodKind.MONTH: PeriodKind.DAY,
    PeriodKind.WEEK: PeriodKind.DAY,
    PeriodKind.ROLLING: PeriodKind.DAY,
    PeriodKind.DAY: PeriodKind.HOUR,
}


@dataclass(frozen=True)
class LineSteps:
    """One limit line over its current window, step by step.

    ``steps`` tile the window (local days or hours, see above; empty for a line shown as
    its current figure); ``used`` holds, for each step up to the one containing now, what
    the line had used from the window's start to that step's end, in thousandths.
    """

    line_usage: LineUsage
    step_kind: PeriodKind | None
    steps: tuple[Window, ...]
    used: tuple[int, ...]


def _lines_filter(keys: set[tuple[str, str]]) -> Q:
    """Counters of any of the (metric, labels key) pairs ``keys`` (not empty)."""
    return functools.reduce(
        operator.or_, (Q(metric=metric, labels=key) for metric, key in sorted(keys))
    )


def account_lines_steps(*, account: Account, now: datetime | None = None) -> list[LineSteps]:
    """Every limit line of ``account`` (``account_lines_usage``) with its usage per step.

    At most four queries whatever the number of lines, days or events: the lines and their
    figures (``account_lines_usage``, two), then the day counters of every line charted
    per day, and the hour counters of every ``day`` line (one query each).
    """
    now = now or timezone.now()
    zone = account.zone
    lines = account_lines_usage(account=account, now=now)
    steps: list[tuple[Window, ...]] = []
    for line in lines:
        kind = _STEP_KINDS.get(line.window.kind)
        steps.append(() if kind is None else tuple(cover(line.window, kind=kind)))
    by_day: dict[tuple[str, str, date], int] = {}
    by_hour: dict[tuple[str, str, datetime], int] = {}
    for step_kind, found in ((PeriodKind.DAY, by_day), (PeriodKind.HOUR, by_hour)):
        charted = [
            (line, line_steps)
            for line, line_steps in zip(lines, steps, strict=True)
            if line_steps and line_steps[0].kind == step_kind
        ]
        if not charted:
            continue
        keys = {(line.line.metric, labels_key(line.line.labels)) for line, _steps in charted}
        start = min(line.window.start for line, _steps in charted)
        end = max(line.window.end for line, _steps in charted)
        if step_kind == PeriodKind.DAY:
            rows = UsageCounter.objects.filter(
                account=account,
                day__gte=start.astimezone(zone).date(),
                day__lt=end.astimezone(zone).date(),
            )
            field = "day"
        else:
            rows = UsageHourCounter.objects.filter(account=account, hour__gte=start, hour__lt=end)
            field = "hour"
        for metric, key, when, quantity in rows.filter(_lines_filter(keys)).values_list(
            "metric", "labels", field, "quantity_milli"
        ):
            found[(metric, key, when)] = quantity
    result = []
    for line, line_steps in zip(lines, steps, strict=True):
        key = labels_key(line.line.labels)
        used: list[int] = []
        total = 0
        for step in line_steps:
            if step.start > now:
                break
            if step.kind == PeriodKind.DAY:
                total += by_day.get((line.line.metric, key, step.local_start.date()), 0)
            else:
                total += by_hour.get((line.line.metric, key, step.start), 0)
            used.append(total)
        result.append(
            LineSteps(
                line_usage=line,
                step_kind=line_steps[0].kind if line_steps else None,
                steps=line_steps,
                used=tuple(used),
            )
        )
    return result


# A choice of an extension's line: the metric's code for its whole-metric monthly line; for a
# scoped one, this prefix, the scoped limit's id, ``@`` and the start of the line's period
# when the choice was offered (``line_period_start``, ISO 8601), so that a page shown before
# the line's period moved on (an hour line at 15:59) cannot extend the next period.
SCOPED_LINE_CHOICE = "line:"
CHOICE_PERIOD_SEPARATOR = "@"


def extension_line_choices(
    *, account: Account, now: datetime | None = None
) -> list[tuple[str, str]]:
    """The lines an extension may be granted on, by their words, in the order of
    ``limit_lines``, valued as ``SCOPED_LINE_CHOICE`` says. One query."""
    now = now or timezone.now()
    choices = [(metric, monthly_line_text(metric)) for metric in METRICS]
    for row in ScopedLimit.objects.filter(account=account).order_by("position", "id"):
        start = line_period_start(line_window(line=row, zone=account.zone, now=now))
        value = f"{SCOPED_LINE_CHOICE}{row.pk}{CHOICE_PERIOD_SEPARATOR}{start.isoformat()}"
        choices.append((value, row.line_text()))
    return choices


# --- Reservations (SPEC 12.1) ---
#
# A reservation holds capacity on every line its metric and labels apply to, exactly as an
# event with those labels would count on them, while it is active: its status says so and
# ``expires_at`` lies after the moment read. Comparing with the moment in the read itself
# is what makes an expired reservation stop counting without any task having run.


def reservations_active(*, account: Account, now: datetime) -> QuerySet[Reservation]:
    """The reservations of ``account`` that hold capacity at ``now``."""
    return Reservation.objects.filter(
        account=account, status=Reservation.Status.ACTIVE, expires_at__gt=now
    )


def lines_reserved_milli(*, account: Account, lines: Sequence[Line], now: datetime) -> list[int]:
    """What active reservations hold on each line, in thousandths, in order; one query."""
    if not lines:
        return []
    held = (
        reservations_active(account=account, now=now)
        .filter(metric__in={line.metric for line in lines})
        .values_list("metric", "labels_key")
        .annotate(total=Sum("quantity_milli"))
        .order_by()
    )
    groups = [(metric, labels_from_key(key), int(total)) for metric, key, total in held]
    return [_matching(groups, line) for line in lines]


def account_lines_with_reservations(
    *,
    account: Account,
    metric: str | None = None,
    labels: Mapping[str, str] | None = None,
    now: datetime | None = None,
) -> list[LineUsage]:
    """``account_lines_usage``, each line with what active reservations hold on it at
    ``now``: the lines that ``check``, ``capacities`` and reservations answer with. Two
    queries: the lines, then their figures and the reservations together."""
    found = account_with_lines(account_id=account.pk)
    lines = [] if found is None else found[1]
    return _lines_usage(
        account=account, lines=lines, metric=metric, labels=labels, now=now, reservations=True
    )


def reservation_get(*, account: Account, reservation_id: str) -> Reservation | None:
    """The reservation ``reservation_id`` of ``account``, whatever its status; ``None``."""
    return Reservation.objects.filter(account=account, reservation_id=reservation_id).first()
