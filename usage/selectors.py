"""Reads of usage: period totals from daily counters, thresholds, status (SPEC section 4)."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from django.db.models import Q, Sum
from django.utils import timezone

from accounts.metrics import METRICS
from accounts.models import Account, Level, Limit

from .models import MILLI, Extension, UsageCounter, from_milli
from .periods import Period, period_containing


class Status:
    OK = "ok"
    WARNING = Level.WARNING.value
    BLOCKED = Level.BLOCKED.value


@dataclass(frozen=True)
class MetricUsage:
    """Where one metric of one account stands in one period."""

    account_id: uuid.UUID
    metric: str
    used_milli: int
    warning: int | None
    blocked: int | None
    extension: int

    @property
    def used(self) -> Decimal:
        return from_milli(self.used_milli)

    @property
    def effective_blocked(self) -> int | None:
        """The blocked threshold plus the period's extensions; ``None`` when not set."""
        return None if self.blocked is None else self.blocked + self.extension

    @property
    def status(self) -> str:
        effective = self.effective_blocked
        if effective is not None and self.used_milli >= effective * MILLI:
            return Status.BLOCKED
        if self.warning is not None and self.used_milli >= self.warning * MILLI:
            return Status.WARNING
        return Status.OK

    @property
    def remaining_milli(self) -> int | None:
        effective = self.effective_blocked
        return None if effective is None else max(0, effective * MILLI - self.used_milli)

    @property
    def remaining(self) -> Decimal | None:
        remaining = self.remaining_milli
        return None if remaining is None else from_milli(remaining)

    @property
    def is_within_budget(self) -> bool:
        return self.status != Status.BLOCKED

    def allows(self, quantity_milli: int) -> bool:
        """The pre-flight answer: may ``quantity_milli`` more be processed?"""
        effective = self.effective_blocked
        if effective is None:
            return True
        if quantity_milli == 0:
            return self.status != Status.BLOCKED
        return self.used_milli + quantity_milli <= effective * MILLI


def number(value_milli: int | None, metric: str) -> int | Decimal | None:
    """A quantity as the API writes it: an integer for tokens, up to 3 decimals for seconds."""
    if value_milli is None:
        return None
    if METRICS[metric].decimal_places == 0:
        return value_milli // MILLI
    return from_milli(value_milli)


def current_period(account: Account, now: datetime | None = None) -> Period:
    return period_containing(now or timezone.now(), account.zone)


def usage_for(
    *,
    periods: dict[uuid.UUID, Period],
    pairs: Iterable[tuple[uuid.UUID, str]] | None = None,
) -> dict[tuple[uuid.UUID, str], MetricUsage]:
    """Usage of several accounts, each in its own period, in three queries whatever the count.

    ``periods`` maps account ids to the period to read; ``pairs`` narrows the
    (account id, metric) pairs to read (every metric of every account by default).
    """
    if not periods:
        return {}
    wanted = (
        set(pairs)
        if pairs is not None
        else {(account_id, metric) for account_id in periods for metric in METRICS}
    )
    metrics_by_account: dict[uuid.UUID, set[str]] = {}
    for account_id, metric in wanted:
        metrics_by_account.setdefault(account_id, set()).add(metric)

    counters = Q()
    extensions = Q()
    for account_id, metrics in metrics_by_account.items():
        period = periods[account_id]
        counters |= Q(
            account_id=account_id,
            metric__in=metrics,
            day__gte=period.first_day,
            day__lt=period.end_day,
        )
        extensions |= Q(account_id=account_id, metric__in=metrics, period=period.first_day)

    used = {
        (row["account_id"], row["metric"]): row["total"]
        for row in UsageCounter.objects.filter(counters)
        .values("account_id", "metric")
        .annotate(total=Sum("quantity_milli"))
        .order_by()
    }
    extra = {
        (row["account_id"], row["metric"]): row["total"]
        for row in Extension.objects.filter(extensions)
        .values("account_id", "metric")
        .annotate(total=Sum("amount"))
        .order_by()
    }
    limits = {
        (row.account_id, row.metric): row
        for row in Limit.objects.filter(account_id__in=metrics_by_account.keys()).only(
            "account_id", "metric", "warning", "blocked"
        )
    }
    result = {}
    for key in wanted:
        limit = limits.get(key)
        result[key] = MetricUsage(
            account_id=key[0],
            metric=key[1],
            used_milli=used.get(key) or 0,
            warning=limit.warning if limit else None,
            blocked=limit.blocked if limit else None,
            extension=extra.get(key) or 0,
        )
    return result


def account_usage(*, account: Account, period: Period | None = None) -> list[MetricUsage]:
    """Every metric of ``account`` in ``period`` (the current one by default), in METRICS order."""
    period = period or current_period(account)
    found = usage_for(periods={account.pk: period})
    return [found[(account.pk, metric)] for metric in METRICS]
