"""The admin of accounts, the main interface of account managers (SPEC section 7).

The account page edits the account, its limits per metric and its recipients in one
form, validated whole by ``accounts.services`` and stored by ``limits_replace`` (see
``accounts.forms`` for how the form and the inline meet). Account managers may change
limits and recipients but not the account's own fields, which come from the CRM.
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.contrib import admin
from django.contrib.admin.utils import flatten_fieldsets
from django.core.exceptions import ImproperlyConfigured
from django.db.models import Case, Model, QuerySet, When
from django.http import HttpRequest, HttpResponse
from django.utils import formats
from django.utils.html import format_html, format_html_join
from django.utils.translation import gettext
from django.utils.translation import gettext_lazy as _
from simple_history.admin import SimpleHistoryAdmin
from simple_history.models import is_historic

from notifications.admin import (
    NotificationInline,
    evaluate_thresholds_now,
    send_test_notification,
)

from .forms import (
    ACCOUNT_FIELDS,
    AccountAdminForm,
    LimitsDraft,
    RecipientInlineForm,
    RecipientInlineFormSet,
    limit_field_names,
    limit_field_rows,
    limit_label,
)
from .metrics import METRICS
from .models import Account, Language, Level, Limit, Recipient
from .selectors import limits_document_get
from .services import limits_replace

# Everything ``limits_replace`` may write; a user without all of them sees limits read-only.
LIMITS_PERMISSIONS = (
    "accounts.add_limit",
    "accounts.change_limit",
    "accounts.add_recipient",
    "accounts.change_recipient",
    "accounts.delete_recipient",
)
HISTORY_LENGTH = 50

_RECIPIENT_LABELS = {Level.WARNING: _("Warning recipient"), Level.BLOCKED: _("Blocked recipient")}


def can_edit_limits(user: Any) -> bool:
    return user.has_perms(LIMITS_PERMISSIONS)


def can_change_account(user: Any) -> bool:
    """Whether the account's own fields (as synced from the CRM) are editable."""
    return user.has_perm("accounts.change_account")


# --- Change history of limits and recipients (SPEC section 3, rule 8) ---


@dataclass(frozen=True)
class LimitsChange:
    """One changed value of an account's limits or recipients."""

    when: datetime
    who: str
    what: str
    old: str
    new: str
    reason: str


def _threshold_display(value: int | None) -> str:
    if value is None:
        return gettext("unlimited")
    return formats.number_format(value, force_grouping=True)


def _recipient_display(record: Any) -> str:
    if record is None:
        return "—"
    language = dict(Language.choices).get(record.language, record.language)
    return f"{record.email} ({language})"


def _records_with_previous(history: QuerySet, *, account: Account, limit: int) -> list[tuple]:
    """The newest ``limit`` records of the account's rows, each with the record before it."""
    records = list(
        history.filter(account_id=account.pk)
        .select_related("history_user")
        .order_by("-history_date", "-history_id")[:limit]
    )
    by_row: dict[Any, list] = defaultdict(list)
    for record in records:
        by_row[record.id].append(record)
    pairs = []
    for newest_first in by_row.values():
        pairs.extend(itertools.pairwise(newest_first))
        # The oldest record fetched of a row needs one query for its predecessor, so at
        # most one query per row (a limit row per metric, a few recipients).
        oldest = newest_first[-1]
        pairs.append((oldest, None if oldest.history_type == "+" else oldest.prev_record))
    return pairs


def _limit_changes(record: Any, previous: Any) -> list[tuple[str, str, str]]:
    spec = METRICS.get(record.metric)
    levels = Level.values
    if record.history_type == "~" and previous is not None:
        delta = record.diff_against(previous, included_fields=levels)
        values = [(change.field, change.old, change.new) for change in delta.changes]
    elif record.history_type == "-":
        values = [(level, getattr(record, level), None) for level in levels]
    else:
        values = [(level, None, getattr(record, level)) for level in levels]
    return [
        (
            str(limit_label(spec, level)) if spec else f"{record.metric}: {level}",
            _threshold_display(old),
            _threshold_display(new),
        )
        for level, old, new in sorted(values, key=lambda value: levels.index(value[0]))
        if old != new
    ]


def _recipient_changes(record: Any, previous: Any) -> list[tuple[str, str, str]]:
    label = _RECIPIENT_LABELS.get(record.level, record.level)
    before = {"+": None, "-": record}.get(record.history_type, previous)
    old = _recipient_display(before)
    new = _recipient_display(None if record.history_type == "-" else record)
    return [(str(label), old, new)] if old != new else []


def limits_history_list(*, account: Account, limit: int = HISTORY_LENGTH) -> list[LimitsChange]:
    """The ``limit`` most recent changes of the account's limits and recipients, newest first.

    Built from simple-history's records (written by ``limits_replace`` with who and why),
    one entry per changed value.
    """
    found: list[tuple[Any, LimitsChange]] = []
    for history, describe in (
        (Limit.history, _limit_changes),
        (Recipient.history, _recipient_changes),
    ):
        for record, previous in _records_with_previous(history, account=account, limit=limit):
            user = record.history_user
            for what, old, new in describe(record, previous):
                change = LimitsChange(
                    when=record.history_date,
                    who=user.get_username() if user is not None else "—",
                    what=what,
                    old=old,
                    new=new,
                    reason=record.history_change_reason or "",
                )
                found.append(((record.history_date, record.history_id), change))
    found.sort(key=lambda item: item[0], reverse=True)
    return [change for _key, change in found[:limit]]


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


@admin.register(Account)
class AccountAdmin(SimpleHistoryAdmin):
    form = AccountAdminForm
    inlines = [RecipientInline, NotificationInline]
    actions = [evaluate_thresholds_now, send_test_notification]
    # More columns (status badge, usage bars) are appended here as admin display methods.
    list_display = ("name", "external_id", "plan", "language", "timezone", "is_active")
    list_filter = ("plan", "is_active")
    search_fields = ("name", "external_id")
    ordering = ("name", "external_id")
    record_fields = ("id", "limits_updated_at", "created_at", "updated_at")
    readonly_fields = (*record_fields, "limits_summary")

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
        if can_edit_limits(request.user):
            limits = {
                "fields": limit_field_rows(),
                "description": _(
                    "Thresholds for each calendar month, in the account's time zone. "
                    "Leave a threshold blank for no limit."
                ),
            }
            fieldsets.append((_("Limits"), limits))
        elif obj is not None:
            fieldsets.append((_("Limits"), {"fields": ["limits_summary"]}))
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
        super().save_model(request, obj, form, change)

    def save_related(
        self, request: HttpRequest, form: AccountAdminForm, formsets: list, change: bool
    ) -> None:
        form.save_m2m()
        for formset in formsets:
            if isinstance(formset, RecipientInlineFormSet):
                # Writes nothing: fills what the admin's change message lists.
                formset.save(commit=False)
            else:
                self.save_formset(request, form, formset, change)
        draft: LimitsDraft | None = getattr(form.instance, "_limits_draft", None)
        if draft is None:
            return
        if draft.document is None:
            raise ImproperlyConfigured(
                "The limits were not validated: the recipients inline is missing."
            )
        limits_replace(
            account=form.instance, data=draft.document, actor=request.user, reason="admin"
        )

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
                "changes": limits_history_list(account=obj),
                "length": HISTORY_LENGTH,
            }
        return super().render_change_form(request, context, add, change, form_url, obj)

    def revert_disabled(self, request: HttpRequest, obj: Account | None = None) -> bool:
        return super().revert_disabled(request, obj) or not can_change_account(request.user)

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
                    _threshold_display(thresholds.warning),
                    _threshold_display(thresholds.blocked),
                )
                for metric, thresholds in document.limits.items()
            ),
        )
        return format_html("<table>{}{}</table>", header, rows)
