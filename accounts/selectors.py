"""Reads of accounts and their limits documents."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.db.models import Q, QuerySet

from .metrics import METRICS
from .models import Account, Level


@dataclass(frozen=True)
class Thresholds:
    """The thresholds of one metric; ``None`` means no threshold."""

    warning: int | None = None
    blocked: int | None = None

    @property
    def is_unlimited(self) -> bool:
        return self.warning is None and self.blocked is None


@dataclass(frozen=True)
class RecipientSpec:
    email: str
    language: str


@dataclass(frozen=True)
class LimitsDocument:
    """An account's limits: every metric, and both recipient lists."""

    limits: dict[str, Thresholds]
    recipients: dict[str, tuple[RecipientSpec, ...]]
    account_id: uuid.UUID | None = None
    updated_at: datetime | None = field(default=None, compare=False)

    @property
    def is_empty(self) -> bool:
        return all(t.is_unlimited for t in self.limits.values()) and not any(
            self.recipients.values()
        )

    def as_data(self) -> dict[str, Any]:
        """The JSON-like ``limits`` and ``recipients`` parts, as the API writes them."""
        return {
            "limits": {
                metric: {"warning": t.warning, "blocked": t.blocked}
                for metric, t in self.limits.items()
            },
            "recipients": {
                level: [{"email": r.email, "language": r.language} for r in specs]
                for level, specs in self.recipients.items()
            },
        }


def limits_document_get(*, account: Account) -> LimitsDocument:
    """The account's current limits document, every metric and both lists included."""
    stored = {row.metric: row for row in account.limits.all()}
    limits = {
        code: Thresholds(warning=stored[code].warning, blocked=stored[code].blocked)
        if code in stored
        else Thresholds()
        for code in METRICS
    }
    recipients: dict[str, list[RecipientSpec]] = {level: [] for level in Level.values}
    for row in account.recipients.order_by("id"):
        recipients[row.level].append(RecipientSpec(email=row.email, language=row.language))
    updated_at = (
        Account.objects.filter(pk=account.pk).values_list("limits_updated_at", flat=True).first()
    )
    return LimitsDocument(
        limits=limits,
        recipients={level: tuple(specs) for level, specs in recipients.items()},
        account_id=account.pk,
        updated_at=updated_at,
    )


def account_get_by_reference(*, reference: str) -> Account | None:
    """The account whose id or external id is ``reference`` (as commands take ``ACCOUNT``)."""
    try:
        account_id = uuid.UUID(reference)
    except ValueError:
        pass
    else:
        account = Account.objects.filter(pk=account_id).first()
        if account is not None:
            return account
    return Account.objects.filter(external_id=reference).first()


def account_list(
    *, search: str | None = None, account_id: uuid.UUID | None = None
) -> QuerySet[Account]:
    """Accounts by name; ``search`` matches the name or the external id.

    ``account_id`` confines the list to that account (a token bound to it sees it alone).
    """
    accounts = Account.objects.order_by("name", "external_id")
    if account_id is not None:
        accounts = accounts.filter(pk=account_id)
    if search:
        accounts = accounts.filter(Q(name__icontains=search) | Q(external_id__icontains=search))
    return accounts


def token_bound_accounts() -> QuerySet[Account]:
    """The accounts that API tokens are bound to, by name (SPEC section 11.6)."""
    return Account.objects.filter(bound_tokens__isnull=False).distinct().order_by("name", "pk")
