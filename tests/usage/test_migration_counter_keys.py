"""The migration to counted label keys changes no counter (usage 0012).

Before it, every event added to the counters of every subset of its labels: the counters of
the keys that scoped limits read are complete on every day, so those keys are counted from
then on with ``since`` empty, and every line reads after it what it read before.
"""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest
from django.core.management import call_command

from tests.migrations import migrate
from usage.models import UsageCounter as Counter
from usage.models import UsageCounterKey
from usage.services import counters_rebuild

BEFORE = [("usage", "0011_ops_tables_for_ops")]
AFTER = [("usage", "0012_counted_label_keys")]


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_the_keys_of_the_scoped_limits_are_counted_on_every_day_and_no_counter_changes():
    # given: the database as it was before the migration, counters of every label subset
    apps = migrate(BEFORE)
    Account = apps.get_model("accounts", "Account")
    ScopedLimit = apps.get_model("accounts", "ScopedLimit")
    UsageEvent = apps.get_model("usage", "UsageEvent")
    UsageCounter = apps.get_model("usage", "UsageCounter")
    account = Account.objects.create(external_id="m", name="M", timezone="Europe/Paris")
    other = Account.objects.create(external_id="o", name="O", timezone="UTC")
    now = datetime(2027, 3, 28, 12, tzinfo=UTC)
    lines = [
        (account, "text_tokens", "day", None, {"model": "large"}),
        (account, "text_tokens", "rolling", 30, {"model": "large"}),  # the same key
        (account, "text_tokens", "minute", None, {"vendor": "x"}),  # reads its events
        (account, "text_tokens", "hour", None, {}),  # the whole metric
        (account, "audio_analyzed_seconds", "week", None, {"model": "large", "vendor": "x"}),
        (other, "text_tokens", "month", None, {"vendor": "x"}),
    ]
    for owner, metric, period, days, labels in lines:
        ScopedLimit.objects.create(
            account=owner,
            metric=metric,
            period=period,
            window_days=days,
            labels=labels,
            labels_key=";".join(f"{k}={labels[k]}" for k in sorted(labels)),
        )
    UsageEvent.objects.create(
        account=account,
        event_id="a",
        metric="text_tokens",
        quantity_milli=3_000,
        occurred_at=datetime(2027, 3, 1, 10, tzinfo=UTC),
        received_at=now,
        labels={"model": "large", "vendor": "x"},
    )
    for labels in ("", "model=large", "vendor=x", "model=large;vendor=x"):
        UsageCounter.objects.create(
            account=account,
            metric="text_tokens",
            labels=labels,
            day=date(2027, 3, 1),
            quantity_milli=3_000,
            updated_at=now,
        )
        apps.get_model("usage", "UsageHourCounter").objects.create(
            account=account,
            metric="text_tokens",
            labels=labels,
            hour=datetime(2027, 3, 1, 10, tzinfo=UTC),
            day=date(2027, 3, 1),
            quantity_milli=3_000,
            updated_at=now,
        )
    counters = sorted(UsageCounter.objects.values_list("labels", "day", "quantity_milli"))

    # when
    migrate(AFTER)
    call_command("migrate", verbosity=0)

    # then: the keys that counters serve lines for, complete on every day; no counter changed
    keys = sorted(
        UsageCounterKey.objects.values_list("account__external_id", "metric", "labels", "since")
    )
    assert keys == [
        ("m", "audio_analyzed_seconds", "model=large;vendor=x", None),
        ("m", "text_tokens", "model=large", None),
        ("o", "text_tokens", "vendor=x", None),
    ]
    assert sorted(Counter.objects.values_list("labels", "day", "quantity_milli")) == counters
    assert counters_rebuild(repair=False, repaired_by="test") == []
