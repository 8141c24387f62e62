"""Admin of what belongs to accounts alone: API tokens and the account they are bound to.

The account page itself, which shows usage, extensions and notifications, is in
``backoffice.admin``.
"""

from __future__ import annotations

from collections.abc import Sequence

from django.contrib import admin
from django.db.models import Model, QuerySet
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html
from django.utils.translation import gettext_lazy as _
from knox.admin import AuthTokenAdmin
from knox.models import AuthToken

from config.dates import datetime_text

from .selectors import token_bound_accounts


class BoundAccountFilter(admin.SimpleListFilter):
    """Tokens by the account they are bound to, or those bound to none."""

    title = _("account")
    parameter_name = "account"
    UNBOUND = "none"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list:
        return [(self.UNBOUND, _("Any account (not bound)"))] + [
            (str(account.pk), str(account)) for account in token_bound_accounts()
        ]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        value = self.value()
        if value is None:
            return queryset
        if value == self.UNBOUND:
            return queryset.filter(account_binding__isnull=True)
        return queryset.filter(account_binding__account_id=value)


admin.site.unregister(AuthToken)


@admin.register(AuthToken)
class BoundAuthTokenAdmin(AuthTokenAdmin):
    """Knox's token admin, showing the account a token is bound to (SPEC section 11.6).

    A token is revoked by deleting it, which deletes its binding too. The binding is set
    by ``create_service_token --account`` and never changed here: unbinding a token would
    widen its reach.
    """

    list_display = ("digest_display", "user", "bound_account", "created_display", "expiry_display")
    list_filter = (BoundAccountFilter,)
    list_select_related = ("user", "account_binding__account")

    def get_readonly_fields(self, request: HttpRequest, obj: Model | None = None) -> Sequence:
        return ("bound_account",) if obj is not None else ()

    # Knox's fields have names in no language: the columns say them in the admin's.
    @admin.display(description=_("digest"), ordering="digest")
    def digest_display(self, obj: AuthToken) -> str:
        return obj.digest

    @admin.display(description=_("created at"), ordering="created")
    def created_display(self, obj: AuthToken) -> str:
        return datetime_text(obj.created, "UTC")

    @admin.display(description=_("expires at"), ordering="expiry", empty_value=_("never"))
    def expiry_display(self, obj: AuthToken) -> str | None:
        return None if obj.expiry is None else datetime_text(obj.expiry, "UTC")

    @admin.display(
        description=_("bound to account"),
        ordering="account_binding__account__name",
        empty_value=_("any (not bound)"),
    )
    def bound_account(self, obj: AuthToken) -> str | None:
        binding = getattr(obj, "account_binding", None)
        if binding is None:
            return None
        return format_html(
            '<a href="{}">{}</a>',
            reverse("admin:accounts_account_change", args=[binding.account_id]),
            binding.account,
        )
