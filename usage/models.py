"""Raw usage events, the daily counters read for period totals, and capacity extensions.

Quantities are stored as integers in thousandths of the metric's unit (``*_milli``):
exact on every database (SQLite keeps decimals as floating point) and cheap to add.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from django.conf import settings
from django.db import models
from django.utils.translation import gettext, ngettext, pgettext_lazy
from django.utils.translation import gettext_lazy as _

from accounts.labels import labels_from_key, labels_text
from accounts.metrics import METRICS, Metric
from accounts.models import Account, ScopedLimit
from accounts.windows import PeriodKind
from config.dates import date_text, datetime_text, month_text
from config.request_ids import MAX_LENGTH, current_correlation_id, current_request_id

MILLI = 1000

# The most one account may record per metric and local day, in the metric's unit; a batch
# that would pass it is refused whole (``backoffice.services.usage_events_record``). It keeps
# every sum within a signed 64-bit integer (9.22 x 10^18), the type of every quantity
# column and what SQLite's SUM() holds: a day is at most 10^17 thousandths, a counter
# being added to at most 10^17 + 1000 events x 10^15 = 1.1 x 10^18, a month of 31 days
# 3.1 x 10^18, and a day rebuilt after the account's time zone changed at most 3 x 10^17
# (one local day overlaps at most three of the former ones).
DAILY_LIMIT = 10**14
DAILY_LIMIT_MILLI = DAILY_LIMIT * MILLI


def _metric_label(metric: str) -> str:
    spec = METRICS.get(metric)
    return str(spec.label) if spec else metric


def labels_key_text(key: str) -> str:
    """A canonical label key (``accounts.labels.labels_key``) for people: ``Model: large``."""
    try:
        return labels_text(labels_from_key(key))
    except ValueError:
        return key


def _counter_text(metric: str, labels: str, when: str, quantity_milli: int) -> str:
    from .quantities import amount_text

    text = gettext("%(metric)s, %(when)s: %(amount)s") % {
        "metric": _metric_label(metric),
        "when": when,
        "amount": amount_text(quantity_milli, metric),
    }
    return f"{text} ({labels_key_text(labels)})" if labels else text


def from_milli(value: int) -> Decimal:
    """Thousandths to the metric's unit, exactly."""
    return Decimal(value).scaleb(-3).normalize() if value % MILLI else Decimal(value // MILLI)


class UsageEvent(models.Model):
    """One report of usage by a service; ``event_id`` is unique per account (idempotency).

    ``request_id`` and ``correlation_id`` are those of the request that recorded it
    (``config.request_ids``), empty when it was recorded outside one.
    """

    id = models.BigAutoField(primary_key=True)
    account = models.ForeignKey(
        Account,
        on_delete=models.CASCADE,
        related_name="usage_events",
        db_index=False,  # the unique (account, event_id) index serves lookups by account
        verbose_name=_("account"),
    )
    event_id = models.CharField(_("event id"), max_length=128)
    metric = models.CharField(_("metric"), max_length=64, choices=Metric.choices)
    quantity_milli = models.BigIntegerField(_("quantity (thousandths)"))
    occurred_at = models.DateTimeField(_("occurred at"))
    received_at = models.DateTimeField(_("received at"))
    source = models.CharField(_("source"), max_length=64, blank=True, default="")
    metadata = models.JSONField(_("metadata"), default=dict, blank=True)
    labels = models.JSONField(
        _("labels"),
        default=dict,
        blank=True,
        db_default={},
        help_text=_(
            "At most four pairs (technology, vendor, operation, model); part of the event."
        ),
    )
    request_id = models.CharField(
        _("request id"),
        max_length=MAX_LENGTH,
        blank=True,
        default=current_request_id,
        db_default="",
    )
    correlation_id = models.CharField(
        _("correlation id"),
        max_length=MAX_LENGTH,
        blank=True,
        default=current_correlation_id,
        db_default="",
    )

    class Meta:
        verbose_name = _("usage event")
        verbose_name_plural = _("usage events")
        constraints = [
            models.UniqueConstraint(
                fields=["account", "event_id"], name="usage_event_unique_id_per_account"
            ),
            models.CheckConstraint(
                condition=models.Q(quantity_milli__gt=0), name="usage_event_quantity_positive"
            ),
        ]
        indexes = [
            models.Index(fields=["account", "occurred_at"], name="usage_event_account_time"),
            models.Index(fields=["occurred_at"], name="usage_event_time"),
        ]
        permissions = [("check_usage", _("Can ask whether more usage may be processed"))]

    def __str__(self) -> str:
        return self.event_id

    @property
    def quantity(self) -> Decimal:
        return from_milli(self.quantity_milli)


# The longest canonical label key (``accounts.labels.labels_key``): four pairs of a key, ``=``
# and 64 characters, joined by three ``;``.
LABELS_KEY_LENGTH = 300


class UsageCounter(models.Model):
    """The sum of an account's events for one metric, one label key and one local day.

    ``labels`` is ``""`` (every event of the metric) or a label key that the account's
    scoped limits use (``UsageCounterKey``): an event adds to ``""`` and to each counted
    key whose pairs its labels contain, so a line scoped to some labels reads its own rows.
    A period's ``used`` is the sum of its days' counters keyed ``""``: reading usage never
    scans events.
    """

    account = models.ForeignKey(
        Account,
        on_delete=models.CASCADE,
        related_name="usage_counters",
        db_index=False,
        verbose_name=_("account"),
    )
    metric = models.CharField(_("metric"), max_length=64, choices=Metric.choices)
    labels = models.CharField(
        _("labels"), max_length=LABELS_KEY_LENGTH, blank=True, default="", db_default=""
    )
    day = models.DateField(_("day"))
    quantity_milli = models.BigIntegerField(_("quantity (thousandths)"), default=0)
    updated_at = models.DateTimeField(_("updated at"))

    class Meta:
        verbose_name = _("usage counter")
        verbose_name_plural = _("usage counters")
        constraints = [
            models.UniqueConstraint(
                fields=["account", "metric", "labels", "day"], name="usage_counter_one_per_day"
            ),
        ]

    def __str__(self) -> str:
        return _counter_text(self.metric, self.labels, date_text(self.day), self.quantity_milli)

    @property
    def quantity(self) -> Decimal:
        return from_milli(self.quantity_milli)


class UsageHourCounter(models.Model):
    """The sum of an account's events for one metric, one label key and one local hour.

    ``hour`` is the start of the ``hour`` window (``accounts.windows``) in UTC, which tells
    the two hours of a repeated local hour apart; ``day`` is the local day it belongs to.
    """

    account = models.ForeignKey(
        Account,
        on_delete=models.CASCADE,
        related_name="+",
        db_index=False,
        verbose_name=_("account"),
    )
    metric = models.CharField(_("metric"), max_length=64, choices=Metric.choices)
    labels = models.CharField(
        _("labels"), max_length=LABELS_KEY_LENGTH, blank=True, default="", db_default=""
    )
    hour = models.DateTimeField(_("hour"))
    day = models.DateField(_("day"))
    quantity_milli = models.BigIntegerField(_("quantity (thousandths)"), default=0)
    updated_at = models.DateTimeField(_("updated at"))

    class Meta:
        verbose_name = _("hourly usage counter")
        verbose_name_plural = _("hourly usage counters")
        constraints = [
            models.UniqueConstraint(
                fields=["account", "metric", "labels", "hour"], name="usage_counter_one_per_hour"
            ),
        ]
        indexes = [models.Index(fields=["account", "day"], name="usage_hour_counter_day")]

    def __str__(self) -> str:
        # In UTC, as stored: naming the account's zone would cost a query per row.
        when = datetime_text(self.hour, "UTC")
        return _counter_text(self.metric, self.labels, when, self.quantity_milli)

    @property
    def quantity(self) -> Decimal:
        return from_milli(self.quantity_milli)


class UsageCounterKey(models.Model):
    """A label key whose counters an account keeps for one metric: one its scoped limits use.

    Recording adds each event to the day and hour counters keyed ``""`` and to those of the
    account's counted keys that its labels contain, nothing else: what a batch writes grows
    with the lines, never with the label subsets of its events. ``since`` is the first
    local day from which the key's counters hold every event (``None``: all days); a line
    that needs earlier days fills them from the events when it is saved
    (``usage.services.counter_keys_sync``).
    """

    account = models.ForeignKey(
        Account,
        on_delete=models.CASCADE,
        related_name="+",
        db_index=False,
        verbose_name=_("account"),
    )
    metric = models.CharField(_("metric"), max_length=64, choices=Metric.choices)
    labels = models.CharField(_("labels"), max_length=LABELS_KEY_LENGTH)
    since = models.DateField(
        _("since"),
        null=True,
        blank=True,
        help_text=_("The first local day its counters are complete from; empty: every day."),
    )

    class Meta:
        verbose_name = _("counted label key")
        verbose_name_plural = _("counted label keys")
        constraints = [
            models.UniqueConstraint(
                fields=["account", "metric", "labels"], name="usage_counter_key_once"
            ),
        ]

    def __str__(self) -> str:
        return gettext("%(metric)s: %(labels)s") % {
            "metric": _metric_label(self.metric),
            "labels": labels_key_text(self.labels),
        }


class UsageLabelSet(models.Model):
    """A label set that an account's events of one metric carried on one local day.

    The list and its count for the bound ``USAGE_MAX_LABEL_SETS`` (``usage_events_record``).
    """

    account = models.ForeignKey(
        Account,
        on_delete=models.CASCADE,
        related_name="+",
        db_index=False,
        verbose_name=_("account"),
    )
    metric = models.CharField(_("metric"), max_length=64, choices=Metric.choices)
    day = models.DateField(_("day"))
    labels = models.CharField(_("labels"), max_length=LABELS_KEY_LENGTH)

    class Meta:
        verbose_name = _("label set")
        verbose_name_plural = _("label sets")
        constraints = [
            models.UniqueConstraint(
                fields=["account", "metric", "day", "labels"], name="usage_label_set_once_per_day"
            ),
        ]
        indexes = [models.Index(fields=["day"], name="usage_label_set_day")]

    def __str__(self) -> str:
        return gettext("%(metric)s, %(day)s: %(labels)s") % {
            "metric": _metric_label(self.metric),
            "day": date_text(self.day),
            "labels": labels_key_text(self.labels) or gettext("no labels"),
        }


def monthly_line_text(metric: str) -> str:
    """A whole-metric monthly line for people: ``Text tokens, Calendar month``."""
    spec = METRICS.get(metric)
    return f"{spec.label if spec else metric}, {PeriodKind.MONTH.label}"


class Extension(models.Model):
    """A one-off raise of one limit line's blocked threshold for one period of that line.

    ``scoped_limit`` is the line: ``None`` for the whole-metric monthly line of ``metric``,
    whose period is the month starting on ``period`` (which may be a later month). For a
    scoped line, ``period_start`` is the start of the line's period it raises (for a
    ``rolling`` line, the start of the window's last day, the key of SPEC 11.5: the window
    moves at the next local midnight and the extension no longer counts), and ``period`` the
    local day that instant falls on. An extension goes with its line: removing a scoped
    limit removes its extensions (``CASCADE``), since there is no cap left to raise and
    ``SET_NULL`` would turn them into extensions of the monthly line; the grant stays in
    the account's admin history and the line's removal in the scoped limit's history.
    """

    account = models.ForeignKey(
        Account, on_delete=models.CASCADE, related_name="extensions", verbose_name=_("account")
    )
    metric = models.CharField(_("metric"), max_length=64, choices=Metric.choices)
    scoped_limit = models.ForeignKey(
        ScopedLimit,
        on_delete=models.CASCADE,
        null=True,
        blank=True,
        related_name="extensions",
        db_index=False,  # the (scoped_limit, period_start) index serves lookups by line
        verbose_name=_("scoped limit"),
        help_text=_("Empty for the monthly limit of the whole metric."),
    )
    period = models.DateField(
        _("period"),
        help_text=_(
            "The first day of the month the extension applies to (monthly limit of the whole "
            "metric), or the day the scoped limit's period starts."
        ),
    )
    period_start = models.DateTimeField(
        _("period start"),
        null=True,
        blank=True,
        help_text=_("The start of the scoped limit's period the extension applies to."),
    )
    amount = models.PositiveBigIntegerField(
        _("amount"), help_text=_("Added to the blocked threshold for this period only.")
    )
    reason = models.TextField(_("reason"))
    granted_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
        verbose_name=_("granted by"),
    )
    granted_at = models.DateTimeField(_("granted at"), auto_now_add=True)

    class Meta:
        verbose_name = _("extension")
        verbose_name_plural = _("extensions")
        ordering = ["-period", "metric", "-granted_at"]
        indexes = [
            models.Index(fields=["account", "period", "metric"], name="extension_account_period"),
            models.Index(fields=["scoped_limit", "period_start"], name="extension_line_period"),
        ]
        constraints = [
            models.CheckConstraint(condition=models.Q(amount__gt=0), name="extension_positive"),
            # ``isnull`` spelled out on both sides: a CHECK whose condition is NULL passes.
            models.CheckConstraint(
                condition=models.Q(scoped_limit__isnull=True, period_start__isnull=True)
                | models.Q(scoped_limit__isnull=False, period_start__isnull=False),
                name="extension_period_start_iff_scoped",
            ),
        ]

    def __str__(self) -> str:
        from .quantities import threshold_amount_text

        return gettext("%(line)s: +%(amount)s (%(period)s)") % {
            # The month names a monthly line's period: its metric names the line.
            "line": self.line_text() if self.scoped_limit_id else _metric_label(self.metric),
            "amount": threshold_amount_text(self.amount, self.metric),
            "period": self.period_text(),
        }

    def line_text(self) -> str:
        """The line for people, as the admin offers it: ``Text tokens, Calendar month``."""
        if self.scoped_limit_id is None:
            return monthly_line_text(self.metric)
        return self.scoped_limit.line_text()

    def period_text(self) -> str:
        """The period for people: the month, or the start of the line's period in the
        account's time zone, named."""
        if self.period_start is None:
            return month_text(self.period)
        return datetime_text(self.period_start, self.account.timezone)

    @property
    def period_key(self) -> str:
        """The period as SPEC 11.5 names it: ``YYYY-MM`` for the monthly line, else the
        start instant of the line's period with the account's local offset."""
        if self.period_start is None:
            return f"{self.period:%Y-%m}"
        return self.period_start.astimezone(self.account.zone).isoformat()


class CounterRepair(models.Model):
    """A counter found different from the sum of its events, and set right."""

    account = models.ForeignKey(
        Account, on_delete=models.CASCADE, related_name="+", verbose_name=_("account")
    )
    metric = models.CharField(_("metric"), max_length=64, choices=Metric.choices)
    labels = models.CharField(
        _("labels"), max_length=LABELS_KEY_LENGTH, blank=True, default="", db_default=""
    )
    day = models.DateField(_("day"))
    hour = models.DateTimeField(
        _("hour"), null=True, blank=True, help_text=_("Set for an hourly counter.")
    )
    found_milli = models.BigIntegerField(_("counter found (thousandths)"))
    expected_milli = models.BigIntegerField(_("sum of events (thousandths)"))
    repaired_at = models.DateTimeField(_("repaired at"), auto_now_add=True)
    repaired_by = models.CharField(
        _("repaired by"), max_length=64, help_text=_("The task or command that repaired it.")
    )

    class Meta:
        verbose_name = _("counter repair")
        verbose_name_plural = _("counter repairs")
        ordering = ["-repaired_at"]

    def __str__(self) -> str:
        from .quantities import amount_text

        return gettext("%(metric)s, %(day)s: %(found)s → %(expected)s") % {
            "metric": _metric_label(self.metric),
            "day": date_text(self.day),
            "found": amount_text(self.found_milli, self.metric),
            "expected": amount_text(self.expected_milli, self.metric),
        }


class EventPurge(models.Model):
    """A deletion of the raw events of every local day before ``before`` (counters are kept).

    Counters of those days can no longer be checked against their events, so
    ``counters_rebuild`` leaves every day before the greatest ``before`` alone.
    """

    before = models.DateField(
        _("before"),
        help_text=_("Events of earlier days, in each account's time zone, are deleted."),
    )
    purged_at = models.DateTimeField(_("purged at"), auto_now_add=True)
    deleted = models.PositiveBigIntegerField(_("events deleted"), default=0)

    class Meta:
        verbose_name = _("event purge")
        verbose_name_plural = _("event purges")
        ordering = ["-purged_at"]

    def __str__(self) -> str:
        return ngettext(
            "Events before %(day)s: %(count)s deleted",
            "Events before %(day)s: %(count)s deleted",
            self.deleted,
        ) % {"day": date_text(self.before), "count": self.deleted}


class Reservation(models.Model):
    """Capacity held for usage about to be recorded (SPEC 12.1), unique per account by id.

    ``status`` is what was last written: an ``active`` row past ``expires_at`` is expired
    and holds nothing, whether or not the tidying task has written ``expired`` yet
    (``state_at``). ``labels`` say which lines it holds capacity on, as an event's would.
    """

    class Status(models.TextChoices):
        ACTIVE = "active", pgettext_lazy("reservation", "active")
        SETTLED = "settled", pgettext_lazy("reservation", "settled")
        RELEASED = "released", pgettext_lazy("reservation", "released")
        EXPIRED = "expired", pgettext_lazy("reservation", "expired")

    account = models.ForeignKey(
        Account,
        on_delete=models.CASCADE,
        related_name="reservations",
        db_index=False,  # the unique (account, reservation_id) index serves lookups by account
        verbose_name=_("account"),
    )
    reservation_id = models.CharField(_("reservation id"), max_length=128)
    metric = models.CharField(_("metric"), max_length=64, choices=Metric.choices)
    quantity_milli = models.BigIntegerField(_("quantity (thousandths)"))
    labels = models.JSONField(_("labels"), default=dict, blank=True)
    labels_key = models.CharField(
        _("labels key"), max_length=LABELS_KEY_LENGTH, blank=True, default=""
    )
    status = models.CharField(
        _("status"), max_length=16, choices=Status.choices, default=Status.ACTIVE
    )
    created_at = models.DateTimeField(_("created at"))
    expires_at = models.DateTimeField(_("expires at"))
    ended_at = models.DateTimeField(
        _("ended at"),
        null=True,
        blank=True,
        help_text=_("When it was settled, released or marked expired."),
    )
    settled_by = models.CharField(
        _("settled by event"),
        max_length=128,
        blank=True,
        default="",
        help_text=_("The id of the usage event that settled it."),
    )

    class Meta:
        verbose_name = _("reservation")
        verbose_name_plural = _("reservations")
        constraints = [
            models.UniqueConstraint(
                fields=["account", "reservation_id"], name="reservation_unique_id_per_account"
            ),
            models.CheckConstraint(
                condition=models.Q(quantity_milli__gt=0), name="reservation_quantity_positive"
            ),
        ]
        indexes = [
            # What every read of capacity scans: the account's active reservations of a metric.
            models.Index(
                fields=["account", "metric", "expires_at"],
                condition=models.Q(status="active"),
                name="reservation_active",
            ),
            models.Index(
                fields=["expires_at"],
                condition=models.Q(status="active"),
                name="reservation_active_expiry",
            ),
        ]

    def __str__(self) -> str:
        return self.reservation_id

    @property
    def quantity(self) -> Decimal:
        return from_milli(self.quantity_milli)

    def state_at(self, now: datetime) -> str:
        """The status at ``now``: an active reservation past ``expires_at`` is expired."""
        if self.status == self.Status.ACTIVE and self.expires_at <= now:
            return self.Status.EXPIRED.value
        return str(self.status)
