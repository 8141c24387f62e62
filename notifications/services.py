"""Threshold crossings to notifications, and notifications to e-mails (SPEC section 6).

``crossings_record`` runs inside the transaction that changed usage or limits: it inserts
one ledger row per threshold reached (``ON CONFLICT DO NOTHING``, so concurrent writers
create exactly one) with a delivery per recipient, and enqueues the sending task once
that transaction commits. ``notification_deliver`` is what the task runs: it claims each
delivery with a conditional update and sends it under a lease its worker renews, so two
workers never send the same message, and a dead worker's deliveries are sent again.
"""

from __future__ import annotations

import logging
import smtplib
import threading
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from anymail.exceptions import AnymailError, AnymailRequestsAPIError
from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import DatabaseError, connection, transaction
from django.db.models import F, Max, Q, QuerySet
from django.utils import timezone
from django.utils.translation import gettext_lazy as _
from kombu.exceptions import OperationalError

from accounts.labels import labels_key, labels_match
from accounts.metrics import METRICS
from accounts.models import (
    Account,
    Language,
    Level,
    Plan,
    Recipient,
    validate_recipient_email,
)
from accounts.selectors import LimitLine
from accounts.windows import PeriodKind, window_containing, window_from_key
from config.request_ids import current_correlation_id, current_request_id
from usage.locks import usage_lock
from usage.models import MILLI, UsageCounter
from usage.periods import Period, period_containing
from usage.selectors import (
    LineUsage,
    MetricUsage,
    Status,
    accounts_scoped_lines_usage,
    usage_for,
    usage_received_before,
)

from .emails import threshold_message
from .forecasts import Forecast, forecasts_insert, forecasts_of
from .hooks import webhook_deliveries_create, webhook_deliveries_recover, webhook_deliveries_send
from .models import SUB_DAY_KINDS, Delivery, EarlyTrackingEvent, Notification, WebhookDelivery
from .outbox import publish_later
from .selectors import sweep_read

logger = logging.getLogger(__name__)

NOTIFICATION_TABLE = Notification._meta.db_table
# The namespace of the advisory locks taken on the provider's message ids (any constant).
_MESSAGE_ID_LOCKS = 0x55534D47


MONTH = PeriodKind.MONTH.value


@dataclass(frozen=True)
class Crossing:
    """A threshold of one limit line reached in one period (SPEC 6 and 11.5).

    The line is ``(account, metric, period_kind, window_days, labels_key)``; ``period`` is
    the local day its period starts and ``period_start`` that instant (see ``Notification``).
    """

    account_id: uuid.UUID
    metric: str
    level: str
    period: date
    period_start: datetime
    threshold: int
    used_milli: int
    period_kind: str = MONTH
    window_days: int | None = None
    labels_key: str = ""

    @property
    def key(self) -> tuple[str, str, str, int, str, str, str, int]:
        """What the ledger keeps once: the line, the level, the period and the threshold."""
        return (
            self.account_id.hex,
            self.metric,
            self.period_kind,
            self.window_days or 0,
            self.labels_key,
            self.level,
            self.period.isoformat(),
            self.threshold,
        )

    @property
    def is_sub_day(self) -> bool:
        return self.period_kind in SUB_DAY_KINDS


def _reached(usage: MetricUsage) -> list[tuple[str, int]]:
    """``(level, threshold)`` of each threshold ``usage`` has reached (an exact hit included)."""
    thresholds = {Status.WARNING: usage.warning, Status.BLOCKED: usage.effective_blocked}
    return [
        (level, threshold)
        for level, threshold in thresholds.items()
        if threshold is not None and usage.reaches(threshold)
    ]


def reaches_more(*, before: MetricUsage, after: MetricUsage) -> bool:
    """Whether ``after`` reaches a threshold that ``before``, the same line's usage before
    a write under the usage lock, did not: only then can the write have made a crossing.

    A threshold reached already was recorded when it was reached, in the transaction that
    reached it (a write, a change of limits, a return to Enterprise); what reaches one
    without a write of usage (a change of time zone, a repair of counters) is the sweep's.
    """
    return _reached(after) != _reached(before)


def _day_start(day: date, zone: ZoneInfo) -> datetime:
    """The first instant of the local ``day`` (its noon lies in it, whatever DST does)."""
    noon = datetime.combine(day, time(12), tzinfo=zone)
    return window_containing(kind=PeriodKind.DAY, instant=noon, zone=zone).start


def crossings_of(usage: MetricUsage, period: Period) -> list[Crossing]:
    """The thresholds ``usage`` of a whole-metric monthly line has reached in ``period``."""
    start = window_from_key(kind=MONTH, key=period.code, zone=period.zone).start
    return [
        Crossing(
            usage.account_id,
            usage.metric,
            level,
            period.first_day,
            start,
            threshold,
            usage.used_milli,
        )
        for level, threshold in _reached(usage)
    ]


@dataclass(frozen=True)
class RollingRun:
    """A rolling line of ``days`` days (of ``account_id``, ``metric``, ``labels_key``) whose
    window has reached ``threshold`` at ``level`` on the local day ``today``: whose period
    start ``rolling_period_starts`` finds."""

    account_id: uuid.UUID
    metric: str
    labels_key: str
    days: int
    level: str
    threshold: int
    today: date

    @property
    def line(self) -> tuple[uuid.UUID, str, int, str, str, int]:
        return (
            self.account_id,
            self.metric,
            self.days,
            self.labels_key,
            self.level,
            self.threshold,
        )


def rolling_period_start(
    *,
    account_id: uuid.UUID,
    metric: str,
    labels_key: str,
    days: int,
    level: str,
    threshold: int,
    today: date,
) -> date:
    """The "period start" of one rolling line (``rolling_period_starts``)."""
    run = RollingRun(account_id, metric, labels_key, days, level, threshold, today)
    return rolling_period_starts([run])[run]


def rolling_period_starts(runs: Iterable[RollingRun]) -> dict[RollingRun, date]:
    """The "period start" of each rolling line of ``runs`` whose window has reached its
    threshold today (a local day): the first local day of the run of days, ending today,
    whose windows all ended at or above the threshold (SPEC 11.5).

    A day's window "ended" at the next local midnight: the sum of the line's day counters
    (its label subset) over that day and the ``days`` - 1 before it. So the line notifies
    on the day its window reaches the threshold, sends nothing more while the window stays
    at or above it, and re-arms only after a local day whose window ended below it: the
    next crossing then starts a new run, hence a new period start. Late events change past
    days' counters, and the rule reads the counters as they are now.

    The walk back of each line reads at most 2 x ``days`` day counters: it stops at the
    last crossing of the same line, level and threshold in the ledger (the run already
    notified), or ``days`` days back, where a run with no earlier notification is taken to
    start. Two queries whatever the number of lines (their latest crossings, then their
    counters), a third only for a line whose latest crossing lies after its ``today``.
    """
    runs = list(dict.fromkeys(runs))
    if not runs:
        return {}
    accounts = {run.account_id for run in runs}
    latest = {
        (account_id, metric, days, labels, level, threshold): day
        for account_id, metric, days, labels, level, threshold, day in Notification.objects.filter(
            account_id__in=accounts,
            period_kind=PeriodKind.ROLLING,
            is_test=False,
            level__in={run.level for run in runs},
            metric__in={run.metric for run in runs},
            period__lte=max(run.today for run in runs),
        )
        .values("account_id", "metric", "window_days", "labels_key", "level", "threshold")
        .annotate(latest=Max("period"))
        .values_list(
            "account_id", "metric", "window_days", "labels_key", "level", "threshold", "latest"
        )
    }
    earlier: dict[RollingRun, date | None] = {}
    for run in runs:
        day = latest.get(run.line)
        if day is not None and day > run.today:  # a crossing dated after this run's today
            day = _latest_crossing(run)
        earlier[run] = day
    firsts = {run: _rolling_floor(run, earlier[run]) - timedelta(days=run.days - 1) for run in runs}
    totals: dict[tuple[uuid.UUID, str, str], dict[date, int]] = {}
    for account_id, metric, labels, day, quantity in UsageCounter.objects.filter(
        account_id__in=accounts,
        metric__in={run.metric for run in runs},
        labels__in={run.labels_key for run in runs},
        day__gte=min(firsts.values()),
        day__lt=max(run.today for run in runs),
    ).values_list("account_id", "metric", "labels", "day", "quantity_milli"):
        totals.setdefault((account_id, metric, labels), {})[day] = quantity
    return {
        run: _rolling_start(
            run, earlier[run], totals.get((run.account_id, run.metric, run.labels_key), {})
        )
        for run in runs
    }


def _latest_crossing(run: RollingRun) -> date | None:
    """The period of the latest crossing of ``run``'s line, level and threshold up to its
    ``today``."""
    return (
        Notification.objects.filter(
            account_id=run.account_id,
            metric=run.metric,
            period_kind=PeriodKind.ROLLING,
            window_days=run.days,
            labels_key=run.labels_key,
            level=run.level,
            threshold=run.threshold,
            is_test=False,
            period__lte=run.today,
        )
        .order_by("-period")
        .values_list("period", flat=True)
        .first()
    )


def _rolling_floor(run: RollingRun, earlier: date | None) -> date:
    """How far back the walk of ``run`` goes: its latest crossing, or ``days`` days back."""
    floor = run.today - timedelta(days=run.days)
    return earlier if earlier is not None and earlier > floor else floor


def _rolling_start(run: RollingRun, earlier: date | None, totals: Mapping[date, int]) -> date:
    """``rolling_period_starts`` of one line, from its latest crossing and its day counters
    (those of other days than its walk's are ignored)."""
    days, today = run.days, run.today
    floor = _rolling_floor(run, earlier)
    first = floor - timedelta(days=days - 1)

    def total(day: date) -> int:
        return totals.get(day, 0) if first <= day < today else 0

    # ``ended[d]``: the window of day ``d`` at its end (the days from d - days + 1 to d).
    window = sum(total(floor - timedelta(days=k)) for k in range(days))
    ended = {}
    day = floor
    while day < today:
        ended[day] = window
        day += timedelta(days=1)
        window += total(day) - total(day - timedelta(days=days))
    line = MetricUsage(run.account_id, run.metric, 0, run.threshold, None, 0)
    start = today
    while start > floor:
        previous = start - timedelta(days=1)
        if not replace(line, used_milli=ended[previous]).reaches(run.threshold):
            return start
        start = previous
    return earlier if earlier is not None else floor


def lines_crossings(lines: Mapping[Account, Iterable[LineUsage]]) -> list[Crossing]:
    """The thresholds the ``lines`` of each account (over their current windows) have
    reached.

    A rolling line's period starts on the day its window reached the threshold
    (``rolling_period_starts``, for every such line at once); any other line's period is
    its current window.
    """
    reached = [
        (account, line_usage, level, threshold)
        for account, account_lines in lines.items()
        for line_usage in account_lines
        for level, threshold in _reached(line_usage.usage)
    ]
    runs = {
        (id(line_usage), level): RollingRun(
            account_id=account.pk,
            metric=line_usage.line.metric,
            labels_key=labels_key(line_usage.line.labels),
            days=line_usage.line.window_days or 0,
            level=level,
            threshold=threshold,
            today=line_usage.window.last_day.local_start.date(),
        )
        for account, line_usage, level, threshold in reached
        if line_usage.line.period == PeriodKind.ROLLING
    }
    starts = rolling_period_starts(runs.values())
    found = []
    for account, line_usage, level, threshold in reached:
        line, window, usage = line_usage.line, line_usage.window, line_usage.usage
        if line.period == PeriodKind.ROLLING:
            day = starts[runs[(id(line_usage), level)]]
            start = _day_start(day, account.zone)
        else:
            day, start = window.local_start.date(), window.start
        found.append(
            Crossing(
                account_id=account.pk,
                metric=line.metric,
                level=level,
                period=day,
                period_start=start,
                threshold=threshold,
                used_milli=usage.used_milli,
                period_kind=PeriodKind(line.period).value,
                window_days=line.window_days,
                labels_key=labels_key(line.labels),
            )
        )
    return found


_INSERT_COLUMNS = (
    "account_id, metric, period_kind, window_days, labels_key, level, period, period_start,"
    " threshold, used_milli, created_at, is_test, recorded_only, request_id, correlation_id"
)


def _insert_notifications(
    crossings: list[Crossing], now: datetime, *, recorded_only: bool = False
) -> list[tuple[int, Crossing]]:
    """Insert the crossings not yet in the ledger; returns ``(id, crossing)`` of new ones.

    ``ON CONFLICT DO NOTHING`` names no index, so that both unique constraints of
    ``Notification`` arbitrate: a crossing already recorded, and (unless ``recorded_only``)
    an e-mail of the same hour or minute line, level and local day, insert nothing. Each row
    carries the current request and correlation ids (``config.request_ids``).
    """
    if not crossings:
        return []
    adapt_dt = connection.ops.adapt_datetimefield_value
    request_id, correlation_id = current_request_id(), current_correlation_id()
    placeholders = ", ".join(["(" + ", ".join(["%s"] * 15) + ")"] * len(crossings))
    params: list[object] = []
    for c in crossings:
        account = c.account_id if connection.vendor == "postgresql" else c.account_id.hex
        params += [account, c.metric, c.period_kind, c.window_days, c.labels_key, c.level]
        params += [c.period, adapt_dt(c.period_start), c.threshold, c.used_milli, adapt_dt(now)]
        params += [False, recorded_only, request_id, correlation_id]
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {NOTIFICATION_TABLE} ({_INSERT_COLUMNS}) VALUES {placeholders} "
            "ON CONFLICT DO NOTHING RETURNING id, account_id, metric, period_kind, window_days,"
            " labels_key, level, period, threshold",
            params,
        )
        rows = cursor.fetchall()
    by_key = {c.key: c for c in crossings}
    created = []
    for pk, account, metric, kind, days, labels, level, day, threshold in rows:
        key = (uuid.UUID(str(account)).hex, metric, kind, days or 0, labels, level, str(day))
        created.append((pk, by_key[(*key, threshold)]))
    return created


def crossings_record(
    *,
    usages: Iterable[MetricUsage] = (),
    lines: Mapping[Account, Iterable[LineUsage]] | None = None,
    zones: dict[uuid.UUID, ZoneInfo] | None = None,
    now: datetime | None = None,
) -> list[int]:
    """Record the current-period crossings of ``usages`` (whole-metric monthly lines) and of
    ``lines`` (each account's scoped lines over their current windows); returns the new
    notification ids.

    Call inside the transaction that changed usage or limits, after ``usage_lock``. Only
    the current period notifies: usages of another period must not be passed. Each new
    notification gets a delivery per recipient of its level (none when it is recorded
    only, see ``Notification.recorded_only``), and its sending task is enqueued after
    commit. ``zones`` (account id to time zone) saves a query when the caller has them.
    """
    now = now or timezone.now()
    usages = list(usages)
    crossings: list[Crossing] = []
    if usages:
        if zones is None:
            zones = {
                pk: ZoneInfo(name)
                for pk, name in Account.objects.filter(
                    pk__in={u.account_id for u in usages}
                ).values_list("id", "timezone")
            }
        for usage in usages:
            crossings.extend(crossings_of(usage, period_containing(now, zones[usage.account_id])))
    crossings.extend(lines_crossings(lines or {}))
    return _crossings_insert(crossings, now)


def _crossings_insert(crossings: list[Crossing], now: datetime) -> list[int]:
    """Insert the crossings the ledger lacks, with their deliveries; enqueue after commit.

    An hour or minute line's crossing that finds the day's e-mail of its line and level
    taken is inserted again as recorded only, without deliveries (SPEC 11.5).
    """
    if not crossings:
        return []
    # One row per key, in a stable order (the order in which the index entries are locked).
    crossings = sorted({c.key: c for c in crossings}.values(), key=lambda c: c.key)
    created = _insert_notifications(crossings, now)
    taken = {crossing.key for _pk, crossing in created}
    quiet = [c for c in crossings if c.is_sub_day and c.key not in taken]
    recorded = _insert_notifications(quiet, now, recorded_only=True)
    if not created and not recorded:
        return []
    recipients: dict[tuple[uuid.UUID, str], list[Recipient]] = {}
    if created:
        for recipient in Recipient.objects.filter(
            account_id__in={crossing.account_id for _pk, crossing in created}
        ).order_by("id"):
            recipients.setdefault((recipient.account_id, recipient.level), []).append(recipient)
    Delivery.objects.bulk_create(
        Delivery(notification_id=pk, email=r.email, language=r.language)
        for pk, crossing in created
        for r in recipients.get((crossing.account_id, crossing.level), [])
    )
    webhook_deliveries_create(notification_ids=[pk for pk, _crossing in created])
    for pk, crossing in created + recorded:
        logger.info(
            "notification %s: account %s reached %s %s of %s, %s line%s%s (period %s)%s",
            pk,
            crossing.account_id,
            crossing.level,
            crossing.threshold,
            crossing.metric,
            crossing.period_kind,
            f" of {crossing.window_days} days" if crossing.window_days else "",
            f" [{crossing.labels_key}]" if crossing.labels_key else "",
            crossing.period_start.isoformat(),
            ", recorded only" if (pk, crossing) in recorded else "",
        )
    ids = [pk for pk, _crossing in created]
    if ids:
        transaction.on_commit(lambda: notifications_publish(ids))
    return ids + [pk for pk, _crossing in recorded]


def _closed_period_crossings(periods: dict[uuid.UUID, Period], now: datetime) -> list[Crossing]:
    """Crossings of the period that just closed, reached before it closed, not in the ledger.

    Only during ``NOTIFICATIONS_CLOSED_PERIOD_GRACE`` after each account's period ended.
    Counters include late events, which count but never notify, so a candidate found on
    the counters is measured again on the events received before the period's end.
    """
    grace = timedelta(seconds=settings.NOTIFICATIONS_CLOSED_PERIOD_GRACE)
    closed = {pk: period.previous for pk, period in periods.items() if now < period.start + grace}
    if not closed:
        return []
    reached = [u for u in usage_for(periods=closed).values() if u.status != Status.OK]
    if not reached:
        return []
    recorded = set(
        Notification.objects.filter(
            is_test=False,
            period_kind=MONTH,
            labels_key="",
            account_id__in={u.account_id for u in reached},
            period__in={closed[u.account_id].first_day for u in reached},
        ).values_list("account_id", "metric", "level", "period", "threshold")
    )

    def missing(usage: MetricUsage) -> list[Crossing]:
        return [
            c
            for c in crossings_of(usage, closed[usage.account_id])
            if (c.account_id, c.metric, c.level, c.period, c.threshold) not in recorded
        ]

    found = []
    for usage in sorted(reached, key=lambda u: (u.account_id, u.metric)):
        if not missing(usage):
            continue
        period = closed[usage.account_id]
        at_close = replace(
            usage,
            used_milli=usage_received_before(
                account_id=usage.account_id, metric=usage.metric, period=period, before=period.end
            ),
        )
        found += missing(at_close)
    return found


def notifications_enqueue(notification_ids: Iterable[int]) -> list[int]:
    """Hand each notification to a worker now; returns the ids handed over.

    A broker outage is logged, never raised, and stops the hand-over at once (the others
    would each wait as long): what was not handed over keeps no ``published_at``, and the
    periodic sweep publishes it. On the embedded default (eager tasks) this sends now.
    """
    from .tasks import deliver_notification

    ids = list(notification_ids)
    published: list[int] = []
    for notification_id in ids:
        try:
            deliver_notification.apply_async(args=[notification_id], retry=False)
        except (OperationalError, OSError):  # the broker is down: the sweep will enqueue it
            logger.warning(
                "could not enqueue notifications %s; the sweep will", ids[len(published) :]
            )
            break
        published.append(notification_id)
    if published:
        Notification.objects.filter(pk__in=published).update(published_at=timezone.now())
    return published


def notifications_publish(notification_ids: list[int]) -> None:
    """Hand notifications to the workers without the caller ever waiting for the broker.

    For after-commit callbacks of requests: the ids go to this process's publisher thread
    (``notifications.outbox``). With eager tasks there is no broker: they run now.
    """
    from config.celery_app import app

    if app.conf.task_always_eager:
        notifications_enqueue(notification_ids)
    else:
        publish_later(notification_ids, notifications_enqueue)


# The periods whose current window lies inside the current calendar month of the account.
WITHIN_MONTH = frozenset({PeriodKind.MINUTE, PeriodKind.HOUR, PeriodKind.DAY, PeriodKind.MONTH})


def scoped_lines_reached(
    *,
    accounts: Iterable[Account],
    now: datetime,
    labels: Mapping[tuple[uuid.UUID, str], Iterable[Mapping[str, str]]] | None = None,
    read: Mapping[Account, Iterable[LineUsage]] | None = None,
    month_used: Mapping[tuple[uuid.UUID, str], int] | None = None,
) -> dict[Account, list[LineUsage]]:
    """The scoped lines of ``accounts`` that stand at or past a threshold over their current
    windows (``usage.selectors.accounts_scoped_lines_usage``, extensions included), in two
    queries whatever the number of accounts.

    ``labels`` keeps, per (account id, metric), the lines that apply to one of these label
    sets (those that the events of a request count in); without it, every scoped line.
    ``read``: each account's lines, when the caller has already read them.

    ``month_used``: what each (account id, metric) has used in its current month, in
    thousandths, when the caller has read it (``usage_for``). A line whose window lies
    inside that month (``WITHIN_MONTH``) counts part of it at most, and extensions only
    raise a blocked threshold: below its lowest threshold, the line cannot stand past one,
    so it is not read at all. Recording a batch reads then only the week and rolling lines
    of the accounts that are far from their limits, which most are.
    """

    def keep(account: Account, line: LimitLine) -> bool:
        if month_used is not None and line.period in WITHIN_MONTH:
            used = month_used.get((account.pk, line.metric))
            thresholds = [t for t in (line.warning, line.blocked) if t is not None]
            if used is not None and (not thresholds or used < min(thresholds) * MILLI):
                return False
        return labels is None or any(
            labels_match(line=line.labels, event=event)
            for event in labels.get((account.pk, line.metric), ())
        )

    found = {}
    lines = (
        read
        if read is not None
        else accounts_scoped_lines_usage(accounts=accounts, now=now, keep=keep)
    )
    for account, line_usages in lines.items():
        reached = [
            line
            for line in line_usages
            if not line.is_whole_metric_month
            and line.usage.status != Status.OK
            and keep(account, line.line)
        ]
        if reached:
            found[account] = reached
    return found


def thresholds_evaluate(
    *,
    account_ids: Iterable[uuid.UUID] | None = None,
    now: datetime | None = None,
    after_limit_change: bool = False,
) -> list[int]:
    """Record every crossing not yet notified; returns the ids of the notifications created.

    Every line is looked at over its current window, in a few queries whatever the number
    of accounts (``notifications.selectors.sweep_read``): the database sums every line's
    counters and hands back only the lines past a threshold whose crossing the ledger
    lacks (rolling lines past a threshold, whose period start is found after), and, for
    the sweep and ``evaluate_thresholds``, the ``month`` and ``week`` lines that may be due
    a forecast (SPEC 12.3). These also look at the whole-metric month that just closed,
    during ``NOTIFICATIONS_CLOSED_PERIOD_GRACE`` (a crossing reached before the end whose
    recording was lost); scoped lines whose window closed are not looked at again (see
    ``docs/how-it-works.md``). ``after_limit_change``: called inside the transaction that
    changed limits or extensions; takes the usage locks first, so that usage recorded
    concurrently is seen, and looks at the current windows only. Then, in the same
    transaction, the blocked lines no longer blocked get their restored notice
    (``notifications.restored``, SPEC 12.2).
    """
    from .restored import restored_notices_record  # it builds on this module

    now = now or timezone.now()
    ids = None if account_ids is None else list(account_ids)
    # Only Enterprise accounts are limited: others keep their limits, inactive.
    accounts = Account.objects.filter(is_active=True, plan=Plan.ENTERPRISE)
    if ids is not None:
        accounts = accounts.filter(pk__in=ids)
    with transaction.atomic():
        if after_limit_change:
            locked = sorted(accounts.values_list("pk", flat=True))
            usage_lock(pairs=[(pk, metric) for pk in locked for metric in METRICS])
        read = sweep_read(account_ids=ids, now=now)
        reached = [u for u in read.usages if u.status != Status.OK]
        lines = scoped_lines_reached(accounts=read.lines, now=now, read=read.lines)
        zones = {pk: period.zone for pk, period in read.periods.items()}
        created = crossings_record(usages=reached, lines=lines, now=now, zones=zones)
        if not after_limit_change:
            # From the figures just read: a forecast costs the sweep no query per account.
            created += forecasts_record(
                forecasts=forecasts_of(
                    usages=read.usages, periods=read.periods, lines=read.lines, now=now
                ),
                now=now,
            )
            created += closed_crossings_record(accounts=accounts, zones=read.zones, now=now)
        # Blocked lines no longer blocked, after the crossings (SPEC 12.2).
        created += restored_notices_record(accounts=accounts, now=now)
    return created


def closed_crossings_record(
    *, accounts: QuerySet[Account], zones: Iterable[str], now: datetime
) -> list[int]:
    """Record the crossings of the whole-metric month that just closed, for the accounts
    with limits whose period started less than ``NOTIFICATIONS_CLOSED_PERIOD_GRACE`` ago
    (``_closed_period_crossings``); returns the new notification ids. No query unless one
    of ``zones`` (those of ``accounts``) is in that first hour."""
    grace = timedelta(seconds=settings.NOTIFICATIONS_CLOSED_PERIOD_GRACE)
    periods = {name: period_containing(now, ZoneInfo(name)) for name in zones}
    starting = {name: period for name, period in periods.items() if now < period.start + grace}
    if not starting:
        return []
    closed = {
        pk: starting[name]
        for pk, name in accounts.filter(limits__isnull=False, timezone__in=starting)
        .values_list("id", "timezone")
        .distinct()
    }
    return _crossings_insert(_closed_period_crossings(closed, now), now)


def forecasts_record(*, forecasts: list[Forecast], now: datetime) -> list[int]:
    """Record the forecasts the ledger lacks (one per line and period, SPEC 12.3), each with a
    delivery per warning recipient (per blocked recipient when the account has no warning
    recipient) and a webhook delivery per endpoint subscribed to ``forecast``; enqueued
    after commit. Returns the new notification ids. Call inside a transaction."""
    created = forecasts_insert(forecasts, now)
    if not created:
        return []
    recipients: dict[tuple[uuid.UUID, str], list[Recipient]] = {}
    for recipient in Recipient.objects.filter(
        account_id__in={forecast.account_id for _pk, forecast in created}
    ).order_by("id"):
        recipients.setdefault((recipient.account_id, recipient.level), []).append(recipient)
    Delivery.objects.bulk_create(
        Delivery(notification_id=pk, email=r.email, language=r.language)
        for pk, forecast in created
        for r in recipients.get((forecast.account_id, Level.WARNING), [])
        or recipients.get((forecast.account_id, Level.BLOCKED), [])
    )
    ids = [pk for pk, _forecast in created]
    webhook_deliveries_create(notification_ids=ids)
    for pk, forecast in created:
        logger.info(
            "notification %s: account %s projected to reach blocked %s of %s at %s, %s line%s"
            " (period %s)",
            pk,
            forecast.account_id,
            forecast.threshold,
            forecast.metric,
            forecast.projected_at.isoformat(),
            forecast.period_kind,
            f" [{forecast.labels_key}]" if forecast.labels_key else "",
            forecast.period_start.isoformat(),
        )
    transaction.on_commit(lambda: notifications_publish(ids))
    return ids


def _is_transient(error: Exception) -> bool:
    status = getattr(error, "status_code", None)
    if isinstance(error, AnymailRequestsAPIError) and status is None:
        return True  # no answer at all: network
    if status is not None:
        return status == 429 or status >= 500
    if isinstance(error, AnymailError):
        return False
    return isinstance(error, OSError)


# What can go wrong on the way to the provider, or at the provider: the delivery is retried
# (transient) or failed (permanent). Any other exception is a bug of this code, not a fact
# about the message: see ``_delivery_send``. (SMTP errors and timeouts are OSErrors; they
# are named for the reader.)
PROVIDER_ERRORS: tuple[type[Exception], ...] = (
    AnymailError,
    smtplib.SMTPException,
    TimeoutError,
    OSError,
)


def _describe(error: Exception) -> str:
    """The error as text for the admin; never raises, whatever the exception carries."""
    try:
        return str(error) or type(error).__name__
    except Exception:
        return type(error).__name__


def _describe_bug(error: Exception) -> str:
    """``TemplateSyntaxError: Invalid block tag...``: a bug is named by its type."""
    name = type(error).__name__
    text = _describe(error)
    return name if text == name else f"{name}: {text}"


@dataclass(frozen=True)
class DeliveryOutcome:
    sent: int
    failed: int
    retry: int


class _Lease:
    """Keeps a claimed delivery's lease alive while its worker renders and sends it.

    A thread with its own database connection (closed when it stops) moves ``claimed_at``
    forward every third of ``NOTIFICATIONS_STUCK_AFTER``, for as long as the delivery is
    still "sending" under this lease's token, so that recovery never takes over a slow
    send. Inside a transaction the claim is invisible to every other connection until
    commit: there is nothing to renew, and no thread is started.
    """

    def __init__(self, *, delivery_id: int, token: uuid.UUID) -> None:
        self.delivery_id = delivery_id
        self.token = token
        self.every = settings.NOTIFICATIONS_STUCK_AFTER / 3
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> _Lease:
        if not connection.in_atomic_block:
            self._thread = threading.Thread(
                target=self._renew, name=f"lease-of-delivery-{self.delivery_id}", daemon=True
            )
            self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stopped.set()
        if self._thread is not None:
            self._thread.join()

    def _renew(self) -> None:
        mine = Delivery.objects.filter(
            pk=self.delivery_id, status=Delivery.Status.SENDING, lease_token=self.token
        )
        try:
            while not self._stopped.wait(self.every):
                try:
                    renewed = mine.update(claimed_at=timezone.now())
                except DatabaseError:
                    # The next beat may find the database back; the lease lasts 3 beats.
                    logger.warning(
                        "delivery %s: lease not renewed", self.delivery_id, exc_info=True
                    )
                    connection.close()
                    continue
                if not renewed:
                    logger.error(
                        "delivery %s: lease lost while sending (recovered by another worker)",
                        self.delivery_id,
                    )
                    return
        finally:
            connection.close()


def _lock_message_id(esp_message_id: str) -> None:
    """Serialize, per message id, recording a send and recording a tracking event.

    Without it a webhook could look for its delivery before the "sent" update commits while
    that update looks for early events before the webhook's insert commits, and the event
    would never be applied. On PostgreSQL a transaction-level advisory lock; SQLite lets one
    writing transaction at a time, and both transactions below start by writing.
    """
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT pg_advisory_xact_lock(%s, hashtext(%s))",
                [_MESSAGE_ID_LOCKS, esp_message_id],
            )


def _delivery_record_sent(*, delivery_id: int, token: uuid.UUID, esp_message_id: str) -> bool:
    """Mark the delivery sent with the provider's message id, if ``token`` still holds its
    lease, and apply the tracking events that arrived first; False if the lease was lost."""
    now = timezone.now()
    with transaction.atomic():
        if esp_message_id:
            _lock_message_id(esp_message_id)
        recorded = Delivery.objects.filter(
            pk=delivery_id, status=Delivery.Status.SENDING, lease_token=token
        ).update(
            status=Delivery.Status.SENT,
            esp_message_id=esp_message_id,
            sent_at=now,
            last_error="",
            updated_at=now,
        )
        if recorded and esp_message_id:
            early = EarlyTrackingEvent.objects.filter(esp_message_id=esp_message_id)
            for event in sorted(early, key=_in_tracking_order):
                _tracked_update(
                    esp_message_id=esp_message_id,
                    event_type=event.event_type,
                    description=event.description,
                )
            early.delete()
    return bool(recorded)


def _message_id_of(message: object) -> str:
    status = getattr(message, "anymail_status", None)
    message_id = status.message_id if status else None
    return "" if message_id is None else str(message_id)


def _delivery_send(
    *, notification: Notification, delivery: Delivery, token: uuid.UUID, final_attempt: bool
) -> str | None:
    """Render and send a delivery claimed under ``token``; record the outcome if the lease
    still holds. Returns ``"sent"``, ``"failed"``, ``"retry"``, or None if the lease was lost.

    A provider error is a fact about this message: retried when transient, failed otherwise.
    Any other exception is a bug: logged with its traceback, the delivery queued again
    (failed once it had ``NOTIFICATIONS_MAX_ATTEMPTS``), and raised, so the task fails.
    """
    mine = Delivery.objects.filter(
        pk=delivery.pk, status=Delivery.Status.SENDING, lease_token=token
    )
    try:
        with _Lease(delivery_id=delivery.pk, token=token):
            message = threshold_message(notification=notification, delivery=delivery)
            message.send()
    except PROVIDER_ERRORS as error:
        queued = _is_transient(error) and not final_attempt
        status = Delivery.Status.QUEUED if queued else Delivery.Status.FAILED
        logger.warning("delivery %s to %s failed: %s", delivery.pk, delivery.email, error)
        kept = mine.update(
            status=status, last_error=_describe(error)[:2000], updated_at=timezone.now()
        )
        if not kept:
            return None
        return "retry" if queued else "failed"
    except Exception as error:
        logger.exception("delivery %s to %s: error while sending", delivery.pk, delivery.email)
        attempt = (
            Delivery.objects.filter(pk=delivery.pk).values_list("attempts", flat=True).first() or 1
        )
        most = settings.NOTIFICATIONS_MAX_ATTEMPTS
        if attempt >= most:
            status = Delivery.Status.FAILED
            last_error = f"Gave up after {attempt} attempts: {_describe_bug(error)}"
        else:
            status = Delivery.Status.QUEUED
            last_error = f"{_describe_bug(error)} (attempt {attempt} of {most})"
        mine.update(status=status, last_error=last_error[:2000], updated_at=timezone.now())
        raise
    esp_message_id = _message_id_of(message)
    if not _delivery_record_sent(
        delivery_id=delivery.pk, token=token, esp_message_id=esp_message_id
    ):
        logger.error(
            "delivery %s to %s: sent as message %r after its lease was lost; another worker "
            "owns it now, and the recipient may get it twice",
            delivery.pk,
            delivery.email,
            esp_message_id,
        )
        return None
    return "sent"


def notification_deliver(*, notification_id: int, final_attempt: bool = False) -> DeliveryOutcome:
    """Send every queued delivery of a notification once, e-mails then webhooks
    (``notifications.hooks``); the caller retries ``retry`` ones.

    Each delivery is claimed with a conditional update (queued -> sending) that draws a
    lease token; only the worker whose update changed the row sends it, and only while its
    lease holds may it record the outcome. On the final attempt a transient error is
    recorded as a failure, visible in the admin, which can resend. Call it outside a
    transaction (as the task does): the lease is renewed from another connection.
    """
    notification = Notification.objects.select_related("account").filter(pk=notification_id).first()
    if notification is None:
        return DeliveryOutcome(0, 0, 0)
    counts = {"sent": 0, "failed": 0, "retry": 0}
    for delivery in notification.deliveries.filter(status=Delivery.Status.QUEUED):
        token = uuid.uuid4()
        now = timezone.now()
        claimed = Delivery.objects.filter(pk=delivery.pk, status=Delivery.Status.QUEUED).update(
            status=Delivery.Status.SENDING,
            lease_token=token,
            claimed_at=now,
            attempts=F("attempts") + 1,
            updated_at=now,
        )
        if claimed != 1:
            continue  # another worker has it
        outcome = _delivery_send(
            notification=notification, delivery=delivery, token=token, final_attempt=final_attempt
        )
        if outcome is not None:
            counts[outcome] += 1
    for outcome in webhook_deliveries_send(notification=notification, final_attempt=final_attempt):
        counts[outcome] += 1
    return DeliveryOutcome(**counts)


def deliveries_resend(*, delivery_ids: Iterable[int]) -> int:
    """Queue failed (or bounced) deliveries again and enqueue their notifications."""
    resendable = [Delivery.Status.FAILED, Delivery.Status.BOUNCED]
    with transaction.atomic():
        chosen = Delivery.objects.select_for_update().filter(
            pk__in=list(delivery_ids), status__in=resendable
        )
        notification_ids = sorted(set(chosen.values_list("notification_id", flat=True)))
        count = chosen.update(status=Delivery.Status.QUEUED, updated_at=timezone.now())
        if count:
            transaction.on_commit(lambda: notifications_enqueue(notification_ids))
    return count


@dataclass(frozen=True)
class Requeued:
    deliveries: int
    notifications: int


def deliveries_requeue(*, status: str, account_id: uuid.UUID | None = None) -> Requeued:
    """Hand the e-mail and webhook deliveries in ``status`` (queued or failed), of every
    account or of one, to the workers again; returns how many deliveries, in how many
    notifications.

    Failed deliveries are queued again first (their attempts kept, and a webhook's
    ``webhook-id``, as the admin's resend does); queued ones are only enqueued again, for
    when their task was lost. The claim makes a task that finds its delivery taken by
    another harmless.
    """
    if status not in (Delivery.Status.QUEUED, Delivery.Status.FAILED):
        raise ValueError(f"Only queued or failed deliveries can be handed over, not {status!r}.")
    count = 0
    notification_ids: set[int] = set()
    with transaction.atomic():
        for model in (Delivery, WebhookDelivery):
            chosen = model.objects.filter(status=status)
            if account_id is not None:
                chosen = chosen.filter(notification__account_id=account_id)
            rows = list(chosen.values_list("pk", "notification_id"))
            if status == model.Status.FAILED and rows:
                count += model.objects.filter(
                    pk__in=[pk for pk, _notification_id in rows], status=status
                ).update(status=model.Status.QUEUED, updated_at=timezone.now())
            else:
                count += len(rows)
            notification_ids.update(notification_id for _pk, notification_id in rows)
        enqueued = sorted(notification_ids)
        transaction.on_commit(lambda: notifications_enqueue(enqueued))
    return Requeued(deliveries=count, notifications=len(enqueued))


def deliveries_recover(*, now: datetime | None = None) -> list[int]:
    """Re-enqueue what dead workers and lost tasks left undone; returns the notification ids
    enqueued.

    A delivery whose lease expired (still "sending", not renewed for
    ``NOTIFICATIONS_STUCK_AFTER``) was left by a dead worker: it is queued again and its
    notification enqueued at once, or failed once it has had ``NOTIFICATIONS_MAX_ATTEMPTS``.
    Notifications never handed to the broker (``published_at`` empty) are enqueued, and so
    are those with deliveries queued for longer than a task should take. The claim makes a
    second task harmless.
    """
    now = now or timezone.now()
    expired = Delivery.objects.filter(
        status=Delivery.Status.SENDING,
        claimed_at__lt=now - timedelta(seconds=settings.NOTIFICATIONS_STUCK_AFTER),
    )
    most = settings.NOTIFICATIONS_MAX_ATTEMPTS
    recovered = set()
    for pk, notification_id, attempt in expired.values_list("pk", "notification_id", "attempts"):
        unknown = "its worker stopped before recording whether the provider accepted it"
        if attempt >= most:
            status = Delivery.Status.FAILED
            last_error = f"Gave up after {attempt} attempts: {unknown}."
        else:
            status = Delivery.Status.QUEUED
            last_error = f"Queued again after attempt {attempt} of {most}: {unknown}."
        # Conditional on the lease still being expired: a heartbeat may have just renewed it.
        if expired.filter(pk=pk).update(status=status, last_error=last_error, updated_at=now):
            logger.warning("delivery %s: lease expired, %s", pk, status)
            if status == Delivery.Status.QUEUED:
                recovered.add(notification_id)
    lost_after = timedelta(seconds=settings.NOTIFICATIONS_LOST_AFTER)
    retry_window = timedelta(seconds=settings.NOTIFICATIONS_MAX_RETRY_DELAY) + lost_after
    lost = (
        Delivery.objects.filter(status=Delivery.Status.QUEUED)
        .filter(
            Q(updated_at__lt=now - lost_after, attempts=0) | Q(updated_at__lt=now - retry_window)
        )
        .values_list("notification_id", flat=True)
        .distinct()
    )
    # Never handed to the broker (it was down when they were recorded): publish them now,
    # without waiting for ``NOTIFICATIONS_LOST_AFTER``.
    unpublished = Notification.objects.filter(
        published_at__isnull=True, deliveries__status=Delivery.Status.QUEUED
    ).values_list("pk", flat=True)
    webhooks = webhook_deliveries_recover(now=now)
    ids = sorted(recovered | set(lost) | set(unpublished) | webhooks)
    notifications_enqueue(ids)
    return ids


def notification_send_test(
    *, account: Account, level: str, language: str, to: str, metric: str | None = None
) -> Delivery:
    """Send a sample notification to ``to`` through the real path (task, provider, ledger).

    The sample uses the account's current threshold and usage of ``metric`` (without
    ``metric``, of its first metric limited at ``level``), or made-up figures when that
    metric has no threshold at ``level``; it is recorded as a test, outside the
    exactly-once ledger.
    """
    if metric is not None and metric not in METRICS:
        raise ValidationError(
            {"metric": _("Expected one of: %(choices)s.") % {"choices": ", ".join(METRICS)}}
        )
    if level not in Level.values:
        raise ValidationError(
            {"level": _("Expected one of: %(choices)s.") % {"choices": ", ".join(Level.values)}}
        )
    if language not in Language.values:
        raise ValidationError(
            {
                "language": _("Expected one of: %(choices)s.")
                % {"choices": ", ".join(Language.values)}
            }
        )
    validate_recipient_email(to)
    now = timezone.now()
    period = period_containing(now, account.zone)
    usages = usage_for(periods={account.pk: period})
    limited = [
        u
        for u in usages.values()
        if (u.warning if level == Level.WARNING else u.effective_blocked) is not None
        and (metric is None or u.metric == metric)
    ]
    if limited:
        sample = sorted(limited, key=lambda u: list(METRICS).index(u.metric))[0]
        metric = sample.metric
        threshold = sample.warning if level == Level.WARNING else sample.effective_blocked
        used_milli = sample.used_milli
    else:
        metric = metric or "text_tokens"
        # Ten hours of audio, a million tokens: figures nobody takes for real ones.
        threshold = 36_000 if METRICS[metric].unit == "seconds" else 1_000_000
        used_milli = threshold * (800 if level == Level.WARNING else 1000)
    with transaction.atomic():
        notification = Notification.objects.create(
            account=account,
            metric=metric,
            level=level,
            period=period.first_day,
            period_start=window_from_key(kind=MONTH, key=period.code, zone=account.zone).start,
            threshold=threshold or 0,
            used_milli=used_milli,
            is_test=True,
        )
        delivery = Delivery.objects.create(notification=notification, email=to, language=language)
        transaction.on_commit(lambda: notifications_enqueue([notification.pk]))
    return delivery


# --- Tracking (the ESP's webhook) ---------------------------------------------------------

_Status = Delivery.Status
# Anymail's normalized event type -> (the status it sets, the statuses it may replace).
# A status only moves forward: sent < delivered < bounced < complained, since a bounce
# can follow a delivery (an asynchronous bounce) and a complaint follows either, while a
# late "delivered" must not hide a bounce. "failed" (the ESP gave up before sending) only
# replaces "sent". Queued, sending and failed-by-us deliveries are never touched: the
# event concerns an earlier attempt of a delivery resent since. The only way back is
# ``deliveries_resend``, a person's decision, never an ESP's event.
_TRACKED: dict[str, tuple[str, list[str]]] = {
    "delivered": (_Status.DELIVERED, [_Status.SENT]),
    "bounced": (_Status.BOUNCED, [_Status.SENT, _Status.DELIVERED]),
    "rejected": (_Status.BOUNCED, [_Status.SENT, _Status.DELIVERED]),
    "complained": (_Status.COMPLAINED, [_Status.SENT, _Status.DELIVERED, _Status.BOUNCED]),
    "failed": (_Status.FAILED, [_Status.SENT]),
}
# Events that say why a message did not arrive: their description becomes the last error.
_FAILURES = {"bounced", "rejected", "failed"}
# The order in which early events are applied, so that each finds the status it replaces
# (a bounce and a "delivered" that both came early end as bounced, as they would late).
_TRACKING_ORDER = {"delivered": 0, "failed": 0, "bounced": 1, "rejected": 1, "complained": 2}
# Tracking events that matched no delivery wait this long for it, then are deleted.
EARLY_EVENTS_KEPT = timedelta(days=1)


def _in_tracking_order(event: EarlyTrackingEvent) -> tuple[int, datetime, int]:
    return (_TRACKING_ORDER[event.event_type], event.received_at, event.pk)


def _tracked_update(*, esp_message_id: str, event_type: str, description: str) -> int:
    """The conditional update of one tracking event (see ``_TRACKED``)."""
    status, replaces = _TRACKED[event_type]
    changes: dict[str, object] = {"status": status, "updated_at": timezone.now()}
    if event_type in _FAILURES and description:
        changes["last_error"] = description[:2000]
    updated = Delivery.objects.filter(esp_message_id=esp_message_id, status__in=replaces).update(
        **changes
    )
    if updated:
        logger.info("delivery with message id %s: %s", esp_message_id, status)
    return updated


def delivery_track(*, esp_message_id: str, event_type: str, description: str) -> int:
    """Apply one tracking event of the ESP to its delivery; returns how many changed (0 or 1).

    Other event types (opened, deferred...) are ignored, as is an event that would move the
    delivery backwards (see ``_TRACKED``); the conditional update makes concurrent and
    out-of-order events safe. An event whose message id matches no delivery yet (the
    provider answered the worker, which has not recorded the id) is kept as an
    ``EarlyTrackingEvent`` and applied when the delivery is marked sent.
    """
    if not esp_message_id or event_type not in _TRACKED:
        return 0
    with transaction.atomic():
        _lock_message_id(esp_message_id)
        updated = _tracked_update(
            esp_message_id=esp_message_id, event_type=event_type, description=description
        )
        if not updated and not Delivery.objects.filter(esp_message_id=esp_message_id).exists():
            EarlyTrackingEvent.objects.create(
                esp_message_id=esp_message_id[:255],
                event_type=event_type,
                description=description,
            )
            logger.info(
                "message id %s: %s kept until its delivery is recorded", esp_message_id, event_type
            )
    return updated


def early_tracking_events_purge(*, now: datetime | None = None) -> int:
    """Delete the tracking events that found no delivery within ``EARLY_EVENTS_KEPT``;
    returns how many (events about messages that some other sender sent)."""
    now = now or timezone.now()
    deleted, _by_model = EarlyTrackingEvent.objects.filter(
        received_at__lt=now - EARLY_EVENTS_KEPT
    ).delete()
    return deleted
