"""Use cases that span apps: each writes in a lower app and records the threshold
crossings it causes in the same transaction (SPEC sections 3, 5 and 6).

A crossing is recorded exactly when the usage or limits that cause it are: the
notifications app's ``crossings_record`` and ``thresholds_evaluate`` run inside the
transaction of the write, after the usage locks, and their sending tasks are enqueued
once it commits. Admin pages, API views and commands call these functions, never the
lower apps' writes that would skip the notifications.
"""

from __future__ import annotations

import logging
import uuid
from collections import defaultdict
from collections.abc import Container, Iterable, Mapping
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from django.contrib.auth.models import AbstractBaseUser
from django.db import IntegrityError, OperationalError, connection, transaction
from django.db.models import Exists, OuterRef
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from accounts.labels import labels_from_key
from accounts.models import Account, Level, Plan, ScopedLimit, validate_timezone
from accounts.selectors import LimitsDocument, limits_document_get
from accounts.services import _limits_write, limits_document_merge, limits_document_validate
from notifications.services import (
    crossings_record,
    reaches_more,
    scoped_lines_reached,
    thresholds_evaluate,
)
from usage.ingest import MAX_FUTURE, EventIn, EventsInvalid, parse_events
from usage.locks import usage_lock
from usage.models import Extension
from usage.periods import period_containing
from usage.selectors import (
    Status,
    account_lines_current,
    counted_keys_column,
    counted_keys_of,
    line_with_event,
    usage_for,
)
from usage.services import (
    IngestResult,
    counter_keys_sync,
    extension_grant,
    usage_event_store_one,
    usage_events_guess,
    usage_events_insert,
    usage_events_store,
)

logger = logging.getLogger(__name__)

# How many times recording usage is tried when PostgreSQL rolls it back to break a deadlock
# (SQLSTATE ``40P01``), and that state.
DEADLOCK_ATTEMPTS = 3
DEADLOCK_DETECTED = "40P01"
FOREIGN_KEY_VIOLATION = "23503"

# --- Limits and accounts, with the crossings a change causes (SPEC sections 3 and 6) ---


def limits_replace(
    *, account: Account, data: Any, actor: AbstractBaseUser | None = None, reason: str = ""
) -> LimitsDocument:
    """Replace the whole limits document (``PUT``): metrics and lists left out are cleared.

    Refused whole (nothing written) with ``LimitsInvalid`` or ``AccountNotEnterprise``.
    """
    with transaction.atomic():
        # One writer at a time per account, so two concurrent changes cannot interleave. NO
        # KEY UPDATE does not conflict with the KEY SHARE lock that recording usage takes on
        # the account when it commits, so it cannot deadlock with the usage lock below.
        account = Account.objects.select_for_update(no_key=True).get(pk=account.pk)
        document = limits_document_validate(account=account, data=data)
        if _limits_write(account=account, document=document, actor=actor, reason=reason):
            Account.objects.filter(pk=account.pk).update(limits_updated_at=timezone.now())
            # Under the usage locks: a new line's label key counts from the start of its
            # current period, what was recorded before included (SPEC 11.2).
            counter_keys_sync(account=account)
            # A new or lowered threshold that usage already passed notifies now (rule 7).
            thresholds_evaluate(account_ids=[account.pk], after_limit_change=True)
    return limits_document_get(account=account)


def limits_patch(
    *, account: Account, data: Any, actor: AbstractBaseUser | None = None, reason: str = ""
) -> LimitsDocument:
    """Change only what ``data`` names (``PATCH``): a merge patch on limits, lists replaced."""
    with transaction.atomic():
        account = Account.objects.select_for_update(no_key=True).get(pk=account.pk)
        merged = limits_document_merge(current=limits_document_get(account=account), patch=data)
        return limits_replace(account=account, data=merged, actor=actor, reason=reason)


# A threshold ``scoped_limit_set`` leaves as it is (or unlimited, on a new line).
KEEP: Any = object()


class ScopedLimitNotFound(Exception):
    """``scoped_limit_set(clear=True)`` named a line the account does not have."""

    def __init__(self) -> None:
        self.message = _("The account has no such scoped limit to remove.")
        super().__init__(str(self.message))


def scoped_limit_set(
    *,
    account: Account,
    metric: Any,
    period: Any,
    window_days: Any = None,
    labels: Mapping[str, Any] | None = None,
    warning: Any = KEEP,
    blocked: Any = KEEP,
    clear: bool = False,
    patch: Mapping[str, Any] | None = None,
    actor: AbstractBaseUser | None = None,
    reason: str = "",
) -> LimitsDocument:
    """Set one scoped limit, named by metric, period, window days and labels (``set_limits``).

    A threshold left as ``KEEP`` keeps its value on an existing line and is unlimited on a
    new one; ``clear`` removes the line (``ScopedLimitNotFound`` if there is none). ``patch``
    is applied with it (e.g. recipient lists). The whole document then goes through
    ``limits_patch``: same rules, same messages, refused whole.
    """
    target = {
        "metric": metric,
        "period": period,
        "window_days": window_days,
        "labels": dict(labels or {}),
    }
    with transaction.atomic():
        account = Account.objects.select_for_update(no_key=True).get(pk=account.pk)
        lines = [line.as_data() for line in limits_document_get(account=account).scoped_limits]
        index = next(
            (i for i, line in enumerate(lines) if all(line[k] == v for k, v in target.items())),
            None,
        )
        if clear:
            if index is None:
                raise ScopedLimitNotFound()
            del lines[index]
        else:
            if index is None:
                lines.append({**target, "warning": None, "blocked": None})
                index = len(lines) - 1
            for level, value in ((Level.WARNING.value, warning), (Level.BLOCKED.value, blocked)):
                if value is not KEEP:
                    lines[index][level] = value
        data = {**(patch or {}), "scoped_limits": lines}
        return limits_patch(account=account, data=data, actor=actor, reason=reason)


def limits_reactivate(*, account: Account, previous_plan: str) -> list[int]:
    """Notify now what the stored limits reached while inactive, if ``account`` is back on
    Enterprise after ``previous_plan``; returns the ids of the notifications created.

    Only Enterprise accounts are limited, so a return to Enterprise applies the stored
    limits at once, as a changed limit would (rule 7). Call inside the transaction that
    changed the plan, after any limit written with it.
    """
    if previous_plan == Plan.ENTERPRISE or not account.is_enterprise:
        return []
    return thresholds_evaluate(account_ids=[account.pk], after_limit_change=True)


def account_upsert(
    *,
    external_id: str,
    name: str,
    plan: str | None = None,
    language: str | None = None,
    timezone_name: str | None = None,
) -> tuple[Account, bool]:
    """Create or update an account by its external id, as a CRM sync would.

    Returns ``(account, created)``; raises ``ValidationError`` on a bad value. Concurrent
    calls for the same new external id create one account: the others update it. An
    account back on Enterprise has its stored limits apply at once (``limits_reactivate``).
    """
    values = {"name": name, "plan": plan, "language": language, "timezone_name": timezone_name}
    try:
        return _account_write(external_id=external_id, **values)
    except IntegrityError:
        # Another call inserted this external id after the lookup found nothing (the unique
        # constraint refused the second insert, whose savepoint is rolled back): the row
        # is there now, and the second pass locks and updates it.
        return _account_write(external_id=external_id, **values)


def _account_write(
    *,
    external_id: str,
    name: str,
    plan: str | None,
    language: str | None,
    timezone_name: str | None,
) -> tuple[Account, bool]:
    """One pass of ``account_upsert``: lock the account, or insert it if there is none."""
    with transaction.atomic():
        # NO KEY UPDATE: the sync may take the usage locks (a return to Enterprise), and must
        # not conflict with the KEY SHARE lock a request takes on the account at commit.
        account = (
            Account.objects.select_for_update(no_key=True).filter(external_id=external_id).first()
        )
        created = account is None
        if created:
            account = Account(external_id=external_id, plan=Plan.ENTERPRISE)
        before = {f: getattr(account, f) for f in ("name", "plan", "language", "timezone")}
        account.name = name.strip()
        if plan is not None:
            account.plan = plan
        if language is not None:
            account.language = language
        if timezone_name is not None:
            validate_timezone(timezone_name)
            account.timezone = timezone_name
        account.full_clean(validate_unique=False)
        # A sync that changes nothing writes nothing (and adds no history row).
        if created or before != {f: getattr(account, f) for f in before}:
            account.save()
            limits_reactivate(account=account, previous_plan=before["plan"])
    return account, created


# --- Extensions, with the crossings they re-arm (SPEC sections 4 and 6) ---


def extensions_grant(
    *, account: Account, rows: Iterable[Mapping[str, Any]], actor: Any
) -> list[Extension]:
    """Grant each of ``rows`` (``amount``, ``reason`` and the line: ``metric`` for a
    whole-metric monthly line, or ``scoped_limit_id``), each for its line's current period.

    In one transaction with the evaluation of the account's thresholds, since a raised
    effective blocked threshold may re-arm its notification or lift a blocked line (SPEC
    sections 6 and 12.2), on any line. Refused with ``ValidationError`` as
    ``usage.services.extension_validate`` says.
    """
    with transaction.atomic():
        # One writer of limits at a time per account (as ``limits_replace``): the line an
        # extension names cannot be removed or changed between its check and its grant.
        Account.objects.select_for_update(no_key=True).filter(pk=account.pk).first()
        granted = [extension_grant(account=account, actor=actor, **row) for row in rows]
        if granted:
            thresholds_evaluate(account_ids=[account.pk], after_limit_change=True)
    return granted


# --- Usage, with the crossings it causes (SPEC sections 5, 6 and 11.5) ---


def _labels_of(
    kinds: Iterable[tuple[uuid.UUID, str, str]],
) -> dict[tuple[uuid.UUID, str], list[dict[str, str]]]:
    """The distinct label sets of the events, per (account id, metric), from the events'
    distinct ``(account id, metric, label key)``."""
    found: dict[tuple[uuid.UUID, str], set[str]] = defaultdict(set)
    for account_id, metric, key in kinds:
        found[(account_id, metric)].add(key)
    parsed = {key: labels_from_key(key) for key in set().union(*found.values())}
    return {pair: [parsed[key] for key in sorted(keys)] for pair, keys in found.items()}


def usage_events_record(
    *, payload: object, now: datetime | None = None, account_id: uuid.UUID | None = None
) -> IngestResult:
    """Record one event or a batch (SPEC section 5), idempotently per ``(account, event_id)``.

    Raises ``EventsInvalid`` (nothing recorded) when any event is invalid or names an
    unknown or inactive account, or when ``usage.services.usage_events_store`` refuses it
    (a label set past ``USAGE_MAX_LABEL_SETS``, a daily counter past ``DAILY_LIMIT``).
    Returns how many were new and how many were duplicates,
    and the current-period usage of every account and metric the request touched, read
    after the write. ``account_id`` is the account of a token bound to one (SPEC section
    11.6): events may leave ``account`` out, and may name no other account.
    """
    now = now or timezone.now()
    events, is_batch = parse_events(payload, now, bound=account_id)
    for attempt in range(1, DEADLOCK_ATTEMPTS + 1):
        try:
            if not is_batch and connection.vendor == "postgresql":
                return _usage_event_record(events[0], now=now)
            return _usage_events_record(events, is_batch=is_batch, now=now)
        except OperationalError as error:
            # Recording is idempotent: the transaction PostgreSQL chose to roll back is
            # recorded again, and finds what the other one committed. Within a caller's
            # transaction there is nothing to retry: it is rolled back as a whole.
            deadlock = getattr(error.__cause__, "sqlstate", None) == DEADLOCK_DETECTED
            if not deadlock or attempt == DEADLOCK_ATTEMPTS or connection.in_atomic_block:
                raise
            logger.warning("usage recording rolled back by a deadlock, recorded again")
    raise AssertionError("unreachable")


def _usage_events_record(events: list[EventIn], *, is_batch: bool, now: datetime) -> IngestResult:
    """``usage_events_record`` of a batch, or of a single event on SQLite.

    The events are inserted before the usage locks are taken (``usage_events_insert``), so
    that a batch's largest statement runs while another batch of the same accounts holds
    them. A single event takes its lock before it inserts (``_usage_event_record``): when
    it and a batch insert the same event id at once, each can wait for the other, and
    PostgreSQL rolls one back after ``deadlock_timeout`` (a second); that one is recorded
    again (``usage_events_record``) and finds the event recorded by the other.
    """
    # One pass over the events: what follows works on their few distinct kinds (an id is
    # a ``UUID``, which hashes in Python: once per event, not once per step).
    kinds = {(e.account_id, e.metric, e.labels_key) for e in events}
    pairs = {(account_id, metric) for account_id, metric, _key in kinds}
    try:
        return _usage_events_write(events, kinds, pairs, is_batch=is_batch, now=now)
    except IntegrityError as error:
        if getattr(error.__cause__, "sqlstate", None) != FOREIGN_KEY_VIOLATION:
            raise
    # An event names no account (``usage_events_insert`` checks them as it inserts, on
    # PostgreSQL): nothing was recorded. Answered as the check under the locks answers.
    active = set(
        Account.objects.filter(
            pk__in={account_id for account_id, _ in pairs}, is_active=True
        ).values_list("pk", flat=True)
    )
    _accounts_check(events, active, is_batch=is_batch)
    # Every account exists now: one was created meanwhile.
    return _usage_events_write(events, kinds, pairs, is_batch=is_batch, now=now)


def _accounts_check(events: list[EventIn], active: Container[uuid.UUID], *, is_batch: bool) -> None:
    """``EventsInvalid`` naming the events whose account is not ``active``, if any."""
    unknown = [i for i, e in enumerate(events) if e.account_id not in active]
    if not unknown:
        return
    message = [_("Unknown or inactive account.")]
    if is_batch:
        raise EventsInvalid({"events": {str(i): {"account": message} for i in unknown}})
    raise EventsInvalid({"account": message})


def _usage_events_write(
    events: list[EventIn],
    kinds: set[tuple[uuid.UUID, str, str]],
    pairs: set[tuple[uuid.UUID, str]],
    *,
    is_batch: bool,
    now: datetime,
) -> IngestResult:
    metrics = {metric for _account_id, metric in pairs}
    touched = sorted(pairs)
    with transaction.atomic():
        # The events first, without the locks (``usage_events_insert`` says why): another
        # batch of the same accounts counts its own meanwhile. So are the new ones summed,
        # as this process last read their accounts: summed again under the locks if what
        # is read there differs.
        inserted = usage_events_insert(events=events, now=now)
        summed = usage_events_guess(inserted=inserted, account_ids={a for a, _ in pairs})
        usage_lock(pairs=touched)
        # The accounts, read under the lock: each marked when it has a scoped limit on a
        # metric of the request (in the same query), since only those have scoped lines to
        # look at for crossings. A limit change takes the same locks, so a scoped limit
        # committed before this batch took them is seen, and its crossing recorded now.
        accounts = list(
            Account.objects.filter(pk__in={account_id for account_id, _ in pairs}, is_active=True)
            .annotate(
                has_scoped=Exists(
                    ScopedLimit.objects.filter(account_id=OuterRef("pk"), metric__in=metrics)
                )
            )
            .order_by("pk")
        )
        zones: dict[uuid.UUID, ZoneInfo] = {account.pk: account.zone for account in accounts}
        scoped = [a for a in accounts if a.has_scoped and a.is_enterprise]
        if any(account_id not in zones for account_id, _metric in pairs):
            _accounts_check(events, zones, is_batch=is_batch)
        # Raising there rolls back this request's events, label sets and counter additions.
        accepted = usage_events_store(
            inserted=inserted, zones=zones, now=now, is_batch=is_batch, summed=summed
        )
        periods = {account_id: period_containing(now, zone) for account_id, zone in zones.items()}
        usage = usage_for(periods=periods, pairs=touched)
        # In the same transaction: a crossing is recorded exactly when its usage is, on the
        # monthly lines and on the scoped lines that count these events.
        crossings_record(
            usages=[u for u in usage.values() if u.status != Status.OK],
            lines=scoped_lines_reached(
                accounts=scoped,
                now=now,
                labels=_labels_of(kinds),
                month_used={key: found.used_milli for key, found in usage.items()},
            ),
            zones=zones,
            now=now,
        )

    return IngestResult(
        accepted=accepted,
        duplicates=len(events) - accepted,
        usage=[usage[key] for key in touched],
    )


def _usage_event_record(event: EventIn, *, now: datetime) -> IngestResult:
    """``usage_events_record`` of a single event, on PostgreSQL: three statements (four
    when this process has not read the account's lines yet), and those of a crossing.

    After the (account, metric) lock, one statement reads the account with the lines the
    event counts on, their usage before it and the label keys counted
    (``usage.selectors.account_lines_current``), in the snapshot that follows the lock,
    hence with all that other writers committed; one statement writes the event and its
    counters (``usage.services.usage_event_store_one``). The usage after it is the one
    read plus the event, on each line whose window it occurred in: nothing else can have
    changed under the lock. Crossings are looked for, in the same transaction, only on
    the lines the event took past a threshold (``reaches_more``): a line that stood past
    it already was recorded then (but see ``MAX_FUTURE`` below).
    """
    labels = labels_from_key(event.labels_key)
    with transaction.atomic():
        usage_lock(pairs=[(event.account_id, event.metric)])
        found = account_lines_current(
            account_id=event.account_id,
            metric=event.metric,
            labels=labels,
            now=now,
            reservations=False,
            columns={"counted_keys": counted_keys_column(metric=event.metric)},
        )
        if found is None or not found[0].is_active:
            raise EventsInvalid({"account": [_("Unknown or inactive account.")]})
        account, lines = found
        counted = counted_keys_of(account.__dict__.pop("counted_keys", None))
        zone = account.zone
        stored = usage_event_store_one(event=event, zone=zone, counted=counted, now=now)
        after = lines
        if stored:
            after = [
                line_with_event(
                    line, occurred_at=event.occurred_at, quantity_milli=event.quantity_milli
                )
                for line in lines
            ]
            # Only a line that reaches a threshold it had not reached before can cross; but
            # a window that began less than MAX_FUTURE ago may hold events recorded before
            # it began, ahead of their time, whose crossing nothing recorded: such a line
            # looks for every threshold it has reached, as a batch does.
            recent = now - MAX_FUTURE
            crossed = [
                line
                for line, earlier in zip(after, lines, strict=True)
                if reaches_more(before=earlier.usage, after=line.usage)
                or (line.window.start > recent and line.usage.status != Status.OK)
            ]
            if crossed:
                crossings_record(
                    usages=[line.usage for line in crossed if line.is_whole_metric_month],
                    lines={account: [line for line in crossed if not line.is_whole_metric_month]},
                    zones={account.pk: zone},
                    now=now,
                )
        monthly = next(line.usage for line in after if line.is_whole_metric_month)
    return IngestResult(accepted=int(stored), duplicates=int(not stored), usage=[monthly])
