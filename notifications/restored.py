"""Notices of capacity restored (SPEC 12.2): a blocked line that is no longer blocked.

``restored_notices_record`` runs where crossings are recorded, inside the same transaction
(``thresholds_evaluate``: a change of limits or an extension, and the periodic sweep). It
answers the latest blocked notification of each line, once: the ``restores`` one-to-one
of ``Notification`` lets one restored notice per blocked notification into the ledger, and
the insert is ``ON CONFLICT DO NOTHING``, so concurrent changes and sweeps create one.

A blocked notification is answered when its line is no longer blocked and it is still
"live": it is the line's latest blocked notification (non-test, e-mailed), and

- it belongs to the line's current period (a threshold raised or cleared, the line
  removed, an extension granted), or
- the line is a ``month``, ``week`` or ``day`` line and it belongs to the period just
  before the current one: the line ended that period blocked (any change that lifted the
  block then was answered then), and a new period started; or
- the line is ``rolling`` and every local day since its run began, up to yesterday, ended
  at or above its threshold (``rolling_period_starts`` finds the same run): the window,
  moved on at local midnight, or a change of limit, lifted the block.

``hour`` and ``minute`` lines are answered in their current period only: SPEC 12.2 sends a
notice at a period start for lines of a day or longer.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime, timedelta

from django.db import connection, transaction
from django.db.models import Exists, OuterRef, Q, QuerySet
from django.db.models.functions import Coalesce

from accounts.models import Account
from accounts.windows import PeriodKind, window_containing
from config.request_ids import current_correlation_id, current_request_id
from usage.selectors import LineUsage, Status

from .hooks import webhook_deliveries_create
from .models import Delivery, NoticeLevel, Notification, RestoredReason
from .selectors import blocked_lines_usage, notice_line_key
from .services import RollingRun, notifications_publish, rolling_period_starts

logger = logging.getLogger(__name__)

# The kinds whose blocked notification of the previous period is answered when a new period
# starts (SPEC 12.2: "lines of a day or longer"; rolling lines by their run, see above).
PERIOD_START_KINDS = (PeriodKind.MONTH, PeriodKind.WEEK, PeriodKind.DAY)
# How far back the blocked notifications looked at may start: the previous month, with room
# for its longest length and any offset; a rolling run, the longest window and one more.
_RECENT = timedelta(days=33)
_RECENT_ROLLING = timedelta(days=368)


@dataclass(frozen=True)
class Restoration:
    """A restored notice to record: the blocked notification it answers, why, and the
    line's figures now (``threshold``: its effective blocked threshold, ``None`` if none)."""

    blocked: Notification
    reason: str
    threshold: int | None
    used_milli: int


def _latest_unanswered(accounts: QuerySet[Account], now: datetime) -> list[Notification]:
    """Each line's latest blocked notification (e-mailed, not a test) that may still be
    live, when no restored notice answers it yet: one query, which reads those alone."""
    blocked = Notification.objects.filter(
        level=NoticeLevel.BLOCKED, is_test=False, recorded_only=False
    ).alias(days=Coalesce("window_days", 0))
    later = blocked.filter(
        Q(period_start__gt=OuterRef("period_start"))
        | Q(period_start=OuterRef("period_start"), pk__gt=OuterRef("pk")),
        account_id=OuterRef("account_id"),
        metric=OuterRef("metric"),
        period_kind=OuterRef("period_kind"),
        days=Coalesce(OuterRef("window_days"), 0),
        labels_key=OuterRef("labels_key"),
    )
    return list(
        blocked.filter(account_id__in=accounts.values("pk"))
        .filter(
            Q(period_start__gte=now - _RECENT)
            | Q(period_kind=PeriodKind.ROLLING, period_start__gte=now - _RECENT_ROLLING)
        )
        .filter(~Exists(Notification.objects.filter(restores_id=OuterRef("pk"))))
        .filter(~Exists(later))
        .select_related("account")
        .order_by("account_id", "pk")
    )


def _rolling_run(blocked: Notification, now: datetime) -> RollingRun:
    """The run of ``blocked``'s rolling line as it stands today, at its threshold."""
    assert blocked.window_days is not None
    zone = blocked.account.zone
    return RollingRun(
        account_id=blocked.account_id,
        metric=blocked.metric,
        labels_key=blocked.labels_key,
        days=blocked.window_days,
        level=NoticeLevel.BLOCKED,
        threshold=blocked.threshold,
        today=window_containing(kind=PeriodKind.DAY, instant=now, zone=zone).local_start.date(),
    )


def _is_live(blocked: Notification, now: datetime, runs: Mapping[int, date]) -> bool:
    """Whether ``blocked`` belongs to the line's current stretch of blocking (see above);
    ``runs``: the period start of the run of each rolling one, by its id."""
    zone = blocked.account.zone
    kind = PeriodKind(blocked.period_kind)
    if kind == PeriodKind.ROLLING:
        return runs[blocked.pk] == blocked.period
    current = window_containing(kind=kind, instant=now, zone=zone)
    if blocked.period_start == current.start:
        return True
    return kind in PERIOD_START_KINDS and blocked.period_start == current.previous().start


def _restoration(
    blocked: Notification, line: LineUsage | None, now: datetime, runs: Mapping[int, date]
) -> Restoration | None:
    """What answers ``blocked``, if its line is no longer blocked and it is live (``runs``:
    see ``_is_live``)."""
    if line is None:
        if not _is_live(blocked, now, runs):
            return None
        return Restoration(blocked, RestoredReason.REMOVED, None, 0)
    usage = line.usage
    if usage.status == Status.BLOCKED or not _is_live(blocked, now, runs):
        return None
    effective = usage.effective_blocked
    same_period = (
        blocked.period_kind == PeriodKind.ROLLING or blocked.period_start == line.window.start
    )
    if effective is None:
        reason = RestoredReason.CLEARED
    elif effective > blocked.threshold:
        raised = usage.blocked is not None and usage.blocked > blocked.threshold
        reason = RestoredReason.RAISED if raised else RestoredReason.EXTENDED
    elif not same_period or blocked.period_kind == PeriodKind.ROLLING:
        # The same cap (or a lower one) and yet not blocked: the usage it counted left the
        # window, as a new period (or a rolling window moving on at midnight) does.
        reason = RestoredReason.NEW_PERIOD
    else:
        return None  # usage corrected downwards (a counter repair): no change of limit
    if not same_period:
        reason = RestoredReason.NEW_PERIOD
    return Restoration(blocked, reason, effective, usage.used_milli)


_COLUMNS = (
    "account_id, metric, period_kind, window_days, labels_key, level, period, period_start,"
    " threshold, used_milli, created_at, is_test, recorded_only, request_id, correlation_id,"
    " restores_id, restored_reason, restored_threshold"
)


def _insert(restorations: list[Restoration], now: datetime) -> list[tuple[int, Restoration]]:
    """Insert the restored notices the ledger lacks; returns ``(id, restoration)`` of new ones.

    ``ON CONFLICT DO NOTHING`` names no index: the one-to-one ``restores`` refuses a second
    notice for the same blocked notification, whoever inserted the first.
    """
    if not restorations:
        return []
    adapt_dt = connection.ops.adapt_datetimefield_value
    request_id, correlation_id = current_request_id(), current_correlation_id()
    placeholders = ", ".join(["(" + ", ".join(["%s"] * 18) + ")"] * len(restorations))
    params: list[object] = []
    for r in restorations:
        b = r.blocked
        account = b.account_id if connection.vendor == "postgresql" else b.account_id.hex
        params += [account, b.metric, b.period_kind, b.window_days, b.labels_key]
        params += [NoticeLevel.RESTORED.value, b.period, adapt_dt(b.period_start), b.threshold]
        params += [r.used_milli, adapt_dt(now), False, False, request_id, correlation_id]
        params += [b.pk, str(r.reason), r.threshold]
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {Notification._meta.db_table} ({_COLUMNS}) VALUES {placeholders} "
            "ON CONFLICT DO NOTHING RETURNING id, restores_id",
            params,
        )
        rows = cursor.fetchall()
    by_blocked = {r.blocked.pk: r for r in restorations}
    return [(pk, by_blocked[restores]) for pk, restores in rows]


def restored_notices_record(*, accounts: QuerySet[Account], now: datetime) -> list[int]:
    """Record a restored notice for each blocked line of ``accounts`` no longer blocked (see
    the module's docstring); returns the new notification ids.

    Call inside the transaction that changed limits or extensions (after its usage locks),
    or from the sweep. Each new notice gets a delivery per recipient of the blocked
    notification it answers, in that recipient's language, and one per webhook endpoint
    subscribed to ``restored``; its sending task is enqueued after commit.
    """
    pending = _latest_unanswered(accounts, now)
    if not pending:
        return []
    lines = blocked_lines_usage(notifications=pending, now=now)
    line_of = {b.pk: lines.get((b.account_id, notice_line_key(b))) for b in pending}
    # The runs of the rolling lines no longer blocked, all at once.
    runs = {
        b.pk: _rolling_run(b, now)
        for b in pending
        if b.period_kind == PeriodKind.ROLLING
        and (line_of[b.pk] is None or line_of[b.pk].usage.status != Status.BLOCKED)
    }
    starts = rolling_period_starts(runs.values())
    run_starts = {pk: starts[run] for pk, run in runs.items()}
    restorations = []
    for blocked in pending:
        found = _restoration(blocked, line_of[blocked.pk], now, run_starts)
        if found is not None:
            restorations.append(found)
    created = _insert(restorations, now)
    if not created:
        return []
    recipients = Delivery.objects.filter(
        notification_id__in=[r.blocked.pk for _pk, r in created]
    ).order_by("pk")
    by_blocked: dict[int, list[Delivery]] = {}
    for delivery in recipients:
        by_blocked.setdefault(delivery.notification_id, []).append(delivery)
    Delivery.objects.bulk_create(
        Delivery(notification_id=pk, email=d.email, language=d.language)
        for pk, r in created
        for d in by_blocked.get(r.blocked.pk, [])
    )
    ids = [pk for pk, _r in created]
    webhook_deliveries_create(notification_ids=ids)
    for pk, r in created:
        logger.info(
            "notification %s: account %s, %s line of %s no longer blocked (%s), answering %s",
            pk,
            r.blocked.account_id,
            r.blocked.period_kind,
            r.blocked.metric,
            r.reason,
            r.blocked.pk,
        )
    transaction.on_commit(lambda: notifications_publish(ids))
    return ids
