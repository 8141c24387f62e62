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
from django.db.models import Count, Q, QuerySet
from django.forms.models import BaseInlineFormSet
from django.http import HttpRequest
from django.template.response import TemplateResponse
from django.utils.html import format_html, format_html_join
from django.utils.translation import get_language, gettext, ngettext
from django.utils.translation import gettext_lazy as _

from accounts.models import (
    Account,
    Language,
    Level,
    validate_recipient_email,
)
from usage.admin import ReadOnlyAdmin
from usage.quantities import quantity_text, threshold_text

from .hooks import (
    LEVELS,
    webhook_deliveries_resend,
    webhook_endpoint_save,
    webhook_endpoint_validate,
)
from .models import Delivery, Notification, WebhookDelivery, WebhookEndpoint
from .services import deliveries_resend, notification_send_test, thresholds_evaluate

RECENT_NOTIFICATIONS = 20  # shown on the account page
# The delivery statuses a summary shows in bold.
_PROBLEMS = {Delivery.Status.FAILED, Delivery.Status.BOUNCED, Delivery.Status.COMPLAINED}


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
        return threshold_text(obj.threshold, obj.metric)

    @admin.display(description=_("usage when reached"), ordering="used_milli")
    def used_display(self, obj: Notification) -> str:
        return quantity_text(obj.used_milli, obj.metric)

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
            return "—"
        parts = []
        for status, count in counts:
            text = gettext("%(status)s: %(count)s") % {"status": status.label, "count": count}
            # The statuses that need a person's attention stand out.
            parts.append(format_html("<strong>{}</strong>", text) if status in _PROBLEMS else text)
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


class DeliveryInline(ReadOnlyInline):
    model = Delivery
    fields = (
        "email",
        "language",
        "status",
        "attempts",
        "esp_message_id",
        "last_error",
        "sent_at",
        "updated_at",
    )
    readonly_fields = fields
    extra = 0
    show_change_link = True


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
        months = Notification.objects.dates("period", "month", order="DESC")
        return [(month.isoformat(), f"{month:%Y-%m}") for month in months]

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
    """Notifications with at least one delivery in the chosen status."""

    title = _("delivery status")
    parameter_name = "delivery_status"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list:
        return Delivery.Status.choices

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        value = self.value()
        if value not in Delivery.Status.values:
            return queryset
        # A subquery, not a join: a join would multiply the annotated delivery counts.
        return queryset.filter(
            pk__in=Delivery.objects.filter(status=value).values("notification_id")
        )


@admin.register(Notification)
class NotificationAdmin(NotificationDisplay, ResendPermission, ReadOnlyAdmin):
    list_display = (
        "__str__",
        "account",
        "metric",
        "level",
        "line_display",
        "period_display",
        "threshold_display",
        "used_display",
        "created_at",
        "emailed_display",
        "is_test",
        "deliveries_total_display",
        "deliveries_summary",
    )
    list_filter = (
        "level",
        "metric",
        "period_kind",
        PeriodFilter,
        "recorded_only",
        "is_test",
        DeliveryStatusFilter,
    )
    list_select_related = ("account",)
    # A request or correlation id, as found on a usage event or in a log line, finds the
    # notifications it caused.
    search_fields = ("account__name", "account__external_id", "=request_id", "=correlation_id")
    fields = (
        "account",
        "metric",
        "level",
        "line_display",
        "period_display",
        "threshold_display",
        "used_display",
        "created_at",
        "emailed_display",
        "is_test",
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
class DeliveryAdmin(ResendPermission, ReadOnlyAdmin):
    list_display = (
        "email",
        "language",
        "status",
        "attempts",
        "esp_message_id",
        "last_error_display",
        "account_display",
        "metric_display",
        "level_display",
    )
    list_filter = ("status", "language")
    list_select_related = ("notification__account",)
    search_fields = ("email", "=esp_message_id")
    fields = (
        "notification",
        "email",
        "language",
        "status",
        "attempts",
        "esp_message_id",
        "last_error",
        "claimed_at",
        "sent_at",
        "created_at",
        "updated_at",
    )
    actions = ["resend_failed_deliveries"]

    @admin.display(description=_("last error"), ordering="last_error")
    def last_error_display(self, obj: Delivery) -> str:
        return obj.last_error if len(obj.last_error) <= 80 else f"{obj.last_error[:79]}…"

    @admin.display(description=_("account"), ordering="notification__account__name")
    def account_display(self, obj: Delivery) -> Account:
        return obj.notification.account

    @admin.display(description=_("metric"), ordering="notification__metric")
    def metric_display(self, obj: Delivery) -> str:
        return obj.notification.get_metric_display()

    @admin.display(description=_("level"), ordering="notification__level")
    def level_display(self, obj: Delivery) -> str:
        return obj.notification.get_level_display()

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


LEVEL_LABELS = {
    "warning": _("Warning"),
    "blocked": _("Blocked"),
    "restored": _("Restored"),
    "forecast": _("Forecast"),
}


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
        return ", ".join(str(LEVEL_LABELS.get(level, level)) for level in obj.levels)

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
    """The account's most recent notifications, read-only, each linked to its page."""

    model = Notification
    formset = RecentNotificationsFormSet
    verbose_name_plural = _("recent notifications")
    fields = (
        "created_at",
        "metric",
        "level",
        "line_display",
        "period_display",
        "threshold_display",
        "used_display",
        "emailed_display",
        "is_test",
        "deliveries_summary",
    )
    readonly_fields = fields
    ordering = ("-created_at", "-pk")
    extra = 0
    show_change_link = True

    def get_queryset(self, request: HttpRequest) -> QuerySet[Notification]:
        # The account gives each row's time zone (the period's local time).
        queryset = super().get_queryset(request).select_related("account")
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


class TestNotificationForm(forms.Form):
    # A CharField: validate_recipient_email is the whole check (an EmailField would add
    # Django's own and show its message twice).
    to = forms.CharField(
        label=_("Send to"),
        widget=forms.EmailInput,
        validators=[validate_recipient_email],
    )
    level = forms.ChoiceField(label=_("Level"), choices=Level.choices, initial=Level.WARNING)
    language = forms.ChoiceField(label=_("Language"), choices=Language.choices)


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
        languages = set(queryset.values_list("language", flat=True))
        language = languages.pop() if len(languages) == 1 else (get_language() or "en")[:2]
        form = TestNotificationForm(
            initial={
                "to": request.user.email,
                "language": language if language in Language.values else Language.EN,
            }
        )
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
