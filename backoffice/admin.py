"""The admin of accounts, the main interface of account managers (SPEC section 7).

The account page edits the account, its limits per metric and its recipients in one
form, validated whole by ``accounts.services`` and stored by ``limits_replace`` (see
``accounts.forms`` for how the form and the inline meet). Account managers may change
limits and recipients but not the account's own fields, which come from the CRM.

The list shows each account's status and a usage bar per metric of its current period,
read for the whole page at once (``AccountChangeList``); the page shows the same usage in
detail, and the period's extensions, granted through ``usage.services.extension_grant``.

It lives in ``backoffice``, the top app, because the page spans accounts, usage and
notifications; its URLs follow the model's app label (``/admin/accounts/account/``).

Only Enterprise accounts are limited: an account on another plan keeps its stored limits,
shown on its page as inactive, and is listed (and filtered) as unlimited, ``ok``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from django.contrib import admin
from django.contrib.admin.utils import flatten_fieldsets
from django.contrib.admin.views.main import ChangeList
from django.core.exceptions import ImproperlyConfigured, PermissionDenied
from django.db import transaction
from django.db.models import Case, Model, QuerySet, When
from django.http import HttpRequest, HttpResponse
from django.urls import reverse
from django.utils.html import format_html, format_html_join
from django.utils.translation import gettext
from django.utils.translation import gettext_lazy as _
from simple_history.admin import SimpleHistoryAdmin
from simple_history.models import is_historic

from accounts.forms import (
    ACCOUNT_FIELDS,
    UNIT_LABELS,
    AccountAdminForm,
    LimitsDraft,
    RecipientInlineForm,
    RecipientInlineFormSet,
    ScopedLimitInlineForm,
    ScopedLimitInlineFormSet,
    label_field_name,
    limit_field_names,
    limit_field_rows,
)
from accounts.labels import LABEL_KEYS, labels_text
from accounts.metrics import METRICS
from accounts.models import Account, Level, Recipient, ScopedLimit
from accounts.selectors import blocked_lines_without_recipient, limits_document_get
from backoffice.charts import FRAME, account_charts
from backoffice.services import extensions_grant, limits_reactivate, limits_replace
from config.dates import datetime_text, month_text
from notifications.admin import (
    NotificationInline,
    endpoint_levels_text,
    evaluate_thresholds_now,
    send_test_notification,
)
from notifications.selectors import webhook_endpoint_list
from usage.forms import ExtensionInlineForm, ExtensionInlineFormSet
from usage.models import MILLI, Extension, Reservation, UsageCounter, UsageEvent
from usage.quantities import (
    amount_text,
    duration_text,
    quantity_text,
    threshold_amount_text,
    threshold_text,
    unit_label,
)
from usage.selectors import (
    HISTORY_LENGTH,
    STATUSES,
    MetricUsage,
    Status,
    account_history_list,
    account_statuses_reached,
    current_period,
    current_usage_attach,
    current_usage_of,
    limits_history_list,
    worst_status,
)

# Everything ``limits_replace`` may write; a user without all of them sees limits read-only.
LIMITS_PERMISSIONS = (
    "accounts.add_limit",
    "accounts.change_limit",
    "accounts.add_recipient",
    "accounts.change_recipient",
    "accounts.delete_recipient",
)
MSG_LIMITS_INACTIVE = _(
    "These limits are inactive: only Enterprise accounts are limited. They are kept, and "
    "apply again as soon as the account is back on Enterprise."
)


def can_edit_limits(user: Any) -> bool:
    return user.has_perms(LIMITS_PERMISSIONS)


def can_change_account(user: Any) -> bool:
    """Whether the account's own fields (as synced from the CRM) are editable."""
    return user.has_perm("accounts.change_account")


# --- Change history of limits and recipients (SPEC section 3, rule 8) ---


# --- Usage of the current period (SPEC sections 4 and 7) ---

STATUS_LABELS = {
    Status.OK: _("OK"),
    Status.WARNING: Level.WARNING.label,
    Status.BLOCKED: Level.BLOCKED.label,
}


def status_badge(status: str, title: str = "") -> str:
    return format_html(
        '<span class="usage-badge usage-badge-{}" title="{}">{}</span>',
        status,
        title,
        STATUS_LABELS[status],
    )


def _percent(part: float, whole: float) -> float:
    """``part`` as a percentage of ``whole``, within 0..100 (a zero ``whole`` is full)."""
    return 100.0 if whole <= 0 else max(0.0, min(100.0, 100.0 * part / whole))


def _bar_figures(used_milli: int, scale: int | None, metric: str) -> str:
    """The figures under a bar, with the unit: ``850 / 1,000 tokens``, ``850 tokens /
    unlimited``; seconds also in hours and minutes on a second line (``2,160 / 36,000 s``
    then ``36 min / 10 h``)."""
    used = quantity_text(used_milli, metric)
    seconds = METRICS[metric].unit == "seconds"
    unit = (
        gettext("s")
        if seconds
        else unit_label(metric, used_milli if scale is None else scale * MILLI)
    )
    if scale is None:
        text = gettext("%(used)s %(unit)s / unlimited") % {"used": used, "unit": unit}
    else:
        text = gettext("%(used)s / %(threshold)s %(unit)s") % {
            "used": used,
            "threshold": threshold_text(scale, metric),
            "unit": unit,
        }
    if not seconds:
        return text
    if scale is None:
        duration = duration_text(used_milli)
    else:
        duration = gettext("%(used)s / %(threshold)s") % {
            "used": duration_text(used_milli) or gettext("0 min"),
            "threshold": duration_text(scale * MILLI) or gettext("0 min"),
        }
    if not duration:
        return text
    return format_html('{}<br><span class="usage-duration">{}</span>', text, duration)


def usage_bar(usage: MetricUsage) -> str:
    """``used / threshold`` with the unit over a bar filled up to the effective blocked
    threshold.

    Without a blocked threshold the bar goes up to the warning threshold; a line marks the
    warning threshold on a bar that goes up to the blocked one. No threshold: "unlimited".
    """
    spec = METRICS[usage.metric]
    used = amount_text(usage.used_milli, usage.metric)
    scale = usage.effective_blocked if usage.effective_blocked is not None else usage.warning
    if scale is None:
        title = gettext("%(metric)s: %(used)s used, no threshold.") % {
            "metric": spec.label,
            "used": used,
        }
        return format_html(
            '<span class="usage-unlimited" title="{}">{}</span>',
            title,
            _bar_figures(usage.used_milli, None, usage.metric),
        )

    percent = _percent(usage.used_milli, scale * MILLI)
    lines = [
        gettext("%(metric)s: %(used)s used of %(threshold)s.")
        % {
            "metric": spec.label,
            "used": used,
            "threshold": threshold_amount_text(scale, usage.metric),
        }
    ]
    if usage.warning is not None:
        lines.append(
            gettext("Warning threshold: %(threshold)s.")
            % {"threshold": threshold_amount_text(usage.warning, usage.metric)}
        )
    if usage.blocked is not None:
        if usage.extension:
            line = gettext(
                "Blocked threshold: %(threshold)s (%(blocked)s + extensions %(extension)s)."
            ) % {
                "threshold": threshold_amount_text(usage.effective_blocked, usage.metric),
                "blocked": threshold_amount_text(usage.blocked, usage.metric),
                "extension": threshold_amount_text(usage.extension, usage.metric),
            }
        else:
            line = gettext("Blocked threshold: %(threshold)s.") % {
                "threshold": threshold_amount_text(usage.blocked, usage.metric)
            }
        lines.append(line)
    lines.append(gettext("Status: %(status)s.") % {"status": STATUS_LABELS[usage.status]})
    marker = ""
    if usage.effective_blocked is not None and usage.warning is not None:
        marker = format_html(
            '<span class="usage-bar-marker" style="left: {}%"></span>',
            f"{_percent(usage.warning, usage.effective_blocked):.1f}",
        )
    return format_html(
        '<div class="usage-bar usage-{}" title="{}">'
        '<div class="usage-bar-track"><div class="usage-bar-fill" style="width: {}%"></div>{}'
        '</div><div class="usage-bar-text">{}</div></div>',
        usage.status,
        "\n".join(lines),
        f"{percent:.1f}",
        marker,
        _bar_figures(usage.used_milli, scale, usage.metric),
    )


def _usage_column(metric: str) -> Any:
    """The list column of one metric: its usage bar (generated for each metric of METRICS)."""

    @admin.display(description=METRICS[metric].label)
    def column(account: Account) -> str:
        return usage_bar(current_usage_of(account)[metric])

    column.__name__ = f"usage_{metric}"
    return column


class AccountChangeList(ChangeList):
    """The accounts list, which reads the usage of all the accounts of the page at once."""

    def get_results(self, request: HttpRequest) -> None:
        super().get_results(request)
        current_usage_attach(self.result_list)  # evaluates (and caches) the page's rows


class UsageStatusFilter(admin.SimpleListFilter):
    """Accounts by the status of their current period (the worst over their metrics)."""

    title = _("usage status")
    parameter_name = "status"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list:
        return [(status, STATUS_LABELS[status]) for status in STATUSES]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        value = self.value()
        if value not in STATUSES:
            return queryset
        # Read once per request: with "Show counts", the admin asks for every status.
        if not hasattr(self, "_reached"):
            self._reached = account_statuses_reached()
        reached = self._reached
        if value == Status.OK:
            return queryset.exclude(pk__in=list(reached))
        return queryset.filter(pk__in=[pk for pk, status in reached.items() if status == value])


@dataclass(frozen=True)
class UsageRow:
    """One metric in the account page's usage section, every value written for display."""

    label: str
    unit: str
    used: str
    warning: str
    blocked: str
    extension: str
    effective_blocked: str
    remaining: str
    badge: str
    bar: str


def _usage_row(usage: MetricUsage) -> UsageRow:
    spec = METRICS[usage.metric]
    remaining = usage.remaining_milli
    return UsageRow(
        label=spec.label,
        unit=UNIT_LABELS.get(spec.unit, spec.unit),
        used=amount_text(usage.used_milli, usage.metric),
        warning=threshold_amount_text(usage.warning, usage.metric),
        blocked=threshold_amount_text(usage.blocked, usage.metric),
        extension=threshold_amount_text(usage.extension, usage.metric),
        effective_blocked=threshold_amount_text(usage.effective_blocked, usage.metric),
        remaining="—" if remaining is None else amount_text(remaining, usage.metric),
        badge=status_badge(usage.status),
        bar=usage_bar(usage),
    )


def _changelist_link(request: HttpRequest, model: type[Model], account: Account) -> str | None:
    """The admin list of ``model`` filtered on ``account``, if the user may see it."""
    opts = model._meta
    if not request.user.has_perm(f"{opts.app_label}.view_{opts.model_name}"):
        return None
    url = reverse(f"admin:{opts.app_label}_{opts.model_name}_changelist")
    return f"{url}?{urlencode({'account__id__exact': account.pk})}"


def current_usage_section(request: HttpRequest, account: Account) -> dict[str, Any]:
    """What the account page shows of its current period (``includes/current_usage.html``)."""
    period = current_period(account)
    usages = list(current_usage_of(account).values())
    return {
        "period": month_text(period.first_day),
        "start": datetime_text(period.start, account.timezone, with_zone=False),
        "end": datetime_text(period.end, account.timezone, with_zone=False),
        "zone": account.timezone,
        "badge": status_badge(worst_status(usages)),
        "rows": [_usage_row(usage) for usage in usages],
        "events_url": _changelist_link(request, UsageEvent, account),
        "counters_url": _changelist_link(request, UsageCounter, account),
        "reservations_url": _changelist_link(request, Reservation, account),
    }


# --- Admin classes ---


class RecipientInline(admin.TabularInline):
    """The notification recipients, editable with the limits they go with."""

    model = Recipient
    form = RecipientInlineForm
    formset = RecipientInlineFormSet
    fields = ("level", "email", "language")
    extra = 1

    def get_queryset(self, request: HttpRequest) -> QuerySet[Recipient]:
        # Warning recipients first, in the order of the lists (SPEC section 5).
        by_level = Case(*(When(level=level, then=i) for i, level in enumerate(Level.values)))
        return super().get_queryset(request).order_by(by_level, "id")

    # The recipients are part of the limits document: editable exactly when the limits are,
    # so that the document is always validated and written whole.
    def has_add_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return can_edit_limits(request.user)

    def has_change_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return can_edit_limits(request.user)

    def has_delete_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return can_edit_limits(request.user)


class ScopedLimitInline(admin.TabularInline):
    """The scoped limits (SPEC section 11.2): one row per line, in their order, with one
    field per label key (blank: any value). Part of the limits document, like recipients:
    editable exactly when the limits are, judged and written with the whole document."""

    model = ScopedLimit
    form = ScopedLimitInlineForm
    formset = ScopedLimitInlineFormSet
    extra = 0
    verbose_name = _("scoped limit")
    verbose_name_plural = _(
        "Scoped limits: other periods, rolling windows, labels (in the account's time zone)"
    )
    readonly_view_fields = (
        "metric",
        "period_display",
        "labels_display",
        "warning_display",
        "blocked_display",
    )

    def get_fields(self, request: HttpRequest, obj: Model | None = None) -> list[str]:
        if not can_edit_limits(request.user):
            return list(self.readonly_view_fields)
        return [
            "metric",
            "period",
            "window_days",
            *(label_field_name(key) for key in LABEL_KEYS),
            *Level.values,
        ]

    def get_readonly_fields(self, request: HttpRequest, obj: Model | None = None) -> Sequence:
        return () if can_edit_limits(request.user) else self.readonly_view_fields

    def get_queryset(self, request: HttpRequest) -> QuerySet[ScopedLimit]:
        return super().get_queryset(request).order_by("position", "id")

    @admin.display(description=_("period"))
    def period_display(self, obj: ScopedLimit) -> str:
        return obj.period_text()

    @admin.display(description=_("labels"))
    def labels_display(self, obj: ScopedLimit) -> str:
        return labels_text(obj.labels) or gettext("any")

    @staticmethod
    def _threshold_with_unit(value: int | None, metric: str) -> str:
        return threshold_amount_text(value, metric)

    @admin.display(description=_("warning threshold"))
    def warning_display(self, obj: ScopedLimit) -> str:
        return self._threshold_with_unit(obj.warning, obj.metric)

    @admin.display(description=_("blocked threshold"))
    def blocked_display(self, obj: ScopedLimit) -> str:
        return self._threshold_with_unit(obj.blocked, obj.metric)

    def has_view_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return request.user.has_perm("accounts.view_limit") or can_edit_limits(request.user)

    def has_add_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return can_edit_limits(request.user)

    def has_change_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return can_edit_limits(request.user)

    def has_delete_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return can_edit_limits(request.user)


class ExtensionInline(admin.TabularInline):
    """The account's extensions: granted ones read-only, new ones on any line of the account
    for the line's current period.

    A new row is judged by ``extension_grant`` (see ``ExtensionInlineForm``) and saved by
    ``AccountAdmin.save_related`` through the same service: extensions are never changed
    or deleted, they are the record of what was granted.
    """

    model = Extension
    form = ExtensionInlineForm
    formset = ExtensionInlineFormSet
    fields = ("line", "period_display", "amount", "reason", "granted_by", "granted_at_display")
    readonly_fields = ("period_display", "granted_by", "granted_at_display")
    extra = 0

    def get_queryset(self, request: HttpRequest) -> QuerySet[Extension]:
        return super().get_queryset(request).select_related("granted_by", "scoped_limit", "account")

    @admin.display(description=_("limit line"))
    def line(self, obj: Extension) -> str:
        """A granted extension's line, in the words the new rows offer."""
        return obj.line_text()

    @admin.display(description=_("period"))
    def period_display(self, obj: Extension) -> str:
        if obj.period is None:
            return gettext("current")  # a new row: granted for the line's current period
        if obj.period_start is None:
            return month_text(obj.period)
        return datetime_text(obj.period_start, obj.account.timezone)

    @admin.display(description=_("granted at"))
    def granted_at_display(self, obj: Extension) -> str:
        if obj.granted_at is None:
            return "—"
        return datetime_text(obj.granted_at, obj.account.timezone)

    def has_change_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return False


@admin.register(Account)
class AccountAdmin(SimpleHistoryAdmin):
    form = AccountAdminForm
    inlines = [ScopedLimitInline, RecipientInline, ExtensionInline, NotificationInline]
    actions = [evaluate_thresholds_now, send_test_notification]
    # Then the status and one usage bar per metric (``get_list_display``).
    list_display = ("name", "external_id", "plan")
    list_filter = ("plan", UsageStatusFilter, "is_active", "language")
    search_fields = ("name", "external_id")
    ordering = ("name", "external_id")
    record_fields = ("id", "limits_updated_at", "created_at", "updated_at")
    readonly_fields = (*record_fields, "limits_summary", "webhooks_summary", "webhooks_list")

    class Media:
        css = {"all": ["accounts/usage.css"]}

    def get_changelist(self, request: HttpRequest, **kwargs: Any) -> type[ChangeList]:
        return AccountChangeList

    def get_list_display(self, request: HttpRequest) -> list:
        # Built from METRICS on each request, so a new metric gets its column by itself.
        return [
            *super().get_list_display(request),
            "usage_status",
            *(_usage_column(metric) for metric in METRICS),
        ]

    @admin.display(description=_("status"))
    def usage_status(self, obj: Account) -> str:
        usages = current_usage_of(obj).values()
        status = worst_status(usages)
        title = ", ".join(
            gettext("%(metric)s: %(status)s")
            % {"metric": METRICS[usage.metric].label, "status": STATUS_LABELS[usage.status]}
            for usage in usages
            if usage.status != Status.OK
        )
        return status_badge(status, title)

    def get_inline_instances(self, request: HttpRequest, obj: Account | None = None) -> list:
        # An extension is granted to an existing account only.
        return [
            inline
            for inline in super().get_inline_instances(request, obj)
            if obj is not None or not isinstance(inline, ExtensionInline)
        ]

    def has_change_permission(self, request: HttpRequest, obj: Account | None = None) -> bool:
        # Account managers change limits and recipients, on the account page.
        return super().has_change_permission(request, obj) or request.user.has_perm(
            "accounts.change_limit"
        )

    def get_readonly_fields(self, request: HttpRequest, obj: Account | None = None) -> list[str]:
        readonly = list(super().get_readonly_fields(request, obj))
        if not can_change_account(request.user):
            readonly.extend(ACCOUNT_FIELDS)
        return readonly

    def get_fieldsets(self, request: HttpRequest, obj: Account | None = None) -> list:
        fieldsets: list = [
            (
                None,
                {
                    "fields": [
                        ("name", "external_id"),
                        ("plan", "is_active"),
                        ("language", "timezone"),
                    ]
                },
            )
        ]
        if obj is not None and is_historic(obj):
            # A past version of the account (its History page): limits have their own history.
            return fieldsets
        # Stored limits of an account on another plan are kept, and may be cleared, but
        # apply to nothing: the page says so next to them.
        note = (
            format_html('<p class="limits-inactive">{}</p>', MSG_LIMITS_INACTIVE)
            if obj is not None and not obj.is_enterprise
            else None
        )
        if can_edit_limits(request.user):
            description = _(
                "Thresholds for each calendar month, in the account's time zone. "
                "Leave a threshold blank for no limit."
            )
            limits = {
                "fields": limit_field_rows(),
                "description": format_html("{}<p>{}</p>", note, description)
                if note
                else description,
            }
            fieldsets.append((_("Limits"), limits))
        elif obj is not None:
            limits = {"fields": ["limits_summary"], "description": note}
            fieldsets.append((_("Limits"), limits))
        if obj is not None and request.user.has_perm("notifications.view_webhookendpoint"):
            # Endpoints are added on their own page, which shows the signing secret once.
            adds = request.user.has_perm("notifications.add_webhookendpoint")
            webhooks = "webhooks_summary" if adds else "webhooks_list"
            fieldsets.append((_("Webhooks"), {"fields": [webhooks]}))
        if obj is not None:
            fieldsets.append(
                (_("Details"), {"fields": self.record_fields, "classes": ["collapse"]})
            )
        return fieldsets

    def get_form(
        self, request: HttpRequest, obj: Account | None = None, change: bool = False, **kwargs: Any
    ) -> type[AccountAdminForm]:
        # The threshold fields are added by the form itself, from METRICS, when the
        # fieldsets show them; they are not model fields for modelform_factory.
        fields: Sequence[str] | None = kwargs.pop("fields", None)
        if fields is None:
            fields = flatten_fieldsets(self.get_fieldsets(request, obj))
        threshold_fields = limit_field_names()
        model_fields = [name for name in fields if name not in threshold_fields]
        form = super().get_form(request, obj, change, fields=model_fields, **kwargs)
        form.edits_limits = len(model_fields) < len(fields)
        return form

    def save_model(
        self, request: HttpRequest, obj: Account, form: AccountAdminForm, change: bool
    ) -> None:
        if change and not can_change_account(request.user):
            return  # the account's own fields are read-only for this user
        if change and not is_historic(obj) and not set(form.changed_data) & set(ACCOUNT_FIELDS):
            return  # only limits or recipients changed: no empty version of the account
        if not is_historic(obj):
            super().save_model(request, obj, form, change)
            return
        # Reverting to a past version saves nothing else (no limits, no inlines), so a
        # return to Enterprise applies the stored limits here, in the revert's transaction.
        with transaction.atomic():
            previous_plan = (
                Account.objects.select_for_update()
                .filter(pk=obj.pk)
                .values_list("plan", flat=True)
                .get()
            )
            super().save_model(request, obj, form, change)
            limits_reactivate(account=obj, previous_plan=previous_plan)

    def save_related(
        self, request: HttpRequest, form: AccountAdminForm, formsets: list, change: bool
    ) -> None:
        form.save_m2m()
        extensions = []
        for formset in formsets:
            if isinstance(formset, (RecipientInlineFormSet, ScopedLimitInlineFormSet)):
                # Writes nothing: fills what the admin's change message lists.
                formset.save(commit=False)
            elif formset.model is Extension:
                extensions.append(formset)
            else:
                self.save_formset(request, form, formset, change)
        draft: LimitsDraft | None = getattr(form.instance, "_limits_draft", None)
        if draft is not None:
            if draft.document is None:
                raise ImproperlyConfigured(
                    "The limits were not validated: the recipients inline is missing."
                )
            limits_replace(
                account=form.instance, data=draft.document, actor=request.user, reason="admin"
            )
        for formset in extensions:
            self._grant(request, formset)
        if "plan" in form.changed_data:
            # After the limits and extensions saved with it, so that a return to Enterprise
            # evaluates the limits the page leaves, not the ones it replaces.
            limits_reactivate(account=form.instance, previous_plan=form.initial["plan"])

    @staticmethod
    def _grant(request: HttpRequest, formset: Any) -> list[Extension]:
        """Grant the new rows of the extensions inline, already judged by the service."""
        granted = extensions_grant(
            account=formset.instance,
            rows=[row.grant_row() for row in formset.extra_forms if row.has_changed()],
            actor=request.user,
        )
        # What the admin's change message lists.
        formset.new_objects, formset.changed_objects, formset.deleted_objects = granted, [], []
        return granted

    def render_change_form(
        self,
        request: HttpRequest,
        context: dict[str, Any],
        add: bool = False,
        change: bool = False,
        form_url: str = "",
        obj: Account | None = None,
    ) -> HttpResponse:
        if obj is not None and request.user.has_perm("accounts.view_limit"):
            context["limits_history"] = {
                "heading": _("Change history of limits and recipients"),
                "changes": limits_history_list(account=obj),
                "length": HISTORY_LENGTH,
                "account_pk": obj.pk,
            }
            unheard = blocked_lines_without_recipient(account=obj)
            if unheard and obj.is_enterprise:
                context["blocked_without_recipient"] = unheard
        if obj is not None:
            context["current_usage"] = current_usage_section(request, obj)
            context["usage_charts"] = [
                {"chart": chart, "badge": status_badge(chart.status)}
                for chart in account_charts(account=obj)
            ]
            context["frame"] = FRAME
        return super().render_change_form(request, context, add, change, form_url, obj)

    def revert_disabled(self, request: HttpRequest, obj: Account | None = None) -> bool:
        return super().revert_disabled(request, obj) or not can_change_account(request.user)

    # The History page lists what really changed (``account_history_list``): the limits
    # and recipients, with who, when and from where, and the account's own fields. A
    # version of the account's own fields is offered only to those who may go back to it;
    # limits have no version to go back to: they change through ``limits_replace`` only.
    object_history_template = "admin/accounts/account/object_history.html"

    def history_view(
        self, request: HttpRequest, object_id: str, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        account = self.get_object(request, object_id)
        context = dict(extra_context or {})
        if account is not None:
            context["limits_history"] = {
                "heading": _("Change history of the account, its limits and recipients"),
                "changes": account_history_list(account=account),
                "length": HISTORY_LENGTH,
                "account_pk": account.pk,
                "versions": not self.revert_disabled(request, account),
            }
        return super().history_view(request, object_id, context)

    def history_view_title(self, request: HttpRequest, obj: Account) -> str:
        return gettext("History: %(account)s") % {"account": obj}

    def history_form_view(
        self,
        request: HttpRequest,
        object_id: str,
        version_id: str,
        extra_context: dict[str, Any] | None = None,
    ) -> HttpResponse:
        # simple-history only hides the Revert button; its view would still take the post
        # (and, for an account manager, log a change that ``save_model`` never made).
        if request.method == "POST" and self.revert_disabled(request):
            raise PermissionDenied
        return super().history_form_view(request, object_id, version_id, extra_context)

    @admin.display(description=_("Webhook endpoints"))
    def webhooks_list(self, obj: Account) -> str:
        """The account's webhook endpoints, each linked to its page, with its levels and
        whether it is active."""
        items = format_html_join(
            "",
            '<li><a href="{}">{}</a> · {} · {}</li>',
            (
                (
                    reverse("admin:notifications_webhookendpoint_change", args=[endpoint.pk]),
                    endpoint.url,
                    endpoint_levels_text(endpoint),
                    gettext("active") if endpoint.is_active else gettext("inactive"),
                )
                for endpoint in webhook_endpoint_list(account=obj)
            ),
        )
        if not items:
            return format_html("<p>{}</p>", gettext("No webhook endpoint."))
        return format_html('<ul class="webhook-endpoints">{}</ul>', items)

    @admin.display(description=_("Webhook endpoints"))
    def webhooks_summary(self, obj: Account) -> str:
        """``webhooks_list`` and a link that adds an endpoint to this account."""
        add = reverse("admin:notifications_webhookendpoint_add")
        return format_html(
            '{}<p><a class="addlink" href="{}?account={}">{}</a></p>',
            self.webhooks_list(obj),
            add,
            obj.pk,
            gettext("Add a webhook endpoint"),
        )

    @admin.display(description=_("Limits"))
    def limits_summary(self, obj: Account) -> str:
        document = limits_document_get(account=obj)
        header = format_html(
            "<tr><th>{}</th><th>{}</th><th>{}</th></tr>",
            _("Metric"),
            Level.WARNING.label,
            Level.BLOCKED.label,
        )
        rows = format_html_join(
            "",
            "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
            (
                (
                    METRICS[metric].label,
                    threshold_amount_text(thresholds.warning, metric),
                    threshold_amount_text(thresholds.blocked, metric),
                )
                for metric, thresholds in document.limits.items()
            ),
        )
        return format_html("<table>{}{}</table>", header, rows)


# --- API tokens -------------------------------------------------------------------------
