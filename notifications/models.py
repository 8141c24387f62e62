"""The notification ledger and the per-recipient deliveries of each notification."""

from __future__ import annotations

from django.db import models
from django.utils import timezone
from django.utils.translation import gettext
from django.utils.translation import gettext_lazy as _

from accounts.metrics import Metric
from accounts.models import Account, Language, Level
from config.request_ids import MAX_LENGTH, current_correlation_id, current_request_id


class Notification(models.Model):
    """A threshold reached: exactly one row per account, metric, level, period and threshold.

    The unique constraint is what makes "exactly once" hold across requests, workers and
    sweeps: whoever inserts the row first owns the e-mails; everyone else inserts nothing.
    For the blocked level, ``threshold`` is the effective blocked threshold (extensions
    included), so a raised threshold or a new extension re-arms it. ``request_id`` and
    ``correlation_id`` are those of the request or task that recorded the crossing
    (``config.request_ids``), empty for the periodic sweep's.
    """

    account = models.ForeignKey(
        Account, on_delete=models.CASCADE, related_name="notifications", verbose_name=_("account")
    )
    metric = models.CharField(_("metric"), max_length=64, choices=Metric.choices)
    level = models.CharField(_("level"), max_length=16, choices=Level.choices)
    period = models.DateField(_("period"), help_text=_("The first day of the period."))
    threshold = models.BigIntegerField(_("threshold"))
    used_milli = models.BigIntegerField(_("usage when reached (thousandths)"))
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
            models.UniqueConstraint(
                fields=["account", "metric", "level", "period", "threshold"],
                condition=models.Q(is_test=False),
                name="notification_once_per_crossing",
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
        return f"{self.metric} {self.level} {self.threshold} ({self.period:%Y-%m})"

    @property
    def period_code(self) -> str:
        return f"{self.period:%Y-%m}"


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
