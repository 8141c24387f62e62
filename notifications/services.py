"""Threshold crossings to notifications, and notifications to e-mails (SPEC section 6).

``crossings_record`` runs inside the transaction that changed usage or limits: it inserts
one ledger row per threshold reached (``ON CONFLICT DO NOTHING``, so concurrent writers
create exactly one) with a delivery per recipient, and enqueues the sending task once
that transaction commits. ``notification_deliver`` is what the task runs: it claims each
delivery with a conditional update, so two workers never send the same message.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import validate_email
from django.db import connection, transaction
from django.db.models import F, Q
from django.utils import timezone
from django.utils.translation import gettext_lazy as _
from kombu.exceptions import OperationalError

from accounts.metrics import METRICS
from accounts.models import Account, Language, Level, Recipient
from config.request_ids import current_correlation_id, current_request_id
from usage.periods import period_containing
from usage.selectors import MetricUsage, Status, usage_for

from .emails import threshold_message
from .models import Delivery, Notification

logger = logging.getLogger(__name__)

NOTIFICATION_TABLE = Notification._meta.db_table
# A delivery claimed this long ago and still "sending" belongs to a worker that died.
STUCK_AFTER = timedelta(minutes=10)


@dataclass(frozen=True)
class Crossing:
    account_id: uuid.UUID
    metric: str
    level: str
    period: date
    threshold: int
    used_milli: int


def crossings_of(usage: MetricUsage, period: date) -> list[Crossing]:
    """The thresholds ``usage`` has reached (``>=``, an exact hit included)."""
    found = []
    reached = {Status.WARNING: usage.warning, Status.BLOCKED: usage.effective_blocked}
    for level, threshold in reached.items():
        if threshold is not None and usage.used_milli >= threshold * 1000:
            found.append(
                Crossing(usage.account_id, usage.metric, level, period, threshold, usage.used_milli)
            )
    return found


def _insert_notifications(crossings: list[Crossing], now: datetime) -> list[tuple[int, Crossing]]:
    """Insert the crossings not yet in the ledger; returns ``(id, crossing)`` of new ones.

    Each row carries the current request and correlation ids (``config.request_ids``).
    """
    crossings = sorted(
        crossings, key=lambda c: (c.account_id, c.metric, c.level, c.period, c.threshold)
    )
    adapt_dt = connection.ops.adapt_datetimefield_value
    request_id, correlation_id = current_request_id(), current_correlation_id()
    placeholders = ", ".join(["(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"] * len(crossings))
    params: list[object] = []
    for c in crossings:
        account = c.account_id if connection.vendor == "postgresql" else c.account_id.hex
        params += [account, c.metric, c.level, c.period, c.threshold, c.used_milli, adapt_dt(now)]
        params += [False, request_id, correlation_id]
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {NOTIFICATION_TABLE} "
            "(account_id, metric, level, period, threshold, used_milli, created_at, is_test,"
            " request_id, correlation_id) "
            f"VALUES {placeholders} "
            "ON CONFLICT (account_id, metric, level, period, threshold) WHERE NOT is_test "
            "DO NOTHING RETURNING id, account_id, metric, level",
            params,
        )
        rows = cursor.fetchall()
    by_key = {(c.account_id.hex, c.metric, c.level): c for c in crossings}
    return [
        (pk, by_key[(uuid.UUID(str(account)).hex, metric, level)])
        for pk, account, metric, level in rows
    ]


def crossings_record(
    *,
    usages: Iterable[MetricUsage],
    zones: dict[uuid.UUID, ZoneInfo] | None = None,
    now: datetime | None = None,
) -> list[int]:
    """Record the current-period crossings of ``usages``; returns the new notification ids.

    Call inside the transaction that changed usage or limits. Only the current period
    notifies: usages of another period must not be passed. Each new notification gets a
    delivery per recipient of its level, and its sending task is enqueued after commit.
    ``zones`` (account id to time zone) saves a query when the caller has them.
    """
    now = now or timezone.now()
    usages = list(usages)
    if not usages:
        return []
    if zones is None:
        zones = {
            pk: ZoneInfo(name)
            for pk, name in Account.objects.filter(
                pk__in={u.account_id for u in usages}
            ).values_list("id", "timezone")
        }
    crossings = []
    for usage in usages:
        period = period_containing(now, zones[usage.account_id]).first_day
        crossings.extend(crossings_of(usage, period))
    if not crossings:
        return []
    created = _insert_notifications(crossings, now)
    if not created:
        return []
    recipients: dict[tuple[uuid.UUID, str], list[Recipient]] = {}
    for recipient in Recipient.objects.filter(
        account_id__in={crossing.account_id for _pk, crossing in created}
    ).order_by("id"):
        recipients.setdefault((recipient.account_id, recipient.level), []).append(recipient)
    Delivery.objects.bulk_create(
        Delivery(notification_id=pk, email=r.email, language=r.language)
        for pk, crossing in created
        for r in recipients.get((crossing.account_id, crossing.level), [])
    )
    ids = [pk for pk, _crossing in created]
    for pk, crossing in created:
        logger.info(
            "notification %s: account %s reached %s %s of %s",
            pk,
            crossing.account_id,
            crossing.level,
            crossing.threshold,
            crossing.metric,
        )
    transaction.on_commit(lambda: notifications_enqueue(ids))
    return ids


def notifications_enqueue(notification_ids: Iterable[int]) -> None:
    """Hand each notification to a worker; a broker outage is logged, never raised.

    What fails to be enqueued here is picked up by the periodic sweep.
    """
    from .tasks import deliver_notification

    for notification_id in notification_ids:
        try:
            deliver_notification.apply_async(args=[notification_id], retry=False)
        except (OperationalError, OSError):  # the broker is down: the sweep will enqueue it
            logger.warning("could not enqueue notification %s; the sweep will", notification_id)


def thresholds_evaluate(
    *, account_ids: Iterable[uuid.UUID] | None = None, now: datetime | None = None
) -> list[int]:
    """Record every current-period crossing not yet notified (the sweep, and limit changes).

    Reads usage from counters in one query (``usage_for``), whatever the number of
    accounts. Returns the ids of the notifications it created.
    """
    now = now or timezone.now()
    accounts = Account.objects.filter(is_active=True, limits__isnull=False)
    if account_ids is not None:
        accounts = accounts.filter(pk__in=list(account_ids))
    periods = {
        pk: period_containing(now, ZoneInfo(tz))
        for pk, tz in accounts.values_list("id", "timezone").distinct()
    }
    created: list[int] = []
    with transaction.atomic():
        usages = usage_for(periods=periods).values() if periods else []
        reached = [u for u in usages if u.status != Status.OK]
        created = crossings_record(usages=reached, now=now)
    return created


def _is_transient(error: Exception) -> bool:
    from anymail.exceptions import AnymailAPIError, AnymailRequestsAPIError

    status = getattr(error, "status_code", None)
    if isinstance(error, AnymailRequestsAPIError) and status is None:
        return True  # no answer at all: network
    if status is not None:
        return status == 429 or status >= 500
    if isinstance(error, AnymailAPIError):
        return False
    return isinstance(error, OSError | TimeoutError | ConnectionError)


def _describe(error: Exception) -> str:
    """The error as text for the admin; never raises, whatever the exception carries."""
    try:
        return str(error) or type(error).__name__
    except Exception:
        return type(error).__name__


@dataclass(frozen=True)
class DeliveryOutcome:
    sent: int
    failed: int
    retry: int


def notification_deliver(*, notification_id: int, final_attempt: bool = False) -> DeliveryOutcome:
    """Send every queued delivery of a notification once; the caller retries ``retry`` ones.

    Each delivery is claimed with a conditional update (queued -> sending); only the
    worker whose update changed the row sends it. On the final attempt a transient error
    is recorded as a failure, visible in the admin, which can resend.
    """
    notification = Notification.objects.select_related("account").filter(pk=notification_id).first()
    if notification is None:
        return DeliveryOutcome(0, 0, 0)
    sent = failed = retry = 0
    for delivery in notification.deliveries.filter(status=Delivery.Status.QUEUED):
        now = timezone.now()
        claimed = Delivery.objects.filter(pk=delivery.pk, status=Delivery.Status.QUEUED).update(
            status=Delivery.Status.SENDING,
            claimed_at=now,
            attempts=F("attempts") + 1,
            updated_at=now,
        )
        if claimed != 1:
            continue  # another worker has it
        try:
            message = threshold_message(notification=notification, delivery=delivery)
            message.send()
        except Exception as error:
            transient = _is_transient(error)
            status = (
                Delivery.Status.QUEUED
                if transient and not final_attempt
                else Delivery.Status.FAILED
            )
            Delivery.objects.filter(pk=delivery.pk).update(
                status=status, last_error=_describe(error)[:2000], updated_at=timezone.now()
            )
            logger.warning("delivery %s to %s failed: %s", delivery.pk, delivery.email, error)
            if status == Delivery.Status.QUEUED:
                retry += 1
            else:
                failed += 1
            continue
        status_info = getattr(message, "anymail_status", None)
        message_id = status_info.message_id if status_info else None
        Delivery.objects.filter(pk=delivery.pk).update(
            status=Delivery.Status.SENT,
            esp_message_id="" if message_id is None else str(message_id),
            sent_at=timezone.now(),
            last_error="",
            updated_at=timezone.now(),
        )
        sent += 1
    return DeliveryOutcome(sent, failed, retry)


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


def deliveries_recover(*, now: datetime | None = None) -> list[int]:
    """Re-enqueue what a lost task left undone; returns the notification ids enqueued.

    Deliveries stuck in "sending" (a worker died) go back to "queued"; notifications with
    deliveries queued for longer than a task should take are enqueued again (the claim
    makes a second task harmless).
    """
    now = now or timezone.now()
    Delivery.objects.filter(
        status=Delivery.Status.SENDING, claimed_at__lt=now - STUCK_AFTER
    ).update(status=Delivery.Status.QUEUED, updated_at=now)
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
    ids = sorted(set(lost))
    notifications_enqueue(ids)
    return ids


def notification_send_test(*, account: Account, level: str, language: str, to: str) -> Delivery:
    """Send a sample notification to ``to`` through the real path (task, provider, ledger).

    The sample uses the account's current threshold and usage of its first limited metric
    (or made-up figures when it has none); it is recorded as a test, outside the
    exactly-once ledger.
    """
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
    validate_email(to)
    now = timezone.now()
    period = period_containing(now, account.zone)
    usages = usage_for(periods={account.pk: period})
    limited = [
        u
        for u in usages.values()
        if (u.warning if level == Level.WARNING else u.effective_blocked) is not None
    ]
    if limited:
        sample = sorted(limited, key=lambda u: list(METRICS).index(u.metric))[0]
        metric = sample.metric
        threshold = sample.warning if level == Level.WARNING else sample.effective_blocked
        used_milli = sample.used_milli
    else:
        metric, threshold = "text_tokens", 1_000_000
        used_milli = threshold * (800 if level == Level.WARNING else 1000)
    with transaction.atomic():
        notification = Notification.objects.create(
            account=account,
            metric=metric,
            level=level,
            period=period.first_day,
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


def delivery_track(*, esp_message_id: str, event_type: str, description: str) -> int:
    """Apply one tracking event of the ESP to its delivery; returns how many changed (0 or 1).

    Other event types (opened, deferred...) and unknown message ids are ignored, as is an
    event that would move the delivery backwards (see ``_TRACKED``). The conditional
    update makes concurrent and out-of-order events safe.
    """
    if not esp_message_id or event_type not in _TRACKED:
        return 0
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
