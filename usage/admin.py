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
from accounts.models import Account

from .models import (
    CounterRepair,
    EventPurge,
    Extension,
    Reservation,
    UsageCounter,
    UsageEvent,
)
from .quantities import quantity_text


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
        account = Account.objects.filter(pk=self._account_id()).first()
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


class QuantityColumn:
    """The ``quantity_display`` column of rows with ``quantity_milli`` and ``metric``."""

    @admin.display(description=_("quantity"), ordering="quantity_milli")
    def quantity_display(self, obj: UsageEvent | UsageCounter) -> str:
        return quantity_text(obj.quantity_milli, obj.metric, all_places=True)


@admin.register(UsageEvent)
class UsageEventAdmin(QuantityColumn, LargeTableAdmin):
    list_display = (
        "event_id",
        "account",
        "metric",
        "quantity_display",
        "occurred_at",
        "received_at",
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
        "occurred_at",
        "received_at",
        "source",
        "labels",
        "metadata",
        "request_id",
        "correlation_id",
    )
    readonly_fields = fields

    @admin.display(description=_("labels"))
    def labels_display(self, obj: UsageEvent) -> str:
        return labels_key(obj.labels)


@admin.register(UsageCounter)
class UsageCounterAdmin(QuantityColumn, LargeTableAdmin):
    list_display = ("account", "metric", "labels", "day", "quantity_display", "updated_at")
    list_filter = ("metric", AccountFilter)
    ordering = ("-day", "-pk")
    fields = ("account", "metric", "labels", "day", "quantity_display", "updated_at")
    readonly_fields = fields


@admin.register(Extension)
class ExtensionAdmin(ReadOnlyAdmin):
    """Granted on the account page, through ``usage.services.extension_grant``."""

    list_display = (
        "account",
        "metric",
        "line_display",
        "period_display",
        "amount",
        "reason",
        "granted_by",
        "granted_at",
    )
    list_filter = ("metric", AccountFilter)
    list_select_related = ("account", "granted_by", "scoped_limit")
    fields = (
        "account",
        "metric",
        "line_display",
        "period_display",
        "amount",
        "reason",
        "granted_by",
        "granted_at",
    )
    readonly_fields = fields

    @admin.display(description=_("limit line"))
    def line_display(self, obj: Extension) -> str:
        return obj.line_text()

    @admin.display(description=_("period"), ordering="period")
    def period_display(self, obj: Extension) -> str:
        return obj.period_key


@admin.register(CounterRepair)
class CounterRepairAdmin(ReadOnlyAdmin):
    list_display = (
        "account",
        "metric",
        "labels",
        "day",
        "hour",
        "found_display",
        "expected_display",
        "repaired_at",
        "repaired_by",
    )
    list_filter = ("metric", "repaired_by", AccountFilter)
    list_select_related = ("account",)
    fields = list_display
    readonly_fields = fields

    @admin.display(description=_("counter found"))
    def found_display(self, obj: CounterRepair) -> str:
        return quantity_text(obj.found_milli, obj.metric, all_places=True)

    @admin.display(description=_("sum of events"))
    def expected_display(self, obj: CounterRepair) -> str:
        return quantity_text(obj.expected_milli, obj.metric, all_places=True)


@admin.register(EventPurge)
class EventPurgeAdmin(ReadOnlyAdmin):
    list_display = ("before", "purged_at", "deleted")
    fields = list_display
    readonly_fields = fields


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
        "created_at",
        "expires_at",
        "ended_at",
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
        "created_at",
        "expires_at",
        "ended_at",
        "settled_by",
    )
    readonly_fields = fields

    @admin.display(description=_("labels"))
    def labels_display(self, obj: Reservation) -> str:
        return labels_key(obj.labels)

    @admin.display(description=_("state"))
    def state_display(self, obj: Reservation) -> str:
        return str(Reservation.Status(obj.state_at(timezone.now())).label)
