"""The migration to counters per label subset and hour loses nothing (usage 0007).

The database holds, before it, day counters of a purged day (their events gone), day
counters with their events, and labelled events (labels came one migration earlier).
After it, every whole-metric monthly figure is the same, hour counters and the day counters
of label subsets are derived from the events still stored, and a rebuild finds no drift.
"""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest
from django.core.management import call_command

from accounts.models import Account as Current
from tests.migrations import migrate
from usage.models import UsageCounter as Counter
from usage.models import UsageHourCounter
from usage.periods import Period
from usage.selectors import usage_for
from usage.services import counters_rebuild

BEFORE = [("usage", "0006_usageevent_labels")]
AFTER = [("usage", "0007_counters_per_label_subset_and_hour")]


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_the_monthly_figures_are_the_same_and_hours_are_derived_from_stored_events():
    # given: the database as it was before the migration
    apps = migrate(BEFORE)
    Account = apps.get_model("accounts", "Account")
    UsageEvent = apps.get_model("usage", "UsageEvent")
    UsageCounter = apps.get_model("usage", "UsageCounter")
    EventPurge = apps.get_model("usage", "EventPurge")
    paris = Account.objects.create(external_id="paris", name="Paris", timezone="Europe/Paris")
    kathmandu = Account.objects.create(
        external_id="ktm", name="Kathmandu", timezone="Asia/Kathmandu"
    )
    now = datetime(2027, 3, 28, 12, tzinfo=UTC)

    def stored(account, event_id, at, milli, labels=None, metric="text_tokens"):
        UsageEvent.objects.create(
            account=account,
            event_id=event_id,
            metric=metric,
            quantity_milli=milli,
            occurred_at=datetime.fromisoformat(at),
            received_at=now,
            labels=labels or {},
        )

    # a purged January: its counters stay, its events are gone
    EventPurge.objects.create(before=date(2027, 2, 1), deleted=5)
    UsageCounter.objects.create(
        account=paris,
        metric="text_tokens",
        day=date(2027, 1, 15),
        quantity_milli=7_000,
        updated_at=now,
    )
    # March, across the spring change in Paris, and a quarter past in Kathmandu
    stored(paris, "a", "2027-03-28T01:30:00+01:00", 1_000)
    stored(paris, "b", "2027-03-28T03:10:00+02:00", 2_000, {"model": "large", "vendor": "x"})
    stored(paris, "c", "2027-03-28T03:50:00+02:00", 4_000, {"model": "large"})
    stored(kathmandu, "d", "2027-03-10T09:59:00+05:45", 8_000)
    stored(kathmandu, "e", "2027-03-10T10:00:00+05:45", 16_000)
    for account, day, milli in [
        (paris, date(2027, 3, 28), 7_000),
        (kathmandu, date(2027, 3, 10), 24_000),
    ]:
        UsageCounter.objects.create(
            account=account, metric="text_tokens", day=day, quantity_milli=milli, updated_at=now
        )

    # when
    migrate(AFTER)
    call_command("migrate", verbosity=0)

    # then: every whole-metric day counter is carried over as it was
    assert sorted(
        Counter.objects.filter(labels="").values_list(
            "account__external_id", "day", "quantity_milli"
        )
    ) == [
        ("ktm", date(2027, 3, 10), 24_000),
        ("paris", date(2027, 1, 15), 7_000),
        ("paris", date(2027, 3, 28), 7_000),
    ]
    paris, kathmandu = (
        Current.objects.get(external_id="paris"),
        Current.objects.get(external_id="ktm"),
    )
    monthly = usage_for(
        periods={
            paris.pk: Period(2027, 1, paris.zone),
            kathmandu.pk: Period(2027, 3, kathmandu.zone),
        }
    )
    assert monthly[(paris.pk, "text_tokens")].used_milli == 7_000
    assert monthly[(kathmandu.pk, "text_tokens")].used_milli == 24_000
    assert (
        usage_for(periods={paris.pk: Period(2027, 3, paris.zone)})[
            (paris.pk, "text_tokens")
        ].used_milli
        == 7_000
    )
    # label subsets get their day counters, from the stored events
    assert sorted(Counter.objects.exclude(labels="").values_list("labels", "quantity_milli")) == [
        ("model=large", 6_000),
        ("model=large;vendor=x", 2_000),
        ("vendor=x", 2_000),
    ]
    # hours, by their UTC start: 01:00+01:00, 03:00+02:00; 10:00+05:45 and 09:00+05:45
    hours = sorted(
        (labels, hour.astimezone(UTC).isoformat(), milli)
        for labels, hour, milli in UsageHourCounter.objects.values_list(
            "labels", "hour", "quantity_milli"
        )
    )
    assert hours == [
        ("", "2027-03-10T03:15:00+00:00", 8_000),
        ("", "2027-03-10T04:15:00+00:00", 16_000),
        ("", "2027-03-28T00:00:00+00:00", 1_000),
        ("", "2027-03-28T01:00:00+00:00", 6_000),
        ("model=large", "2027-03-28T01:00:00+00:00", 6_000),
        ("model=large;vendor=x", "2027-03-28T01:00:00+00:00", 2_000),
        ("vendor=x", "2027-03-28T01:00:00+00:00", 2_000),
    ]
    assert counters_rebuild(repair=False, repaired_by="test") == []
