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
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

from anymail.exceptions import AnymailError, AnymailRequestsAPIError
from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import DatabaseError, connection, transaction
from django.db.models import F, Q
from django.utils import timezone
from django.utils.translation import gettext_lazy as _
from kombu.exceptions import OperationalError

from accounts.metrics import METRICS
from accounts.models import Account, Language, Level, Plan, Recipient, validate_recipient_email
from config.request_ids import current_correlation_id, current_request_id
from usage.locks import usage_lock
from usage.periods import Period, period_containing
from usage.selectors import MetricUsage, Status, usage_for, usage_received_before

from .emails import threshold_message
from .models import Delivery, EarlyTrackingEvent, Notification
from .outbox import publish_later

logger = logging.getLogger(__name__)

NOTIFICATION_TABLE = Notification._meta.db_table
# The namespace of the advisory locks taken on the provider's message ids (any constant).
_MESSAGE_ID_LOCKS = 0x55534D47


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
        if usage.reaches(threshold):
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

    Call inside the transaction that changed usage or limits, after ``usage_lock``. Only
    the current period notifies: usages of another period must not be passed. Each new
    notification gets a delivery per recipient of its level, and its sending task is
    enqueued after commit. ``zones`` (account id to time zone) saves a query when the
    caller has them.
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
    return _crossings_insert(crossings, now)


def _crossings_insert(crossings: list[Crossing], now: datetime) -> list[int]:
    """Insert the crossings the ledger lacks, with their deliveries; enqueue after commit."""
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
            "notification %s: account %s reached %s %s of %s (period %s)",
            pk,
            crossing.account_id,
            crossing.level,
            crossing.threshold,
            crossing.metric,
            crossing.period,
        )
    transaction.on_commit(lambda: notifications_publish(ids))
    return ids


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
            account_id__in={u.account_id for u in reached},
            period__in={closed[u.account_id].first_day for u in reached},
        ).values_list("account_id", "metric", "level", "period", "threshold")
    )

    def missing(usage: MetricUsage) -> list[Crossing]:
        return [
            c
            for c in crossings_of(usage, closed[usage.account_id].first_day)
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


def thresholds_evaluate(
    *,
    account_ids: Iterable[uuid.UUID] | None = None,
    now: datetime | None = None,
    after_limit_change: bool = False,
) -> list[int]:
    """Record every crossing not yet notified; returns the ids of the notifications created.

    The sweep (and ``evaluate_thresholds``) looks at the current period, and at the period
    that just closed during ``NOTIFICATIONS_CLOSED_PERIOD_GRACE`` (a crossing reached
    before the end whose recording was lost). ``after_limit_change``: called inside the
    transaction that changed limits or extensions; takes the usage locks first, so that
    usage recorded concurrently is seen, and looks at the current period only.
    Reads usage from counters in one query (``usage_for``), whatever the number of accounts.
    """
    now = now or timezone.now()
    # Only Enterprise accounts are limited: others keep their limits, inactive.
    accounts = Account.objects.filter(is_active=True, plan=Plan.ENTERPRISE, limits__isnull=False)
    if account_ids is not None:
        accounts = accounts.filter(pk__in=list(account_ids))
    periods = {
        pk: period_containing(now, ZoneInfo(tz))
        for pk, tz in accounts.values_list("id", "timezone").distinct()
    }
    if not periods:
        return []
    with transaction.atomic():
        if after_limit_change:
            usage_lock(pairs=[(pk, metric) for pk in sorted(periods) for metric in METRICS])
        reached = [u for u in usage_for(periods=periods).values() if u.status != Status.OK]
        created = crossings_record(usages=reached, now=now)
        if not after_limit_change:
            created += _crossings_insert(_closed_period_crossings(periods, now), now)
    return created


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
    """Send every queued delivery of a notification once; the caller retries ``retry`` ones.

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
    """Hand the deliveries in ``status`` (queued or failed), of every account or of one, to
    the workers again; returns how many deliveries, in how many notifications.

    Failed deliveries are queued again first (their attempts kept, as the admin's resend
    does); queued ones are only enqueued again, for when their task was lost. The claim
    makes a task that finds its delivery taken by another harmless.
    """
    if status not in (Delivery.Status.QUEUED, Delivery.Status.FAILED):
        raise ValueError(f"Only queued or failed deliveries can be handed over, not {status!r}.")
    chosen = Delivery.objects.filter(status=status)
    if account_id is not None:
        chosen = chosen.filter(notification__account_id=account_id)
    with transaction.atomic():
        rows = list(chosen.values_list("pk", "notification_id"))
        count = len(rows)
        if status == Delivery.Status.FAILED and rows:
            count = Delivery.objects.filter(
                pk__in=[pk for pk, _notification_id in rows], status=status
            ).update(status=Delivery.Status.QUEUED, updated_at=timezone.now())
        notification_ids = sorted({notification_id for _pk, notification_id in rows})
        transaction.on_commit(lambda: notifications_enqueue(notification_ids))
    return Requeued(deliveries=count, notifications=len(notification_ids))


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
    ids = sorted(recovered | set(lost) | set(unpublished))
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
