"""Reads of accounts and their limits documents."""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.db import connection
from django.db.models import Q, QuerySet

from config.db import bound_cursor

from .labels import labels_key
from .metrics import METRICS
from .models import Account, Level, Limit, ScopedLimit
from .windows import PeriodKind


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
class ScopedLimitSpec:
    """One scoped limit of a limits document (SPEC section 11.2); ``None``: no threshold."""

    metric: str
    period: str
    window_days: int | None
    labels: dict[str, str]
    warning: int | None = None
    blocked: int | None = None

    @property
    def identity(self) -> tuple[str, str, int | None, str]:
        """What makes a line unique within an account: metric, period, window, labels."""
        return (self.metric, self.period, self.window_days, labels_key(self.labels))

    def as_data(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "period": self.period,
            "window_days": self.window_days,
            "labels": dict(self.labels),
            "warning": self.warning,
            "blocked": self.blocked,
        }


@dataclass(frozen=True)
class LimitsDocument:
    """An account's limits: every metric, both recipient lists and the scoped limits."""

    limits: dict[str, Thresholds]
    recipients: dict[str, tuple[RecipientSpec, ...]]
    scoped_limits: tuple[ScopedLimitSpec, ...] = ()
    account_id: uuid.UUID | None = None
    updated_at: datetime | None = field(default=None, compare=False)

    @property
    def is_empty(self) -> bool:
        return (
            all(t.is_unlimited for t in self.limits.values())
            and not any(self.recipients.values())
            and not self.scoped_limits
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
            "scoped_limits": [spec.as_data() for spec in self.scoped_limits],
        }


def limits_document_get(*, account: Account) -> LimitsDocument:
    """The account's current limits document, every metric, both lists and the scoped
    limits (in their order) included."""
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
    scoped = tuple(
        ScopedLimitSpec(
            metric=row.metric,
            period=row.period,
            window_days=row.window_days,
            labels=dict(row.labels),
            warning=row.warning,
            blocked=row.blocked,
        )
        for row in ScopedLimit.objects.filter(account=account).order_by("position", "id")
    )
    return LimitsDocument(
        limits=limits,
        recipients={level: tuple(specs) for level, specs in recipients.items()},
        scoped_limits=scoped,
        account_id=account.pk,
        updated_at=updated_at,
    )


@dataclass(frozen=True)
class LimitLine:
    """One limit line of an account (SPEC section 11.3): a whole-metric monthly limit
    (``scoped_limit_id`` ``None``) or a scoped limit; ``None`` thresholds: no threshold."""

    metric: str
    period: PeriodKind
    window_days: int | None
    labels: dict[str, str]
    warning: int | None
    blocked: int | None
    scoped_limit_id: int | None = None

    def _as_scoped_limit(self) -> ScopedLimit:
        return ScopedLimit(
            metric=self.metric, period=self.period, window_days=self.window_days, labels=self.labels
        )

    def text(self) -> str:
        """The line for people, as a scoped limit writes it: ``Text tokens, Day (Model: large)``."""
        return self._as_scoped_limit().line_text()

    def period_text(self) -> str:
        """The line's period for people: ``Calendar month``, ``Rolling window of 7 days``."""
        return self._as_scoped_limit().period_text()


def limit_lines(
    *,
    account: Account,
    monthly: Mapping[str, tuple[int | None, int | None]] | None = None,
) -> list[LimitLine]:
    """Every limit line of ``account``: the monthly line of each metric (always, in METRICS
    order, unlimited when not set), then each scoped limit in its order. Two queries; one
    when the caller read the monthly thresholds already (``monthly``: metric to warning and
    blocked, as ``usage.selectors.usage_for`` reads them with the usage)."""
    stored = (
        monthly
        if monthly is not None
        else {
            metric: (warning, blocked)
            for metric, warning, blocked in Limit.objects.filter(account=account).values_list(
                "metric", "warning", "blocked"
            )
        }
    )
    scoped = (
        ScopedLimit.objects.filter(account=account)
        .order_by("position", "id")
        .values_list("id", "metric", "period", "window_days", "labels", "warning", "blocked")
    )
    return _lines(stored, [list(row) for row in scoped])


# An account's monthly limits and scoped limits, read with the account in the same query:
# each set as one JSON array of rows (``account_with_lines``).
_ACCOUNT_LINES_SQL = {
    "postgresql": (
        "(SELECT json_agg(json_build_array(l.metric, l.warning, l.blocked))::text"
        f" FROM {Limit._meta.db_table} l WHERE l.account_id = {Account._meta.db_table}.id)",
        "(SELECT json_agg(json_build_array(s.id, s.metric, s.period, s.window_days, s.labels,"
        " s.warning, s.blocked, s.position))::text"
        f" FROM {ScopedLimit._meta.db_table} s WHERE s.account_id = {Account._meta.db_table}.id)",
    ),
    "sqlite": (
        "(SELECT json_group_array(json_array(l.metric, l.warning, l.blocked))"
        f" FROM {Limit._meta.db_table} l WHERE l.account_id = {Account._meta.db_table}.id)",
        "(SELECT json_group_array(json_array(s.id, s.metric, s.period, s.window_days,"
        " json(s.labels), s.warning, s.blocked, s.position))"
        f" FROM {ScopedLimit._meta.db_table} s WHERE s.account_id = {Account._meta.db_table}.id)",
    ),
}


def account_lines_annotations() -> dict[str, tuple[str, list[Any]]]:
    """The columns that read an account's limits and scoped limits with it
    (``account_with_columns``), for ``account_lines_of``."""
    limits_sql, scoped_sql = _ACCOUNT_LINES_SQL[connection.vendor]
    return {"lines_monthly": (limits_sql, []), "lines_scoped": (scoped_sql, [])}


def account_with_columns(
    *, account_id: uuid.UUID, columns: Mapping[str, tuple[str, Sequence[Any]]]
) -> Account | None:
    """The account with this id, with one more attribute per column of ``columns`` (its
    name: the SQL of a scalar subquery and its parameters), in one statement; ``None``
    when there is no such account. Written out and read through a plain cursor rather
    than the ORM (a raw queryset costs about a third of a millisecond more): the read
    paths make it at every request."""
    select, converters = _account_select()
    extra = "".join(f", {sql} AS {quote_name(name)}" for name, (sql, _params) in columns.items())
    params = [param for _sql, column_params in columns.values() for param in column_params]
    params.append(Account._meta.pk.get_db_prep_value(account_id, connection))
    with bound_cursor() as cursor:
        cursor.execute(select.format(extra=extra), params)
        row = cursor.fetchone()
    if row is None:
        return None
    values = list(row[: len(converters)])
    for index, (column, functions) in enumerate(converters):
        for function in functions:
            values[index] = function(values[index], column, connection)
    account = Account.from_db(connection.alias, None, values)
    for name, value in zip(columns, row[len(converters) :], strict=True):
        setattr(account, name, value)
    return account


# Per database vendor: the ``SELECT`` of every concrete column of an account (``{extra}``
# for more columns, a parameter for its id) and each column's converters, as the ORM
# applies them to values read (SQLite's text UUIDs and datetimes).
_account_selects: dict[str, tuple[str, list[tuple[Any, list[Any]]]]] = {}


def _account_select() -> tuple[str, list[tuple[Any, list[Any]]]]:
    found = _account_selects.get(connection.vendor)
    if found is None:
        table = quote_name(Account._meta.db_table)
        fields = Account._meta.concrete_fields
        names = ", ".join(f"{table}.{quote_name(f.column)}" for f in fields)
        converters = []
        for field in fields:
            column = field.get_col(Account._meta.db_table)
            functions = connection.ops.get_db_converters(column)
            functions += field.get_db_converters(connection)
            converters.append((column, functions))
        select = f"SELECT {names}{{extra}} FROM {table} WHERE {table}.id = %s"
        found = _account_selects[connection.vendor] = (select, converters)
    return found


def quote_name(name: str) -> str:
    return connection.ops.quote_name(name)


def account_lines_of(account: Account) -> list[LimitLine]:
    """The limit lines of an account read with ``account_lines_annotations`` (see
    ``account_with_lines``)."""
    monthly = {}
    if account.is_enterprise:
        monthly = {
            metric: (warning, blocked)
            for metric, warning, blocked in json.loads(account.lines_monthly or "[]")
        }
    scoped = sorted(json.loads(account.lines_scoped or "[]"), key=lambda row: (row[7], row[0]))
    del account.lines_monthly, account.lines_scoped
    return _lines(monthly, scoped)


def account_with_lines(*, account_id: uuid.UUID) -> tuple[Account, list[LimitLine]] | None:
    """The account with this id and its limit lines (``limit_lines``, the monthly lines'
    thresholds as in force: none for an account that is not Enterprise), in one query;
    ``None`` when there is no such account."""
    account = account_with_columns(account_id=account_id, columns=account_lines_annotations())
    if account is None:
        return None
    return account, account_lines_of(account)


def _lines(
    monthly: Mapping[str, tuple[int | None, int | None]], scoped: list[list[Any]]
) -> list[LimitLine]:
    """The monthly line of each metric, then the scoped ``(id, metric, period, window_days,
    labels, warning, blocked, ...)`` rows in their order."""
    lines = [
        LimitLine(
            metric=metric,
            period=PeriodKind.MONTH,
            window_days=None,
            labels={},
            warning=monthly.get(metric, (None, None))[0],
            blocked=monthly.get(metric, (None, None))[1],
        )
        for metric in METRICS
    ]
    lines.extend(
        LimitLine(
            metric=metric,
            period=PeriodKind(period),
            window_days=window_days,
            labels=dict(labels),
            warning=warning,
            blocked=blocked,
            scoped_limit_id=pk,
        )
        for pk, metric, period, window_days, labels, warning, blocked, *_rest in scoped
    )
    return lines


def account_get(*, account_id: uuid.UUID) -> Account | None:
    """The account with this id, or ``None``."""
    return Account.objects.filter(pk=account_id).first()


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


def blocked_lines_without_recipient(*, account: Account) -> list[str]:
    """The lines of ``account`` with a blocked threshold while it has no blocked recipient,
    named for people (``Text tokens``, ``Text tokens, Day (Model: large)``): reaching
    them blocks and tells nobody. Empty when there is a blocked recipient."""
    document = limits_document_get(account=account)
    if document.recipients[Level.BLOCKED]:
        return []
    names = [
        str(METRICS[metric].label)
        for metric, thresholds in document.limits.items()
        if thresholds.blocked is not None
    ]
    names.extend(
        ScopedLimit(
            metric=spec.metric,
            period=spec.period,
            window_days=spec.window_days,
            labels=spec.labels,
        ).line_text()
        for spec in document.scoped_limits
        if spec.blocked is not None
    )
    return names
