"""The admin of the notification ledger and its deliveries (SPEC sections 6, 7 and 12.4).

The ledger and the deliveries (e-mail and webhook) are read-only: rows are written by the
services only. People act through actions: resend failed deliveries here, and on the
account admin (which imports them from here) evaluate thresholds now and send a test
notification. Webhook endpoints are added, changed and removed here, through the same
service rules as the API; a new endpoint's signing secret is shown once, in a message.
"""

from __future__ import annotations

from datetime import date
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.core.exceptions import ValidationError
from django.db.models import Count, Exists, OuterRef, Q, QuerySet
from django.forms.models import BaseInlineFormSet
from django.http import HttpRequest
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils.html import format_html, format_html_join
from django.utils.translation import gettext, ngettext
from django.utils.translation import gettext_lazy as _

from accounts.metrics import Metric
from accounts.models import (
    Account,
    Language,
    Level,
    validate_recipient_email,
)
from config.dates import datetime_text, month_text
from usage.admin import ReadOnlyAdmin
from usage.quantities import amount_text, threshold_amount_text

from .hooks import (
    LEVELS,
    webhook_deliveries_resend,
    webhook_endpoint_save,
    webhook_endpoint_validate,
)
from .models import (
    Delivery,
    EarlyTrackingEvent,
    NoticeLevel,
    Notification,
    WebhookDelivery,
    WebhookEndpoint,
)
from .selectors import notification_periods
from .services import deliveries_resend, notification_send_test, thresholds_evaluate

RECENT_NOTIFICATIONS = 20  # shown on the account page
# The delivery statuses that need a person's attention: highlighted wherever shown.
_PROBLEMS = {Delivery.Status.FAILED, Delivery.Status.BOUNCED, Delivery.Status.COMPLAINED}
# The longest error a list shows whole; longer ones end with "…" (the page has all).
ERROR_LENGTH = 300
MSG_REACHED_NOBODY = _("Reached nobody: no recipient at this level")


def _count_field(status: str) -> str:
    return f"deliveries_{status}"


def notifications_with_delivery_counts(queryset: QuerySet[Notification]) -> QuerySet[Notification]:
    """``queryset`` with its number of deliveries, in total and per status, in the same query."""
    per_status = {
        _count_field(status): Count("deliveries", filter=Q(deliveries__status=status))
        for status in Delivery.Status.values
    }
    return queryset.annotate(deliveries_total=Count("deliveries"), **per_status)


class NotificationDisplay:
    """The columns a notification is shown with, in its admin and on the account page."""

    @admin.display(description=_("level"), ordering="level")
    def level_display(self, obj: Notification) -> str:
        """The level as a coloured label; a restored notice links to the blocked
        notification it answers, and says what changed."""
        badge = format_html(
            '<span class="notification-level notification-level-{}">{}</span>',
            obj.level,
            obj.get_level_display(),
        )
        if obj.restores_id is None:
            return badge
        url = reverse("admin:notifications_notification_change", args=[obj.restores_id])
        return format_html(
            '{}<br><a class="notification-restores" href="{}">{}</a><br>'
            '<span class="delivery-notification">{}</span>',
            badge,
            url,
            gettext("answers blocked notification #%(id)s") % {"id": obj.restores_id},
            obj.get_restored_reason_display(),
        )

    @admin.display(description=_("projected at"), ordering="projected_at")
    def projected_at_display(self, obj: Notification) -> str:
        """Forecasts: when the line is projected to reach its blocked threshold, in the
        account's time zone; ``—`` for any other notice."""
        return datetime_text(obj.projected_at, obj.account.timezone)

    @admin.display(description=_("limit"), ordering="period_kind")
    def line_display(self, obj: Notification) -> str:
        return obj.line_text()

    @admin.display(description=_("period"), ordering="period_start")
    def period_display(self, obj: Notification) -> str:
        return obj.period_text()

    @admin.display(description=_("e-mailed"), boolean=True, ordering="recorded_only")
    def emailed_display(self, obj: Notification) -> bool:
        """False for a crossing recorded only: its line's e-mail of the day went out before."""
        return not obj.recorded_only

    @admin.display(description=_("threshold"), ordering="threshold")
    def threshold_display(self, obj: Notification) -> str:
        return threshold_amount_text(obj.threshold, obj.metric)

    @admin.display(description=_("usage when reached"), ordering="used_milli")
    def used_display(self, obj: Notification) -> str:
        return amount_text(obj.used_milli, obj.metric)

    @admin.display(description=_("reached at"), ordering="created_at")
    def created_at_display(self, obj: Notification) -> str:
        return datetime_text(obj.created_at, obj.account.timezone)

    @admin.display(description=_("kind"), ordering="is_test")
    def kind_display(self, obj: Notification) -> str:
        if obj.is_test:
            return format_html('<span class="notification-test">{}</span>', gettext("Test"))
        if obj.level == NoticeLevel.FORECAST:
            return gettext("Blocked threshold foreseen")
        if obj.level == NoticeLevel.RESTORED:
            return gettext("Capacity restored")
        return gettext("Threshold reached")

    @admin.display(description=_("deliveries"), ordering="deliveries_total")
    def deliveries_total_display(self, obj: Notification) -> int:
        return obj.deliveries_total

    @admin.display(description=_("delivery statuses"))
    def deliveries_summary(self, obj: Notification) -> str:
        counts = [
            (status, getattr(obj, _count_field(status.value)))
            for status in Delivery.Status
            if getattr(obj, _count_field(status.value))
        ]
        if not counts:
            # A notification whose level had no recipient: nobody was told, say so.
            return format_html('<span class="notification-nobody">{}</span>', MSG_REACHED_NOBODY)
        parts = []
        for status, count in counts:
            text = gettext("%(status)s: %(count)s") % {"status": status.label, "count": count}
            # The statuses that need a person's attention stand out.
            parts.append(
                format_html('<strong class="delivery-problem">{}</strong>', text)
                if status in _PROBLEMS
                else text
            )
        return format_html_join(", ", "{}", ((part,) for part in parts))


# --- Resending ---


def _message_resent(modeladmin: admin.ModelAdmin, request: HttpRequest, count: int) -> None:
    if count:
        modeladmin.message_user(
            request,
            ngettext(
                "%(count)d failed delivery was queued to be sent again.",
                "%(count)d failed deliveries were queued to be sent again.",
                count,
            )
            % {"count": count},
            messages.SUCCESS,
        )
    else:
        modeladmin.message_user(
            request,
            gettext("Nothing to resend: none of the selected deliveries failed or bounced."),
            messages.WARNING,
        )


class ResendPermission:
    """Resending changes deliveries: it takes the permission to change them."""

    def has_resend_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("notifications.change_delivery")


class WebhookResendPermission:
    def has_resend_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("notifications.change_webhookdelivery")


# --- Notifications ---


class ReadOnlyInline(admin.TabularInline):
    """An inline that shows rows and never adds, changes or deletes them."""

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class DeliveryDisplay:
    """The columns a delivery is shown with, in its list and on its notification's page."""

    @admin.display(description=_("status"), ordering="status")
    def status_display(self, obj: Delivery) -> str:
        problem = " delivery-problem" if obj.status in _PROBLEMS else ""
        return format_html(
            '<span class="delivery-status delivery-status-{}{}">{}</span>',
            obj.status,
            problem,
            obj.get_status_display(),
        )

    @admin.display(description=_("last error"), ordering="last_error")
    def last_error_display(self, obj: Delivery) -> str:
        if not obj.last_error:
            return "—"
        error = " ".join(obj.last_error.split())
        if len(error) > ERROR_LENGTH:
            error = f"{error[: ERROR_LENGTH - 1]}…"
        return format_html('<span class="delivery-error">{}</span>', error)

    def _zone(self, obj: Delivery) -> str:
        return obj.notification.account.timezone

    @admin.display(description=_("created at"), ordering="created_at")
    def created_at_display(self, obj: Delivery) -> str:
        return datetime_text(obj.created_at, self._zone(obj))

    @admin.display(description=_("sent at"), ordering="sent_at")
    def sent_at_display(self, obj: Delivery) -> str:
        return datetime_text(obj.sent_at, self._zone(obj))

    @admin.display(description=_("updated at"), ordering="updated_at")
    def updated_at_display(self, obj: Delivery) -> str:
        return datetime_text(obj.updated_at, self._zone(obj))


class DeliveryInline(DeliveryDisplay, ReadOnlyInline):
    model = Delivery
    fields = (
        "email",
        "language",
        "status_display",
        "attempts",
        "esp_message_id",
        "last_error_display",
        "sent_at_display",
        "updated_at_display",
    )
    readonly_fields = fields
    extra = 0
    show_change_link = True

    def get_queryset(self, request: HttpRequest) -> QuerySet[Delivery]:
        return super().get_queryset(request).select_related("notification__account")


class WebhookDeliveryInline(ReadOnlyInline):
    """The notification posted to each webhook endpoint, beside its e-mails."""

    model = WebhookDelivery
    fields = (
        "channel_display",
        "url",
        "status",
        "attempts",
        "http_status",
        "last_error",
        "webhook_id",
        "sent_at",
        "updated_at",
    )
    readonly_fields = fields
    extra = 0
    show_change_link = True

    @admin.display(description=_("channel"))
    def channel_display(self, obj: WebhookDelivery) -> str:
        return gettext("Webhook")


class PeriodFilter(admin.SimpleListFilter):
    """The months in which notified periods start, newest first, as ``YYYY-MM``."""

    title = _("period")
    parameter_name = "period"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list:
        return [(month.isoformat(), month_text(month)) for month in notification_periods()]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        value = self.value()
        if value is None:
            return queryset
        try:
            month = date.fromisoformat(value)
        except ValueError:
            return queryset.none()
        return queryset.filter(period__year=month.year, period__month=month.month)


class DeliveryStatusFilter(admin.SimpleListFilter):
    """Notifications with at least one delivery in the chosen status, or with none."""

    title = _("delivery status")
    parameter_name = "delivery_status"
    NOBODY = "nobody"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list:
        return [*Delivery.Status.choices, (self.NOBODY, _("Reached nobody"))]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        value = self.value()
        if value == self.NOBODY:
            return queryset.filter(~Exists(Delivery.objects.filter(notification_id=OuterRef("pk"))))
        if value not in Delivery.Status.values:
            return queryset
        # A subquery, not a join: a join would multiply the annotated delivery counts.
        return queryset.filter(
            pk__in=Delivery.objects.filter(status=value).values("notification_id")
        )


class KindFilter(admin.SimpleListFilter):
    """Real notifications by default; test ones (sent from the admin or the command) on
    demand, so that a sample is never taken for a threshold reached."""

    title = _("kind")
    parameter_name = "kind"
    TESTS = "test"
    ALL = "all"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list:
        return [(self.TESTS, _("Test notifications")), (self.ALL, _("All, tests included"))]

    def choices(self, changelist: Any) -> Any:
        yield {
            "selected": self.value() is None,
            "query_string": changelist.get_query_string(remove=[self.parameter_name]),
            "display": _("Thresholds reached"),
        }
        for lookup, title in self.lookup_choices:
            yield {
                "selected": self.value() == lookup,
                "query_string": changelist.get_query_string({self.parameter_name: lookup}),
                "display": title,
            }

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        value = self.value()
        if value == self.ALL:
            return queryset
        return queryset.filter(is_test=value == self.TESTS)


class NotificationMedia:
    class Media:
        css = {"all": ["notifications/admin.css"]}


@admin.register(Notification)
class NotificationAdmin(NotificationDisplay, NotificationMedia, ResendPermission, ReadOnlyAdmin):
    list_display = (
        "__str__",
        "account",
        "metric",
        "level_display",
        "line_display",
        "period_display",
        "threshold_display",
        "used_display",
        "projected_at_display",
        "created_at_display",
        "emailed_display",
        "kind_display",
        "deliveries_total_display",
        "deliveries_summary",
    )
    list_filter = (
        "level",
        "metric",
        "period_kind",
        PeriodFilter,
        "recorded_only",
        KindFilter,
        DeliveryStatusFilter,
    )
    list_select_related = ("account",)
    # A request or correlation id, as found on a usage event or in a log line, finds the
    # notifications it caused.
    search_fields = ("account__name", "account__external_id", "=request_id", "=correlation_id")
    fields = (
        "account",
        "metric",
        "level_display",
        "line_display",
        "period_display",
        "threshold_display",
        "used_display",
        "projected_at_display",
        "created_at_display",
        "emailed_display",
        "kind_display",
        "deliveries_summary",
        "request_id",
        "correlation_id",
    )
    readonly_fields = fields
    inlines = [DeliveryInline, WebhookDeliveryInline]
    actions = ["resend_failed_deliveries"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[Notification]:
        return notifications_with_delivery_counts(super().get_queryset(request))

    @admin.action(description=_("Resend failed deliveries"), permissions=["resend"])
    def resend_failed_deliveries(self, request: HttpRequest, queryset: QuerySet) -> None:
        notification_ids = list(queryset.values_list("pk", flat=True))
        delivery_ids = Delivery.objects.filter(notification_id__in=notification_ids).values_list(
            "pk", flat=True
        )
        count = deliveries_resend(delivery_ids=delivery_ids)
        if request.user.has_perm("notifications.change_webhookdelivery"):
            count += webhook_deliveries_resend(
                delivery_ids=WebhookDelivery.objects.filter(
                    notification_id__in=notification_ids
                ).values_list("pk", flat=True)
            )
        _message_resent(self, request, count)


# --- Deliveries ---


@admin.register(Delivery)
class DeliveryAdmin(DeliveryDisplay, NotificationMedia, ResendPermission, ReadOnlyAdmin):
    list_display = (
        "email",
        "status_display",
        "attempts",
        "last_error_display",
        "notification_display",
        "dates_display",
    )
    list_filter = ("status", "language")
    list_select_related = ("notification__account",)
    search_fields = ("email", "=esp_message_id")
    fields = (
        "notification",
        "email",
        "language",
        "status_display",
        "attempts",
        "esp_message_id",
        "last_error",
        "claimed_at_display",
        "sent_at_display",
        "created_at_display",
        "updated_at_display",
    )
    readonly_fields = fields
    actions = ["resend_failed_deliveries"]

    @admin.display(description=_("claimed at"), ordering="claimed_at")
    def claimed_at_display(self, obj: Delivery) -> str:
        return datetime_text(obj.claimed_at, self._zone(obj))

    @admin.display(description=_("dates"), ordering="updated_at")
    def dates_display(self, obj: Delivery) -> str:
        """When it was queued and last changed (sent, failed...), in the account's zone,
        one under the other: the list fits a laptop."""
        zone = self._zone(obj)
        return format_html(
            '<span class="delivery-dates">{}<br>{}<br>{}</span>',
            gettext("queued %(when)s")
            % {"when": datetime_text(obj.created_at, zone, with_zone=False)},
            gettext("changed %(when)s")
            % {"when": datetime_text(obj.updated_at, zone, with_zone=False)},
            gettext("(%(zone)s)") % {"zone": zone},
        )

    @admin.display(description=_("notification"), ordering="notification__account__name")
    def notification_display(self, obj: Delivery) -> str:
        """The account, then the metric and level, in one column: the list fits a laptop."""
        notification = obj.notification
        return format_html(
            '{}<br><span class="delivery-notification">{} · {}</span>',
            notification.account,
            notification.get_metric_display(),
            notification.get_level_display(),
        )

    @admin.action(description=_("Resend failed deliveries"), permissions=["resend"])
    def resend_failed_deliveries(self, request: HttpRequest, queryset: QuerySet) -> None:
        delivery_ids = list(queryset.values_list("pk", flat=True))
        _message_resent(self, request, deliveries_resend(delivery_ids=delivery_ids))


# --- Webhooks ---


@admin.register(WebhookDelivery)
class WebhookDeliveryAdmin(WebhookResendPermission, ReadOnlyAdmin):
    list_display = (
        "url",
        "channel_display",
        "status",
        "attempts",
        "http_status",
        "last_error_display",
        "account_display",
        "metric_display",
        "level_display",
        "updated_at",
    )
    list_filter = ("status",)
    list_select_related = ("notification__account",)
    search_fields = ("url", "=webhook_id", "notification__account__name")
    fields = (
        "notification",
        "endpoint",
        "url",
        "webhook_id",
        "status",
        "attempts",
        "http_status",
        "last_error",
        "claimed_at",
        "sent_at",
        "created_at",
        "updated_at",
    )
    actions = ["resend_failed_deliveries"]

    @admin.display(description=_("channel"))
    def channel_display(self, obj: WebhookDelivery) -> str:
        return gettext("Webhook")

    @admin.display(description=_("last error"), ordering="last_error")
    def last_error_display(self, obj: WebhookDelivery) -> str:
        return obj.last_error if len(obj.last_error) <= 80 else f"{obj.last_error[:79]}…"

    @admin.display(description=_("account"), ordering="notification__account__name")
    def account_display(self, obj: WebhookDelivery) -> Account:
        return obj.notification.account

    @admin.display(description=_("metric"), ordering="notification__metric")
    def metric_display(self, obj: WebhookDelivery) -> str:
        return obj.notification.get_metric_display()

    @admin.display(description=_("level"), ordering="notification__level")
    def level_display(self, obj: WebhookDelivery) -> str:
        return obj.notification.get_level_display()

    @admin.action(description=_("Resend failed deliveries"), permissions=["resend"])
    def resend_failed_deliveries(self, request: HttpRequest, queryset: QuerySet) -> None:
        delivery_ids = list(queryset.values_list("pk", flat=True))
        count = webhook_deliveries_resend(delivery_ids=delivery_ids)
        if count:
            _message_resent(self, request, count)
        else:
            self.message_user(
                request,
                gettext("Nothing to resend: none of the selected deliveries failed."),
                messages.WARNING,
            )


LEVEL_LABELS = dict(NoticeLevel.choices)


def endpoint_levels_text(endpoint: WebhookEndpoint) -> str:
    """The levels an endpoint subscribes to, by their labels: ``Warning, Blocked``."""
    return ", ".join(str(LEVEL_LABELS.get(level, level)) for level in endpoint.levels)


class WebhookEndpointForm(forms.ModelForm):
    levels = forms.MultipleChoiceField(
        label=_("levels"),
        choices=[(level, LEVEL_LABELS[level]) for level in LEVELS],
        widget=forms.CheckboxSelectMultiple,
        help_text=_("The levels of the notifications posted to this endpoint."),
    )

    class Meta:
        model = WebhookEndpoint
        fields = ("account", "url", "levels", "is_active")
        widgets = {"url": forms.URLInput(attrs={"size": 80})}
        help_texts = {
            "url": _(
                "An https:// URL whose host resolves to public addresses only (no private, "
                "loopback or link-local address)."
            )
        }

    def validate_unique(self) -> None:
        """The URL once per account is ``webhook_endpoint_validate``'s rule, with its message."""

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        account, url, levels = (cleaned.get(f) for f in ("account", "url", "levels"))
        if account is not None and url and levels:
            webhook_endpoint_validate(
                account=account, url=url, levels=levels, endpoint=self.instance
            )
        return cleaned


@admin.register(WebhookEndpoint)
class WebhookEndpointAdmin(admin.ModelAdmin):
    form = WebhookEndpointForm
    list_display = ("url", "account", "levels_display", "is_active", "created_at")
    list_filter = ("is_active",)
    list_select_related = ("account",)
    search_fields = ("url", "account__name", "account__external_id")
    autocomplete_fields = ("account",)
    readonly_fields = ("created_at", "updated_at")

    @admin.display(description=_("levels"))
    def levels_display(self, obj: WebhookEndpoint) -> str:
        return endpoint_levels_text(obj)

    def save_model(
        self, request: HttpRequest, obj: WebhookEndpoint, form: forms.ModelForm, change: bool
    ) -> None:
        cleaned = form.cleaned_data
        previous = WebhookEndpoint.objects.filter(pk=obj.pk).first() if change else None
        if previous is not None:
            obj.url = previous.url  # the service compares the saved URL with the new one
        saved = webhook_endpoint_save(
            account=cleaned["account"],
            url=cleaned["url"],
            levels=cleaned["levels"],
            is_active=cleaned["is_active"],
            endpoint=obj if change else None,
        )
        obj.pk = saved.endpoint.pk
        if saved.secret is not None:
            self.message_user(
                request,
                gettext(
                    "The signing secret of %(url)s is %(secret)s. Copy it now: it will not be "
                    "shown again."
                )
                % {"url": saved.endpoint.url, "secret": saved.secret},
                messages.WARNING,
            )


# --- For the account admin (wired into ``backoffice.admin.AccountAdmin``) ---


class RecentNotificationsFormSet(BaseInlineFormSet):
    def get_queryset(self) -> QuerySet[Notification]:
        # Sliced here, after the inline's filter on the account (a sliced queryset can no
        # longer be filtered), and kept: the forms index it, one query for all of them.
        if not hasattr(self, "_recent"):
            self._recent = super().get_queryset()[:RECENT_NOTIFICATIONS]
        return self._recent


class NotificationInline(NotificationDisplay, ReadOnlyInline):
    """The account's most recent notifications of thresholds reached, read-only, each
    linked to its page; test notifications are in the notifications list only."""

    model = Notification
    formset = RecentNotificationsFormSet
    verbose_name_plural = _("recent notifications")
    fields = (
        "created_at_display",
        "metric",
        "level_display",
        "line_display",
        "period_display",
        "threshold_display",
        "used_display",
        "projected_at_display",
        "emailed_display",
        "deliveries_summary",
    )
    readonly_fields = fields
    ordering = ("-created_at", "-pk")
    extra = 0
    show_change_link = True

    def get_queryset(self, request: HttpRequest) -> QuerySet[Notification]:
        # The account gives each row's time zone (the period's local time).
        queryset = super().get_queryset(request).filter(is_test=False).select_related("account")
        return notifications_with_delivery_counts(queryset)


@admin.action(description=_("Evaluate thresholds now"), permissions=["change"])
def evaluate_thresholds_now(
    modeladmin: admin.ModelAdmin, request: HttpRequest, queryset: QuerySet[Account]
) -> None:
    """Record (and send) the threshold crossings of the selected accounts not yet notified."""
    created = thresholds_evaluate(account_ids=list(queryset.values_list("pk", flat=True)))
    if created:
        message = ngettext(
            "%(count)d notification created; its e-mails are being sent.",
            "%(count)d notifications created; their e-mails are being sent.",
            len(created),
        ) % {"count": len(created)}
    else:
        message = gettext("No notification created: no threshold newly reached.")
    modeladmin.message_user(request, message, messages.SUCCESS if created else messages.INFO)


def _choose(choices: list) -> list:
    """``choices`` after an empty one: the person picks, nothing is picked for them."""
    return [("", "---------"), *choices]


class TestNotificationForm(forms.Form):
    """What a test notification is made of: every choice made by the person sending it."""

    # As the admin's own forms: required fields' labels in bold.
    required_css_class = "required"

    # A CharField: validate_recipient_email is the whole check (an EmailField would add
    # Django's own and show its message twice).
    to = forms.CharField(
        label=_("Send to"),
        widget=forms.EmailInput(attrs={"class": "vTextField"}),
        validators=[validate_recipient_email],
    )
    metric = forms.ChoiceField(
        label=_("Metric"),
        choices=_choose(Metric.choices),
        help_text=_(
            "The sample uses this metric's current threshold and usage, or sample figures "
            "when it has no threshold at the chosen level."
        ),
    )
    level = forms.ChoiceField(label=_("Level"), choices=_choose(Level.choices))
    language = forms.ChoiceField(
        label=_("Language"),
        choices=_choose(Language.choices),
        help_text=_("The language of the e-mail."),
    )


SEND_TEST_TEMPLATE = "admin/notifications/send_test_notification.html"


@admin.action(description=_("Send a test notification"), permissions=["change"])
def send_test_notification(
    modeladmin: admin.ModelAdmin, request: HttpRequest, queryset: QuerySet[Account]
) -> TemplateResponse | None:
    """Ask for an address, a level and a language, then send each selected account's sample.

    The first call shows a form; the form posts back to the changelist with the action
    and the selected ids, and ``apply`` set: that second call sends.
    """
    if "apply" in request.POST:
        form = TestNotificationForm(request.POST)
        if form.is_valid():
            sent = []
            for account in queryset:
                try:
                    delivery = notification_send_test(account=account, **form.cleaned_data)
                except ValidationError as error:
                    modeladmin.message_user(request, " ".join(error.messages), messages.ERROR)
                    return None
                sent.append(delivery)
            modeladmin.message_user(
                request,
                ngettext(
                    "%(count)d test notification sent to %(to)s.",
                    "%(count)d test notifications sent to %(to)s.",
                    len(sent),
                )
                % {"count": len(sent), "to": form.cleaned_data["to"]},
                messages.SUCCESS,
            )
            return None
    else:
        form = TestNotificationForm(initial={"to": request.user.email})
    opts = modeladmin.model._meta
    context = {
        **modeladmin.admin_site.each_context(request),
        "title": _("Send a test notification"),
        "subtitle": None,
        "opts": opts,
        "queryset": queryset,
        "form": form,
        "action_name": "send_test_notification",
        "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
        "media": modeladmin.media + form.media,
    }
    request.current_app = modeladmin.admin_site.name
    return TemplateResponse(request, SEND_TEST_TEMPLATE, context)


# --- Ops ---


@admin.register(EarlyTrackingEvent)
class EarlyTrackingEventAdmin(ReadOnlyAdmin):
    """Tracking events waiting for their delivery (``delivery_track``): ops' to watch,
    no permission of account managers gives them."""

    list_display = ("esp_message_id", "event_type", "description", "received_at_display")
    search_fields = ("=esp_message_id",)
    fields = list_display
    readonly_fields = fields

    @admin.display(description=_("received at"), ordering="received_at")
    def received_at_display(self, obj: EarlyTrackingEvent) -> str:
        return datetime_text(obj.received_at, "UTC")
