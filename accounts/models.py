"""Accounts, their limits per metric and the recipients of their notifications."""

from __future__ import annotations

import uuid
import zoneinfo
from functools import cache

from django.core.exceptions import ValidationError
from django.core.validators import EmailValidator, MaxLengthValidator
from django.db import models
from django.db.models.functions import Coalesce, Lower
from django.utils.translation import gettext, ngettext
from django.utils.translation import gettext_lazy as _
from simple_history.models import HistoricalRecords

from .labels import labels_text
from .metrics import METRICS, Metric
from .windows import MAX_ROLLING_DAYS, PeriodKind


@cache
def _known_time_zones() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones())


def validate_timezone(value: str) -> None:
    """Accept IANA time zone names only (``Europe/Paris``, ``UTC``)."""
    if value not in _known_time_zones():
        raise ValidationError(
            _("“%(value)s” is not a known IANA time zone."), code="invalid", params={"value": value}
        )


# RFC 5321's limit on an address in a mail transaction, and the column's length.
RECIPIENT_EMAIL_MAX_LENGTH = 254
# Without Django's allowance for "localhost": a recipient is reached through the Internet.
_email_validator = EmailValidator(allowlist=[])
_email_length_validator = MaxLengthValidator(RECIPIENT_EMAIL_MAX_LENGTH)


def validate_recipient_email(value: str) -> None:
    """Accept an address notifications can be sent to: at most 254 characters, valid for
    Django's ``EmailValidator``, and a domain with a dot (``a@localhost`` is refused).

    The one check of recipient addresses: the model, the admin, the API and the commands
    (through ``accounts.services``) all use it.
    """
    _email_length_validator(value)
    _email_validator(value)
    if "." not in value.rpartition("@")[2]:
        raise ValidationError(_email_validator.message, code=_email_validator.code)


class Plan(models.TextChoices):
    FREE = "free", _("Free")
    PRO = "pro", _("Pro")
    ENTERPRISE = "enterprise", _("Enterprise")


class Language(models.TextChoices):
    EN = "en", _("English")
    FR = "fr", _("French")


class Level(models.TextChoices):
    """The two levels of a limit, and of the notifications they send."""

    WARNING = "warning", _("Warning")
    BLOCKED = "blocked", _("Blocked")


class Account(models.Model):
    """A customer account, as synced from the CRM; only Enterprise accounts take limits.

    Only Enterprise accounts are limited: an account on another plan keeps the limits it
    had (never deleted) but they are inactive, and apply again once it is back on
    Enterprise (``usage.selectors.usage_for``, ``backoffice.services.limits_reactivate``).
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    external_id = models.CharField(_("external id"), max_length=128, unique=True)
    name = models.CharField(_("name"), max_length=200)
    plan = models.CharField(_("plan"), max_length=32, choices=Plan.choices, default=Plan.ENTERPRISE)
    language = models.CharField(
        _("language"), max_length=2, choices=Language.choices, default=Language.EN
    )
    timezone = models.CharField(
        _("time zone"),
        max_length=64,
        default="UTC",
        validators=[validate_timezone],
        help_text=_("IANA name, e.g. Europe/Paris. Periods are calendar months in this zone."),
    )
    is_active = models.BooleanField(_("active"), default=True)
    limits_updated_at = models.DateTimeField(_("limits updated at"), null=True, blank=True)
    created_at = models.DateTimeField(_("created at"), auto_now_add=True)
    updated_at = models.DateTimeField(_("updated at"), auto_now=True)

    history = HistoricalRecords()

    class Meta:
        verbose_name = _("account")
        verbose_name_plural = _("accounts")
        ordering = ["name"]

    def __str__(self) -> str:
        return f"{self.name} ({self.external_id})"

    @property
    def is_enterprise(self) -> bool:
        return self.plan == Plan.ENTERPRISE

    @property
    def zone(self) -> zoneinfo.ZoneInfo:
        return zoneinfo.ZoneInfo(self.timezone)


class Limit(models.Model):
    """The thresholds of one metric for one account; ``None`` means no threshold (unlimited)."""

    account = models.ForeignKey(
        Account, on_delete=models.CASCADE, related_name="limits", verbose_name=_("account")
    )
    metric = models.CharField(_("metric"), max_length=64, choices=Metric.choices)
    warning = models.PositiveBigIntegerField(_("warning threshold"), null=True, blank=True)
    blocked = models.PositiveBigIntegerField(_("blocked threshold"), null=True, blank=True)
    updated_at = models.DateTimeField(_("updated at"), auto_now=True)

    history = HistoricalRecords()

    class Meta:
        verbose_name = _("limit")
        verbose_name_plural = _("limits")
        ordering = ["account_id", "metric"]
        constraints = [
            models.UniqueConstraint(fields=["account", "metric"], name="limit_one_per_metric"),
            models.CheckConstraint(
                condition=models.Q(warning__isnull=True)
                | models.Q(blocked__isnull=True)
                | models.Q(warning__lt=models.F("blocked")),
                name="limit_warning_below_blocked",
            ),
        ]

    def __str__(self) -> str:
        spec = METRICS.get(self.metric)
        return str(spec.label) if spec else self.metric


# The longest ``labels_key``: four pairs of the longest key and value, with separators.
LABELS_KEY_MAX_LENGTH = 320
# At most this many scoped limits per account (SPEC section 11.2), checked by the service.
MAX_SCOPED_LIMITS = 50


class ScopedLimit(models.Model):
    """One scoped limit of an account (SPEC section 11.2): the thresholds of a metric over a
    period kind, for the events whose labels contain ``labels``; ``None`` means no threshold.

    ``window_days`` is set for ``rolling`` only; ``labels_key`` is ``labels`` written
    canonically (``accounts.labels.labels_key``), under which a line is unique. ``position``
    keeps the order the lines were given in. Written by ``accounts.services`` only.
    """

    account = models.ForeignKey(
        Account, on_delete=models.CASCADE, related_name="scoped_limits", verbose_name=_("account")
    )
    metric = models.CharField(_("metric"), max_length=64, choices=Metric.choices)
    period = models.CharField(_("period"), max_length=16, choices=PeriodKind.choices)
    window_days = models.PositiveSmallIntegerField(_("window days"), null=True, blank=True)
    labels = models.JSONField(_("labels"), default=dict, blank=True)
    labels_key = models.CharField(
        _("labels key"), max_length=LABELS_KEY_MAX_LENGTH, blank=True, default=""
    )
    warning = models.PositiveBigIntegerField(_("warning threshold"), null=True, blank=True)
    blocked = models.PositiveBigIntegerField(_("blocked threshold"), null=True, blank=True)
    position = models.PositiveSmallIntegerField(_("position"), default=0)
    updated_at = models.DateTimeField(_("updated at"), auto_now=True)

    history = HistoricalRecords()

    class Meta:
        verbose_name = _("scoped limit")
        verbose_name_plural = _("scoped limits")
        ordering = ["account_id", "position", "id"]
        constraints = [
            # NULL window days would be distinct from one another in a plain unique index.
            models.UniqueConstraint(
                "account",
                "metric",
                "period",
                Coalesce("window_days", models.Value(0)),
                "labels_key",
                name="scoped_limit_one_per_line",
            ),
            models.CheckConstraint(
                condition=models.Q(warning__isnull=True)
                | models.Q(blocked__isnull=True)
                | models.Q(warning__lt=models.F("blocked")),
                name="scoped_limit_warning_below_blocked",
            ),
            models.CheckConstraint(
                # ``isnull=False`` spelled out: a CHECK whose condition is NULL passes.
                condition=models.Q(
                    period=PeriodKind.ROLLING,
                    window_days__isnull=False,
                    window_days__gte=1,
                    window_days__lte=MAX_ROLLING_DAYS,
                )
                | (~models.Q(period=PeriodKind.ROLLING) & models.Q(window_days__isnull=True)),
                name="scoped_limit_window_days_iff_rolling",
            ),
            models.CheckConstraint(
                condition=~models.Q(period=PeriodKind.MONTH, labels_key=""),
                name="scoped_limit_month_has_labels",
            ),
        ]

    def __str__(self) -> str:
        return self.line_text()

    def line_text(self) -> str:
        """The line for people: ``Text tokens, Day (Model: large)``."""
        spec = METRICS.get(self.metric)
        text = f"{spec.label if spec else self.metric}, {self.period_text()}"
        return f"{text} ({labels_text(self.labels)})" if self.labels else text

    def period_text(self) -> str:
        if self.period == PeriodKind.ROLLING:
            return ngettext(
                "Rolling window of %(days)s day",
                "Rolling window of %(days)s days",
                self.window_days,
            ) % {"days": self.window_days}
        try:
            return PeriodKind(self.period).label
        except ValueError:
            return self.period


class Recipient(models.Model):
    """An address notified when a threshold of the given level is reached."""

    account = models.ForeignKey(
        Account, on_delete=models.CASCADE, related_name="recipients", verbose_name=_("account")
    )
    level = models.CharField(_("level"), max_length=16, choices=Level.choices)
    email = models.EmailField(
        _("e-mail address"),
        max_length=RECIPIENT_EMAIL_MAX_LENGTH,
        validators=[validate_recipient_email],
    )
    language = models.CharField(_("language"), max_length=2, choices=Language.choices)

    history = HistoricalRecords()

    class Meta:
        verbose_name = _("recipient")
        verbose_name_plural = _("recipients")
        ordering = ["account_id", "level", "id"]
        constraints = [
            models.UniqueConstraint(
                "account", "level", Lower("email"), name="recipient_one_address_per_level"
            ),
        ]

    def __str__(self) -> str:
        return gettext("%(email)s (%(level)s, %(language)s)") % {
            "email": self.email,
            "level": self.get_level_display(),
            "language": self.get_language_display(),
        }


class TokenAccount(models.Model):
    """Binds one API token to one account (SPEC section 11.6).

    A bound token may only reach its account: other accounts' endpoints answer 403, the
    accounts list shows its account alone, and its usage events default to its account and
    may name no other. A token without a binding reaches every account its user may.
    Revoking the token (deleting it) deletes the binding; an account with bound tokens
    cannot be deleted, which would leave them unbound and widen their reach.
    """

    token = models.OneToOneField(
        "knox.AuthToken",
        on_delete=models.CASCADE,
        primary_key=True,
        related_name="account_binding",
        verbose_name=_("token"),
    )
    account = models.ForeignKey(
        Account, on_delete=models.PROTECT, related_name="bound_tokens", verbose_name=_("account")
    )
    created_at = models.DateTimeField(_("created at"), auto_now_add=True)

    class Meta:
        verbose_name = _("token bound to an account")
        verbose_name_plural = _("tokens bound to an account")

    def __str__(self) -> str:
        return f"{self.token_id[:8]}… → {self.account}"
