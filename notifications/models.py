"""The notification ledger and the per-recipient deliveries of each notification."""

from __future__ import annotations

from django.db import models
from django.db.models.functions import Coalesce
from django.utils import timezone
from django.utils.translation import gettext, ngettext
from django.utils.translation import gettext_lazy as _

from accounts.labels import labels_from_key, labels_text
from accounts.metrics import METRICS, Metric
from accounts.models import LABELS_KEY_MAX_LENGTH, Account, Language, Level
from accounts.windows import PeriodKind
from config.request_ids import MAX_LENGTH, current_correlation_id, current_request_id
from usage.models import MILLI
from usage.quantities import quantity_with_unit

from .lines import period_text

# Lines shorter than a day: at most one e-mail per local day and level (SPEC 11.5).
SUB_DAY_KINDS = (PeriodKind.HOUR, PeriodKind.MINUTE)


class NoticeLevel(models.TextChoices):
    """What a notification says: a threshold reached (``warning``, ``blocked``, the levels of
    a limit, ``accounts.models.Level``), capacity given back to a blocked line (``restored``,
    SPEC 12.2) or a blocked threshold foreseen before the period ends (``forecast``, 12.3).
    The webhook endpoints subscribe to these levels (``notifications.hooks.LEVELS``)."""

    WARNING = Level.WARNING.value, Level.WARNING.label
    BLOCKED = Level.BLOCKED.value, Level.BLOCKED.label
    RESTORED = "restored", _("Restored")
    FORECAST = "forecast", _("Forecast")


class RestoredReason(models.TextChoices):
    """Why a blocked line is no longer blocked: what a restored notice says changed."""

    RAISED = "raised", _("Blocked threshold raised")
    CLEARED = "cleared", _("Blocked threshold cleared")
    REMOVED = "removed", _("Limit line removed")
    EXTENDED = "extended", _("Extension granted")
    NEW_PERIOD = "new_period", _("New period")


class Notification(models.Model):
    """A threshold of a limit line reached: exactly one row per line, level, period start and
    threshold (SPEC sections 6 and 11.5).

    The line is ``(account, metric, period_kind, window_days, labels_key)``: a whole-metric
    monthly line is ``month``, no days, no labels. ``period_start`` is the instant the
    line's period starts (for a ``rolling`` line, the local midnight of the day its window
    reached the threshold, see ``notifications.services.rolling_period_start``), and
    ``period`` its local day (the first day of a month, as before lines existed). The unique
    constraint is what makes "exactly once" hold across requests, workers and sweeps:
    whoever inserts the row first owns the e-mails; everyone else inserts nothing. For the
    blocked level, ``threshold`` is the effective blocked threshold (extensions included),
    so a raised threshold or a new extension re-arms it.

    ``recorded_only``: a crossing of an ``hour`` or ``minute`` line on a local day whose
    e-mail at that level went out already, through another notification of the line. It is
    kept (the admin lists it) and has no delivery; a second unique constraint lets one
    notification per line, level and local day be e-mailed. ``request_id`` and
    ``correlation_id`` are those of the request or task that recorded the crossing
    (``config.request_ids``), empty for the periodic sweep's.
    """

    account = models.ForeignKey(
        Account, on_delete=models.CASCADE, related_name="notifications", verbose_name=_("account")
    )
    metric = models.CharField(_("metric"), max_length=64, choices=Metric.choices)
    period_kind = models.CharField(
        _("period kind"),
        max_length=16,
        choices=PeriodKind.choices,
        default=PeriodKind.MONTH,
        db_default=PeriodKind.MONTH.value,
    )
    window_days = models.PositiveSmallIntegerField(
        _("window days"), null=True, blank=True, help_text=_("Rolling lines only.")
    )
    labels_key = models.CharField(
        _("labels"),
        max_length=LABELS_KEY_MAX_LENGTH,
        blank=True,
        default="",
        db_default="",
        help_text=_("The line's labels, key=value pairs sorted and joined by “;”."),
    )
    level = models.CharField(_("level"), max_length=16, choices=NoticeLevel.choices)
    period = models.DateField(
        _("period"),
        help_text=_(
            "The local day the period starts: the first day of a month, the Monday of a week,"
            " the day of a day, hour or minute; for a rolling window, the day it reached"
            " the threshold."
        ),
    )
    period_start = models.DateTimeField(_("period start"))
    threshold = models.BigIntegerField(_("threshold"))
    recorded_only = models.BooleanField(
        _("recorded only"),
        default=False,
        db_default=False,
        help_text=_(
            "A later crossing of an hour or minute line on a day whose e-mail for this level"
            " was already sent: recorded, not e-mailed."
        ),
    )
    used_milli = models.BigIntegerField(_("usage when reached (thousandths)"))
    restores = models.OneToOneField(
        "self",
        on_delete=models.CASCADE,
        null=True,
        blank=True,
        related_name="restored_by",
        verbose_name=_("restores"),
        help_text=_("Restored notices: the blocked notification this notice answers."),
    )
    projected_at = models.DateTimeField(
        _("projected at"),
        null=True,
        blank=True,
        help_text=_("Forecast notices: when the usage, at its rate so far, reaches the threshold."),
    )
    restored_reason = models.CharField(
        _("what changed"),
        max_length=16,
        choices=RestoredReason.choices,
        blank=True,
        default="",
        db_default="",
        help_text=_("Restored notices: why the line is no longer blocked."),
    )
    restored_threshold = models.BigIntegerField(
        _("blocked threshold now"),
        null=True,
        blank=True,
        help_text=_(
            "Restored notices: the line's effective blocked threshold once restored; empty"
            " when it has none (cleared or removed)."
        ),
    )
    created_at = models.DateTimeField(_("reached at"), auto_now_add=True)
    is_test = models.BooleanField(_("test"), default=False)
    published_at = models.DateTimeField(
        _("handed to the workers at"),
        null=True,
        blank=True,
        help_text=_("Empty while the broker has not taken its task: the sweep hands it over."),
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
        verbose_name = _("notification")
        verbose_name_plural = _("notifications")
        ordering = ["-created_at"]
        constraints = [
            # NULL window days would be distinct from one another in a plain unique index.
            models.UniqueConstraint(
                "account",
                "metric",
                "period_kind",
                Coalesce("window_days", models.Value(0)),
                "labels_key",
                "level",
                "period_start",
                "threshold",
                condition=models.Q(is_test=False),
                name="notification_once_per_crossing",
            ),
            models.UniqueConstraint(
                fields=["account", "metric", "period_kind", "labels_key", "level", "period"],
                condition=models.Q(
                    is_test=False, recorded_only=False, period_kind__in=SUB_DAY_KINDS
                ),
                name="notification_one_email_per_day",
            ),
            models.CheckConstraint(
                condition=models.Q(recorded_only=False) | models.Q(period_kind__in=SUB_DAY_KINDS),
                name="notification_recorded_only_sub_day",
            ),
            # One forecast per line and period, whatever the threshold (SPEC 12.3); one
            # restored notice per blocked notification is the one-to-one ``restores``.
            models.UniqueConstraint(
                "account",
                "metric",
                "period_kind",
                Coalesce("window_days", models.Value(0)),
                "labels_key",
                "period_start",
                condition=models.Q(is_test=False, level="forecast"),
                name="notification_forecast_once_per_period",
            ),
            models.CheckConstraint(
                condition=models.Q(
                    restores__isnull=True, level__in=["warning", "blocked", "forecast"]
                )
                | models.Q(restores__isnull=False, level="restored"),
                name="notification_restored_answers_blocked",
            ),
            models.CheckConstraint(
                condition=models.Q(projected_at__isnull=True) | models.Q(level="forecast"),
                name="notification_projected_at_only_forecast",
            ),
            # A restored notice says what changed; no other notice does.
            models.CheckConstraint(
                condition=models.Q(level="restored", restored_reason__in=RestoredReason.values)
                | models.Q(
                    ~models.Q(level="restored"), restored_reason="", restored_threshold=None
                ),
                name="notification_restored_reason",
            ),
        ]
        indexes = [
            models.Index(fields=["account", "-created_at"], name="notification_account"),
            # The outbox: what the sweep still has to hand to the broker.
            models.Index(
                fields=["created_at"],
                condition=models.Q(published_at__isnull=True),
                name="notification_unpublished",
            ),
        ]

    def __str__(self) -> str:
        """The line in words: ``Text tokens, warning at 40,000 tokens, day of 2 December
        2026, Model: large`` (the metric's label, the level, the threshold with its unit, the
        period, the labels)."""
        values = {
            "metric": METRICS[self.metric].label if self.metric in METRICS else self.metric,
            "level": self.get_level_display().lower(),
            "threshold": quantity_with_unit(self.threshold * MILLI, self.metric),
            "period": self.period_text(),
        }
        if self.level == NoticeLevel.RESTORED:
            # Its threshold is the blocked one it answers, not one it was restored "at".
            text = gettext("%(metric)s, restored after blocked at %(threshold)s, %(period)s")
        else:
            text = gettext("%(metric)s, %(level)s at %(threshold)s, %(period)s")
        text = text % values
        labels = self.labels
        return f"{text}, {labels_text(labels)}" if labels else text

    @property
    def labels(self) -> dict[str, str]:
        """The line's labels (``{}``: every event of the metric)."""
        return labels_from_key(self.labels_key)

    @property
    def is_sub_day(self) -> bool:
        return self.period_kind in SUB_DAY_KINDS

    @property
    def restored_remaining_milli(self) -> int | None:
        """A restored notice's capacity left when it was recorded: its blocked threshold now
        minus the usage then, never negative; ``None`` when the line has no cap any more."""
        if self.restored_threshold is None:
            return None
        return max(0, self.restored_threshold * MILLI - self.used_milli)

    @property
    def period_code(self) -> str:
        """``X-Usage-Period`` (SPEC 11.5): ``YYYY-MM`` for a month, else the period's start
        instant in ISO 8601, with the account's offset."""
        if self.period_kind == PeriodKind.MONTH:
            return f"{self.period:%Y-%m}"
        return self.period_start.astimezone(self.account.zone).isoformat()

    def period_text(self) -> str:
        """The period for people, in the active language (``notifications.lines``)."""
        return period_text(
            kind=self.period_kind,
            window_days=self.window_days,
            day=self.period,
            start=self.period_start,
            zone=self.account.zone,
        )

    def line_text(self) -> str:
        """The line's shape for people: ``Day``, ``Rolling window of 7 days, Model: large``."""
        if self.period_kind == PeriodKind.ROLLING:
            text = ngettext(
                "Rolling window of %(days)s day",
                "Rolling window of %(days)s days",
                self.window_days or 1,
            ) % {"days": self.window_days}
        else:
            text = str(PeriodKind(self.period_kind).label)
        labels = self.labels
        return f"{text}, {labels_text(labels)}" if labels else text


class Delivery(models.Model):
    """One e-mail of a notification to one recipient, and what became of it."""

    class Status(models.TextChoices):
        QUEUED = "queued", _("Queued")
        SENDING = "sending", _("Sending")
        SENT = "sent", _("Sent")
        FAILED = "failed", _("Failed")
        DELIVERED = "delivered", _("Delivered")
        BOUNCED = "bounced", _("Bounced")
        COMPLAINED = "complained", _("Complained")

    notification = models.ForeignKey(
        Notification,
        on_delete=models.CASCADE,
        related_name="deliveries",
        verbose_name=_("notification"),
    )
    email = models.EmailField(_("e-mail address"))
    language = models.CharField(_("language"), max_length=2, choices=Language.choices)
    status = models.CharField(
        _("status"), max_length=16, choices=Status.choices, default=Status.QUEUED
    )
    attempts = models.PositiveIntegerField(_("attempts"), default=0)
    esp_message_id = models.CharField(_("provider message id"), max_length=255, blank=True)
    last_error = models.TextField(_("last error"), blank=True)
    # The lease of the worker sending it: the token its claim drew, renewed at
    # ``claimed_at`` while the provider is called (see ``notification_deliver``).
    lease_token = models.UUIDField(_("lease token"), null=True, blank=True, editable=False)
    claimed_at = models.DateTimeField(_("claimed at"), null=True, blank=True)
    sent_at = models.DateTimeField(_("sent at"), null=True, blank=True)
    created_at = models.DateTimeField(_("created at"), auto_now_add=True)
    updated_at = models.DateTimeField(_("updated at"), auto_now=True)

    class Meta:
        verbose_name = _("delivery")
        verbose_name_plural = _("deliveries")
        ordering = ["-created_at", "email"]
        constraints = [
            models.UniqueConstraint(
                fields=["notification", "email"], name="delivery_once_per_recipient"
            ),
        ]
        indexes = [
            models.Index(fields=["status", "updated_at"], name="delivery_status"),
            models.Index(fields=["esp_message_id"], name="delivery_esp_message_id"),
        ]

    def __str__(self) -> str:
        return gettext("%(email)s: %(status)s") % {
            "email": self.email,
            "status": self.get_status_display(),
        }


class EarlyTrackingEvent(models.Model):
    """A tracking event of the ESP whose message id matched no delivery when it arrived.

    The provider may report on a message before the worker that sent it has recorded its
    id; the event waits here and is applied when the delivery is marked sent. Events that
    never find their delivery (another sender on the same ESP account) are deleted after
    a day by the sweep.
    """

    esp_message_id = models.CharField(_("provider message id"), max_length=255)
    event_type = models.CharField(_("event type"), max_length=32)
    description = models.TextField(_("description"), blank=True)
    received_at = models.DateTimeField(_("received at"), default=timezone.now)

    class Meta:
        verbose_name = _("early tracking event")
        verbose_name_plural = _("early tracking events")
        indexes = [
            models.Index(fields=["esp_message_id"], name="early_event_message_id"),
            models.Index(fields=["received_at"], name="early_event_received_at"),
        ]

    def __str__(self) -> str:
        return f"{self.esp_message_id}: {self.event_type}"


class WebhookEndpoint(models.Model):
    """An HTTPS address of the account's own systems that receives its notifications, signed.

    ``levels`` lists the notification levels posted to it (``notifications.hooks.LEVELS``).
    ``secret`` (``whsec_`` and base64) signs every request as the Standard Webhooks
    specification says; it is shown once, when the endpoint is created, and never again.
    The URL is unique per account: a list sent again keeps the endpoints it names.
    """

    account = models.ForeignKey(
        Account,
        on_delete=models.CASCADE,
        related_name="webhook_endpoints",
        verbose_name=_("account"),
    )
    url = models.CharField(_("URL"), max_length=2000)
    levels = models.JSONField(_("levels"), default=list)
    is_active = models.BooleanField(_("active"), default=True)
    secret = models.CharField(_("signing secret"), max_length=100, editable=False)
    created_at = models.DateTimeField(_("created at"), auto_now_add=True)
    updated_at = models.DateTimeField(_("updated at"), auto_now=True)

    class Meta:
        verbose_name = _("webhook endpoint")
        verbose_name_plural = _("webhook endpoints")
        ordering = ["account", "created_at", "id"]
        constraints = [
            models.UniqueConstraint(fields=["account", "url"], name="webhook_endpoint_url_once"),
        ]

    def __str__(self) -> str:
        return self.url


class WebhookDelivery(models.Model):
    """One notification posted to one webhook endpoint, and what became of it.

    ``webhook_id`` is drawn once, when the delivery is recorded, and sent on every attempt,
    so that a receiver can recognise a message it already has. ``url`` is the address the
    notification was for (the endpoint may be removed since: the delivery stays, unsendable).
    """

    class Status(models.TextChoices):
        QUEUED = "queued", _("Queued")
        SENDING = "sending", _("Sending")
        SENT = "sent", _("Sent")
        FAILED = "failed", _("Failed")

    channel = "webhook"

    notification = models.ForeignKey(
        Notification,
        on_delete=models.CASCADE,
        related_name="webhook_deliveries",
        verbose_name=_("notification"),
    )
    endpoint = models.ForeignKey(
        WebhookEndpoint,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="deliveries",
        verbose_name=_("webhook endpoint"),
    )
    url = models.CharField(_("URL"), max_length=2000)
    webhook_id = models.CharField(_("webhook id"), max_length=64, unique=True)
    status = models.CharField(
        _("status"), max_length=16, choices=Status.choices, default=Status.QUEUED
    )
    attempts = models.PositiveIntegerField(_("attempts"), default=0)
    http_status = models.PositiveSmallIntegerField(_("HTTP status"), null=True, blank=True)
    last_error = models.TextField(_("last error"), blank=True)
    lease_token = models.UUIDField(_("lease token"), null=True, blank=True, editable=False)
    claimed_at = models.DateTimeField(_("claimed at"), null=True, blank=True)
    sent_at = models.DateTimeField(_("sent at"), null=True, blank=True)
    created_at = models.DateTimeField(_("created at"), auto_now_add=True)
    updated_at = models.DateTimeField(_("updated at"), auto_now=True)

    class Meta:
        verbose_name = _("webhook delivery")
        verbose_name_plural = _("webhook deliveries")
        ordering = ["-created_at", "url"]
        constraints = [
            models.UniqueConstraint(
                fields=["notification", "endpoint"], name="webhook_delivery_once_per_endpoint"
            ),
        ]
        indexes = [
            models.Index(fields=["status", "updated_at"], name="webhook_delivery_status"),
        ]

    def __str__(self) -> str:
        return f"{self.url}: {self.status}"
