"""Helpers that record usage the way services do, so counters are kept as in production."""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from django.utils import timezone

from accounts.labels import labels_key
from accounts.models import Account, ScopedLimit
from backoffice.services import usage_events_record
from usage.models import UsageCounter, UsageCounterKey
from usage.services import counter_keys_sync

_event_ids = itertools.count(1)


def event_record(
    account: Account,
    occurred_at: datetime | str,
    quantity: int | Decimal | str = 10,
    metric: str = "text_tokens",
    event_id: str | None = None,
    labels: dict[str, str] | None = None,
) -> None:
    """Record one event through ``usage_events_record`` (which also adds it to its counter)."""
    moment = datetime.fromisoformat(occurred_at) if isinstance(occurred_at, str) else occurred_at
    usage_events_record(
        payload={
            "event_id": event_id or f"evt-{next(_event_ids)}",
            "account": str(account.pk),
            "metric": metric,
            # Text stands for the JSON number it spells, as the API's parser would read it.
            "quantity": Decimal(quantity) if isinstance(quantity, str) else quantity,
            "occurred_at": moment.isoformat(),
            "labels": labels,
        },
        now=max(timezone.now(), moment),
    )


def counters_of(account: Account, metric: str = "text_tokens") -> dict[date, int]:
    """The account's stored counters of ``metric``, in thousandths by local day."""
    return dict(
        UsageCounter.objects.filter(account=account, metric=metric)
        .order_by("day")
        .values_list("day", "quantity_milli")
    )


def counter_corrupt(
    account: Account, day: date, quantity_milli: int, metric: str = "text_tokens"
) -> None:
    """Set a counter behind the services' back, as a bug or a hand-made change would."""
    UsageCounter.objects.filter(account=account, metric=metric, day=day).update(
        quantity_milli=quantity_milli
    )


def event_body(account, event_id="e-1", metric="text_tokens", quantity=10, **extra) -> dict:
    """The JSON of one usage event as a service posts it."""
    return {
        "event_id": event_id,
        "account": str(account.pk),
        "metric": metric,
        "quantity": quantity,
        **extra,
    }


def lines_saved(account: Account, lines: Iterable[Any], now: datetime) -> None:
    """Save ``lines`` (each with ``metric``, ``period``, ``window_days`` and ``labels``) as
    scoped limits of ``account`` without thresholds, then count their label keys as
    ``limits_replace`` does (``counter_keys_sync``): the lines read what they would in
    production, events recorded before included. Lines without labels need no key and are
    not saved (a monthly one would be the ``limits`` map's)."""
    for line in lines:
        if not line.labels:
            continue
        ScopedLimit.objects.get_or_create(
            account=account,
            metric=line.metric,
            period=line.period,
            window_days=line.window_days,
            labels_key=labels_key(line.labels),
            defaults={"labels": dict(line.labels)},
        )
    counter_keys_sync(account=account, now=now)


def keys_counted(account: Account, *keys: str, metric: str = "text_tokens") -> None:
    """Count the label ``keys`` of ``account``'s ``metric`` on every day, as for a line saved
    before any event (``UsageCounterKey`` with ``since`` empty)."""
    for key in keys:
        UsageCounterKey.objects.create(account=account, metric=metric, labels=key, since=None)
