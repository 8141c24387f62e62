"""The admin of usage rows (SPEC section 7): all read-only, they are facts.

Events, counters and reservations are written by the services only, extensions are granted on the
account page (``backoffice.admin.ExtensionInline``), repairs and purges by the commands.
Lists that grow without bound never count the whole table and order by the primary key,
and every list can be narrowed to one account with ``?account__id__exact=<id>`` (the
account page links there) without loading every account into a filter.
"""

from __future__ import annotations

import uuid
from typing import Any

from django.contrib import admin
from django.db.models import Q, QuerySet
from django.http import HttpRequest
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from accounts.labels import labels_key
from accounts.selectors import account_get
from config.dates import date_text, datetime_text, month_text

from .models import (
    CounterRepair,
    EventPurge,
    Extension,
    Reservation,
    UsageCounter,
    UsageEvent,
    labels_key_text,
)
from .quantities import amount_text, threshold_amount_text


class ReadOnlyAdmin(admin.ModelAdmin):
    """A model shown, never added, changed or deleted in the admin."""

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class AccountFilter(admin.SimpleListFilter):
    """One account, as linked from its page; offers no list of every account."""

    title = _("account")
    parameter_name = "account__id__exact"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list:
        value = self.value()
        if value is None:
            return []
        account_id = self._account_id()
        account = None if account_id is None else account_get(account_id=account_id)
        # An unknown or malformed id is still offered: the filter then shows no rows.
        return [(value, str(account) if account is not None else value)]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        if self.value() is None:
            return queryset
        account_id = self._account_id()
        return queryset.none() if account_id is None else queryset.filter(account_id=account_id)

    def _account_id(self) -> uuid.UUID | None:
        try:
            return uuid.UUID(self.value())
        except (TypeError, ValueError):
            return None


class LargeTableAdmin(ReadOnlyAdmin):
    """A list of rows that grows with usage: no count of the whole table, newest first."""

    show_full_result_count = False
    ordering = ("-pk",)
    list_select_related = ("account",)


def local_time(field: str, description: Any) -> Any:
    """A column showing the datetime ``field`` of a row in its account's time zone, named."""

    @admin.display(description=description, ordering=field)
    def column(self: admin.ModelAdmin, obj: Any) -> str:
        return datetime_text(getattr(obj, field), obj.account.timezone)

    column.__name__ = f"{field}_display"
    return column


def local_day(field: str, description: Any) -> Any:
    """A column showing the date ``field`` (a local day of the account)."""

    @admin.display(description=description, ordering=field)
    def column(self: admin.ModelAdmin, obj: Any) -> str:
        return date_text(getattr(obj, field))

    column.__name__ = f"{field}_display"
    return column


class QuantityColumn:
    """The ``quantity_display`` column of rows with ``quantity_milli`` and ``metric``."""

    @admin.display(description=_("quantity"), ordering="quantity_milli")
    def quantity_display(self, obj: UsageEvent | UsageCounter) -> str:
        return amount_text(obj.quantity_milli, obj.metric)


@admin.register(UsageEvent)
class UsageEventAdmin(QuantityColumn, LargeTableAdmin):
    list_display = (
        "event_id",
        "account",
        "metric",
        "quantity_display",
        "occurred_at_display",
        "received_at_display",
        "source",
        "labels_display",
    )
    list_filter = ("metric", AccountFilter)
    # Exact: event ids are case-sensitive, and a pattern would scan the table.
    search_fields = ("event_id__exact",)
    search_help_text = _("Search by exact event id.")
    fields = (
        "event_id",
        "account",
        "metric",
        "quantity_display",
        "occurred_at_display",
        "received_at_display",
        "source",
        "labels_display",
        "metadata",
        "request_id",
        "correlation_id",
    )
    readonly_fields = fields
    occurred_at_display = local_time("occurred_at", _("occurred at"))
    received_at_display = local_time("received_at", _("received at"))

    @admin.display(description=_("labels"))
    def labels_display(self, obj: UsageEvent) -> str:
        return labels_key_text(labels_key(obj.labels)) or "—"


@admin.register(UsageCounter)
class UsageCounterAdmin(QuantityColumn, LargeTableAdmin):
    list_display = (
        "account",
        "metric",
        "labels_display",
        "day_display",
        "quantity_display",
        "updated_at_display",
    )
    list_filter = ("metric", AccountFilter)
    ordering = ("-day", "-pk")
    fields = list_display
    readonly_fields = fields
    day_display = local_day("day", _("day"))
    updated_at_display = local_time("updated_at", _("updated at"))

    @admin.display(description=_("labels"))
    def labels_display(self, obj: UsageCounter) -> str:
        return labels_key_text(obj.labels) or "—"


@admin.register(Extension)
class ExtensionAdmin(ReadOnlyAdmin):
    """Granted on the account page, through ``usage.services.extension_grant``."""

    list_display = (
        "account",
        "metric",
        "line_display",
        "period_display",
        "amount_display",
        "reason",
        "granted_by",
        "granted_at_display",
    )
    list_filter = ("metric", AccountFilter)
    list_select_related = ("account", "granted_by", "scoped_limit")
    fields = list_display
    readonly_fields = fields
    granted_at_display = local_time("granted_at", _("granted at"))

    @admin.display(description=_("limit line"))
    def line_display(self, obj: Extension) -> str:
        return obj.line_text()

    @admin.display(description=_("period"), ordering="period")
    def period_display(self, obj: Extension) -> str:
        if obj.period_start is None:
            return month_text(obj.period)
        return datetime_text(obj.period_start, obj.account.timezone)

    @admin.display(description=_("amount"), ordering="amount")
    def amount_display(self, obj: Extension) -> str:
        return threshold_amount_text(obj.amount, obj.metric)


@admin.register(CounterRepair)
class CounterRepairAdmin(ReadOnlyAdmin):
    list_display = (
        "account",
        "metric",
        "labels_display",
        "day_display",
        "hour_display",
        "found_display",
        "expected_display",
        "repaired_at_display",
        "repaired_by",
    )
    list_filter = ("metric", "repaired_by", AccountFilter)
    list_select_related = ("account",)
    fields = list_display
    readonly_fields = fields
    day_display = local_day("day", _("day"))
    repaired_at_display = local_time("repaired_at", _("repaired at"))

    @admin.display(description=_("labels"))
    def labels_display(self, obj: CounterRepair) -> str:
        return labels_key_text(obj.labels) or "—"

    @admin.display(description=_("hour"), ordering="hour")
    def hour_display(self, obj: CounterRepair) -> str:
        return "—" if obj.hour is None else datetime_text(obj.hour, obj.account.timezone)

    @admin.display(description=_("counter found"))
    def found_display(self, obj: CounterRepair) -> str:
        return amount_text(obj.found_milli, obj.metric)

    @admin.display(description=_("sum of events"))
    def expected_display(self, obj: CounterRepair) -> str:
        return amount_text(obj.expected_milli, obj.metric)


@admin.register(EventPurge)
class EventPurgeAdmin(ReadOnlyAdmin):
    list_display = ("before_display", "purged_at_display", "deleted")
    fields = list_display
    readonly_fields = fields

    @admin.display(description=_("before"), ordering="before")
    def before_display(self, obj: EventPurge) -> str:
        return date_text(obj.before)

    @admin.display(description=_("purged at"), ordering="purged_at")
    def purged_at_display(self, obj: EventPurge) -> str:
        # A purge spans every account, each in its own zone: shown in UTC, named.
        return datetime_text(obj.purged_at, "UTC")


class ReservationStateFilter(admin.SimpleListFilter):
    """A reservation's state as the API answers it: an active one past its expiry is
    expired, whether or not the tidying task has written so yet."""

    title = _("state")
    parameter_name = "state"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list:
        return list(Reservation.Status.choices)

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        value, now = self.value(), timezone.now()
        if value == Reservation.Status.ACTIVE:
            return queryset.filter(status=value, expires_at__gt=now)
        if value == Reservation.Status.EXPIRED:
            return queryset.filter(
                Q(status=value) | Q(status=Reservation.Status.ACTIVE, expires_at__lte=now)
            )
        if value in Reservation.Status.values:
            return queryset.filter(status=value)
        return queryset


@admin.register(Reservation)
class ReservationAdmin(QuantityColumn, LargeTableAdmin):
    """Held, settled and released through the API only (SPEC 12.1): read-only here."""

    list_display = (
        "reservation_id",
        "account",
        "metric",
        "quantity_display",
        "labels_display",
        "state_display",
        "created_at_display",
        "expires_at_display",
        "ended_at_display",
        "settled_by",
    )
    list_filter = (ReservationStateFilter, "metric", AccountFilter)
    search_fields = ("reservation_id__exact",)
    search_help_text = _("Search by exact reservation id.")
    fields = (
        "reservation_id",
        "account",
        "metric",
        "quantity_display",
        "labels",
        "state_display",
        "created_at_display",
        "expires_at_display",
        "ended_at_display",
        "settled_by",
    )
    readonly_fields = fields
    created_at_display = local_time("created_at", _("created at"))
    expires_at_display = local_time("expires_at", _("expires at"))
    ended_at_display = local_time("ended_at", _("ended at"))

    @admin.display(description=_("labels"))
    def labels_display(self, obj: Reservation) -> str:
        return labels_key_text(labels_key(obj.labels)) or "—"

    @admin.display(description=_("state"))
    def state_display(self, obj: Reservation) -> str:
        return str(Reservation.Status(obj.state_at(timezone.now())).label)
