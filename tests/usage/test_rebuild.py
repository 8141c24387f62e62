"""Counters rebuilt from events: drift found, repaired and recorded; local days across DST."""

from __future__ import annotations

import logging
import threading
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from django.db import connection
from django.utils import timezone

from backoffice.services import usage_events_record
from tests.factories import AccountFactory
from tests.usage.factories import counter_corrupt, counters_of, event_record, keys_counted
from usage import services
from usage.models import (
    CounterRepair,
    EventPurge,
    UsageCounter,
    UsageEvent,
    UsageHourCounter,
    UsageLabelSet,
)
from usage.periods import Period
from usage.services import Drift, counters_rebuild, usage_events_purge
from usage.tasks import reconcile_recent_counters

pytestmark = pytest.mark.django_db

PARIS = ZoneInfo("Europe/Paris")


def test_counters_equal_to_their_events_are_no_drift():
    # given
    account = AccountFactory()
    event_record(account, "2026-03-10T10:00:00+01:00", 100)
    event_record(account, "2026-03-11T10:00:00+01:00", 5, metric="audio_analyzed_seconds")

    # when
    drifts = counters_rebuild(repaired_by="test")

    # then
    assert drifts == []
    assert not CounterRepair.objects.exists()


def test_a_corrupted_counter_is_set_to_the_sum_of_its_events_and_the_repair_recorded():
    # given
    account = AccountFactory(external_id="crm-acme")
    event_record(account, "2026-03-10T10:00:00+01:00", 100)
    event_record(account, "2026-03-10T11:00:00+01:00", 50)
    event_record(account, "2026-03-11T10:00:00+01:00", 7)
    counter_corrupt(account, date(2026, 3, 10), 999_000)

    # when
    drifts = counters_rebuild(repaired_by="test")

    # then
    assert drifts == [
        Drift(
            account_id=account.pk,
            external_id="crm-acme",
            metric="text_tokens",
            day=date(2026, 3, 10),
            found_milli=999_000,
            expected_milli=150_000,
        )
    ]
    assert counters_of(account) == {date(2026, 3, 10): 150_000, date(2026, 3, 11): 7_000}
    repair = CounterRepair.objects.get()
    assert (repair.account_id, repair.metric, repair.day) == (
        account.pk,
        "text_tokens",
        date(2026, 3, 10),
    )
    assert (repair.found_milli, repair.expected_milli, repair.repaired_by) == (
        999_000,
        150_000,
        "test",
    )
    assert counters_rebuild(repaired_by="test") == []


def test_a_missing_counter_is_recreated_and_a_counter_without_events_is_zeroed():
    # given
    account = AccountFactory()
    event_record(account, "2026-03-10T10:00:00+01:00", "1.5", metric="audio_transcribed_seconds")
    UsageCounter.objects.filter(account=account).delete()
    UsageCounter.objects.create(
        account=account,
        metric="text_tokens",
        day=date(2026, 3, 12),
        quantity_milli=42_000,
        updated_at=timezone.now(),
    )

    # when
    drifts = counters_rebuild(repaired_by="test")

    # then
    assert [(d.metric, d.day, d.found_milli, d.expected_milli) for d in drifts] == [
        ("audio_transcribed_seconds", date(2026, 3, 10), None, 1_500),
        ("text_tokens", date(2026, 3, 12), 42_000, 0),
    ]
    assert counters_of(account, "audio_transcribed_seconds") == {date(2026, 3, 10): 1_500}
    assert counters_of(account) == {date(2026, 3, 12): 0}
    assert sorted(CounterRepair.objects.values_list("found_milli", "expected_milli")) == [
        (0, 1_500),
        (42_000, 0),
    ]


def test_a_check_without_repair_reports_drift_and_changes_nothing():
    # given
    account = AccountFactory()
    event_record(account, "2026-03-10T10:00:00+01:00", 100)
    counter_corrupt(account, date(2026, 3, 10), 1)

    # when
    drifts = counters_rebuild(repair=False, repaired_by="test")

    # then
    assert [(d.found_milli, d.expected_milli) for d in drifts] == [(1, 100_000)]
    assert counters_of(account) == {date(2026, 3, 10): 1}
    assert not CounterRepair.objects.exists()


def test_events_count_on_their_local_day_across_the_spring_dst_change_in_paris():
    # given: clocks go from 02:00 to 03:00 on 29 March 2026; both events are on the 29th
    account = AccountFactory(timezone="Europe/Paris")
    event_record(account, "2026-03-29T00:30:00+01:00", 1)
    event_record(account, "2026-03-29T03:30:00+02:00", 2)
    event_record(account, "2026-03-29T23:30:00+02:00", 4)  # 21:30 UTC: still the 29th
    event_record(account, "2026-03-28T23:30:00+00:00", 8)  # 00:30 in Paris: the 29th too
    event_record(account, "2026-03-29T22:30:00+00:00", 16)  # 00:30 in Paris on the 30th
    UsageCounter.objects.filter(account=account).delete()

    # when
    counters_rebuild(repaired_by="test")

    # then
    assert counters_of(account) == {date(2026, 3, 29): 15_000, date(2026, 3, 30): 16_000}
    assert counters_rebuild(repair=False, repaired_by="test") == []


def test_events_count_on_their_local_day_across_both_dst_changes_in_los_angeles():
    # given: 8 March 2026 has 23 hours there, 1 November 2026 has 25 (01:00-02:00 twice)
    account = AccountFactory(timezone="America/Los_Angeles")
    event_record(account, "2026-03-08T01:30:00-08:00", 1)
    event_record(account, "2026-03-08T23:30:00-07:00", 2)  # 06:30 UTC on the 9th
    event_record(account, "2026-11-01T01:30:00-07:00", 4)
    event_record(account, "2026-11-01T01:30:00-08:00", 8)  # the repeated hour
    event_record(account, "2026-11-01T23:30:00-08:00", 16)  # 07:30 UTC on the 2nd
    event_record(account, "2026-10-31T23:59:00-07:00", 32)
    UsageCounter.objects.filter(account=account).update(quantity_milli=0)

    # when
    drifts = counters_rebuild(repaired_by="test")

    # then
    assert len(drifts) == 3
    assert counters_of(account) == {
        date(2026, 3, 8): 3_000,
        date(2026, 10, 31): 32_000,
        date(2026, 11, 1): 28_000,
    }


def test_accounts_in_different_time_zones_are_rebuilt_each_in_its_own():
    # given: the same instant is the 10th in Paris and the 9th in Los Angeles
    paris = AccountFactory(timezone="Europe/Paris")
    los_angeles = AccountFactory(timezone="America/Los_Angeles")
    for account in (paris, los_angeles):
        event_record(account, "2026-03-10T05:00:00+00:00", 3)
    UsageCounter.objects.all().delete()

    # when
    counters_rebuild(repaired_by="test")

    # then
    assert counters_of(paris) == {date(2026, 3, 10): 3_000}
    assert counters_of(los_angeles) == {date(2026, 3, 9): 3_000}


def test_a_rebuild_is_limited_to_the_account_and_the_period_given():
    # given
    account, other = AccountFactory(), AccountFactory()
    for item in (account, other):
        event_record(item, "2026-02-28T10:00:00+01:00", 1)
        event_record(item, "2026-03-01T00:10:00+01:00", 2)
        event_record(item, "2026-04-01T00:10:00+02:00", 4)
    UsageCounter.objects.update(quantity_milli=0)

    # when
    drifts = counters_rebuild(account=account, period=Period(2026, 3, PARIS), repaired_by="test")

    # then
    assert [(d.account_id, d.day) for d in drifts] == [(account.pk, date(2026, 3, 1))]
    assert counters_of(account) == {
        date(2026, 2, 28): 0,
        date(2026, 3, 1): 2_000,
        date(2026, 4, 1): 0,
    }
    assert set(counters_of(other).values()) == {0}


def test_a_repair_keeps_the_events_recorded_while_the_rebuild_ran(monkeypatch):
    # given: an event arrives after the rebuild read the events, before it repairs
    account = AccountFactory()
    event_record(account, "2026-03-10T10:00:00+01:00", 100)
    counter_corrupt(account, date(2026, 3, 10), 1_000)
    read = services._counters_and_sums

    def read_then_record(*args, **kwargs):
        rows = read(*args, **kwargs)
        event_record(account, "2026-03-10T12:00:00+01:00", 20)
        return rows

    monkeypatch.setattr(services, "_counters_and_sums", read_then_record)

    # when
    counters_rebuild(repaired_by="test")

    # then: the repair added the difference, so the late event stays counted
    assert counters_of(account) == {date(2026, 3, 10): 120_000}
    monkeypatch.undo()
    assert counters_rebuild(repair=False, repaired_by="test") == []


def test_a_rebuild_costs_the_same_queries_for_one_account_or_many(django_assert_num_queries):
    # given
    def drifted_accounts(count):
        accounts = AccountFactory.create_batch(count, timezone="Europe/Paris")
        for account in accounts:
            event_record(account, "2026-03-10T10:00:00+01:00", 10)
            event_record(account, "2026-03-11T10:00:00+01:00", 10)
        UsageCounter.objects.filter(account__in=accounts).update(quantity_milli=0)
        UsageHourCounter.objects.filter(account__in=accounts).update(quantity_milli=0)
        return accounts

    one = drifted_accounts(1)[0]
    counters_rebuild(account=one, repaired_by="warm-up")  # the first run caches nothing
    UsageCounter.objects.filter(account=one).update(quantity_milli=0)
    UsageHourCounter.objects.filter(account=one).update(quantity_milli=0)

    # when / then: count, page, savepoint, lock, purge boundary, the counted label keys, one
    # read per time zone, boundary again, day and hour upserts (one statement on
    # PostgreSQL), repairs, release, next page
    queries = 12 if connection.vendor == "postgresql" else 13
    with django_assert_num_queries(queries):
        counters_rebuild(account=one, repaired_by="test")
    many = drifted_accounts(20)
    UsageCounter.objects.exclude(account__in=many).delete()
    UsageHourCounter.objects.exclude(account__in=many).delete()
    UsageEvent.objects.exclude(account__in=many).delete()
    with django_assert_num_queries(queries):
        drifts = counters_rebuild(repaired_by="test")
    assert len(drifts) == 80


def test_the_counters_of_purged_days_are_left_alone():
    # given: events before 1 February are purged; their counters stay, whatever they hold
    account = AccountFactory()
    event_record(account, "2025-01-20T10:00:00+01:00", 10)
    event_record(account, "2025-02-20T10:00:00+01:00", 20)
    usage_events_purge(before=date(2025, 2, 1), dry_run=False)
    counter_corrupt(account, date(2025, 1, 20), 5)
    counter_corrupt(account, date(2025, 2, 20), 5)

    # when
    drifts = counters_rebuild(repaired_by="test")

    # then
    assert [d.day for d in drifts] == [date(2025, 2, 20)]
    assert counters_of(account) == {date(2025, 1, 20): 5, date(2025, 2, 20): 20_000}


def test_a_purge_deletes_the_events_of_each_accounts_earlier_local_days_and_keeps_counters():
    # given: the same boundary falls at a different instant in each zone
    auckland = AccountFactory(timezone="Pacific/Auckland")  # UTC+13 in February
    los_angeles = AccountFactory(timezone="America/Los_Angeles")  # UTC-8
    large = {"model": "large"}
    keys_counted(auckland, "model=large")
    event_record(auckland, "2025-01-31T23:30:00+13:00", 1, event_id="auckland-31st", labels=large)
    event_record(auckland, "2025-02-01T00:30:00+13:00", 2, event_id="auckland-1st", labels=large)
    event_record(los_angeles, "2025-01-31T20:00:00-08:00", 4, event_id="la-31st")
    event_record(los_angeles, "2025-02-01T00:30:00-08:00", 8, event_id="la-1st")
    counters = sorted(
        UsageCounter.objects.values_list("account_id", "labels", "day", "quantity_milli")
    )
    hours = sorted(
        UsageHourCounter.objects.values_list("account_id", "labels", "hour", "quantity_milli")
    )

    # when
    deleted = usage_events_purge(before=date(2025, 2, 1), dry_run=False)

    # then
    assert deleted == 2
    assert sorted(UsageEvent.objects.values_list("event_id", flat=True)) == [
        "auckland-1st",
        "la-1st",
    ]
    assert (
        sorted(UsageCounter.objects.values_list("account_id", "labels", "day", "quantity_milli"))
        == counters
    )
    assert (
        sorted(
            UsageHourCounter.objects.values_list("account_id", "labels", "hour", "quantity_milli")
        )
        == hours
    )
    assert list(UsageLabelSet.objects.values_list("day", "labels")) == [
        (date(2025, 2, 1), "model=large")
    ]
    purge = EventPurge.objects.get()
    assert (purge.before, purge.deleted) == (date(2025, 2, 1), 2)
    assert counters_rebuild(repair=False, repaired_by="test") == []


def test_a_purge_deletes_in_chunks(monkeypatch):
    # given
    monkeypatch.setattr(services, "PURGE_CHUNK", 2)
    account = AccountFactory()
    for day in range(1, 6):
        event_record(account, f"2025-01-{day:02d}T10:00:00+01:00", 1)
    seen = []

    # when
    deleted = usage_events_purge(before=date(2025, 2, 1), dry_run=False, progress=seen.append)

    # then
    assert deleted == 5
    assert seen == [2, 4, 5]
    assert not UsageEvent.objects.exists()


@pytest.mark.parametrize(
    ("now", "before", "refused"),
    [
        ("2026-03-15T12:00:00+00:00", date(2026, 3, 1), False),
        ("2026-03-15T12:00:00+00:00", date(2026, 3, 2), True),
        # At 05:00 UTC on 1 April it is still March in Los Angeles (and in UTC-12).
        ("2026-04-01T05:00:00+00:00", date(2026, 4, 1), True),
        ("2026-04-01T05:00:00+00:00", date(2026, 3, 1), False),
        ("2026-04-01T12:00:00+00:00", date(2026, 4, 1), False),
    ],
)
def test_a_purge_is_refused_when_it_would_reach_a_current_period(now, before, refused):
    # given
    account = AccountFactory(timezone="America/Los_Angeles")
    event_record(account, "2026-02-20T10:00:00+00:00", 1)
    moment = datetime.fromisoformat(now)

    # when / then
    if refused:
        with pytest.raises(ValueError, match="is in a current period"):
            usage_events_purge(before=before, dry_run=True, now=moment)
        assert UsageEvent.objects.count() == 1
    else:
        assert usage_events_purge(before=before, dry_run=True, now=moment) == 1


def test_the_reconcile_task_repairs_recent_drift_loudly_and_leaves_older_days_alone(caplog):
    # given
    account = AccountFactory(external_id="crm-recent", timezone="UTC")
    now = timezone.now()
    event_record(account, now, 10)
    event_record(account, now - timedelta(days=10), 10)
    today, old_day = now.date(), (now - timedelta(days=10)).date()
    counter_corrupt(account, today, 3)
    counter_corrupt(account, old_day, 3)

    # when
    with caplog.at_level(logging.INFO, logger="usage.tasks"):
        repaired = reconcile_recent_counters.delay().get()

    # then
    assert repaired == 1
    assert counters_of(account) == {old_day: 3, today: 10_000}
    assert CounterRepair.objects.get().repaired_by == "reconcile task"
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert errors == [
        f"Usage counter repaired: account crm-recent ({account.pk}), text_tokens on "
        f"{today.isoformat()}: counter 0.003, events 10",
        f"Usage counters repaired since {(now - timedelta(days=2)).date().isoformat()}: 1",
    ]


def test_the_reconcile_task_is_quiet_without_drift(caplog):
    # given
    account = AccountFactory()
    event_record(account, datetime.now(UTC), 10)

    # when
    with caplog.at_level(logging.INFO, logger="usage.tasks"):
        repaired = reconcile_recent_counters()

    # then
    assert repaired == 0
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_concurrent_rebuilds_and_recording_leave_every_counter_exact_and_repair_once():
    # given: one corrupted counter, then recording and two repairing rebuilds at once
    accounts = [AccountFactory(timezone="Europe/Paris"), AccountFactory(timezone="UTC")]
    for account in accounts:
        event_record(account, "2026-03-10T10:00:00+00:00", 5)
    counter_corrupt(accounts[0], date(2026, 3, 10), 1)
    start = threading.Barrier(6)
    failures: list[str] = []

    def record(worker: int) -> None:
        try:
            start.wait()
            for batch in range(15):
                usage_events_record(
                    payload={
                        "events": [
                            {
                                "event_id": f"w{worker}-b{batch}-{n}",
                                "account": str(accounts[n % 2].pk),
                                "metric": "text_tokens",
                                "quantity": n + 1,
                                "occurred_at": f"2026-03-1{n % 2}T{10 + n % 12}:00:00+00:00",
                            }
                            for n in range(20)
                        ]
                    }
                )
        except Exception as exc:  # a deadlock surfaces here
            failures.append(repr(exc))
        finally:
            connection.close()

    def rebuild() -> None:
        try:
            start.wait()
            for _ in range(10):
                counters_rebuild(repaired_by="test")
        except Exception as exc:
            failures.append(repr(exc))
        finally:
            connection.close()

    threads = [threading.Thread(target=record, args=(worker,)) for worker in range(4)]
    threads += [threading.Thread(target=rebuild) for _ in range(2)]

    # when
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)

    # then
    assert failures == []
    assert counters_rebuild(repair=False, repaired_by="test") == []
    assert CounterRepair.objects.count() == 1
    assert UsageEvent.objects.count() == 2 + 4 * 15 * 20


def test_the_reconcile_task_is_scheduled_every_15_minutes_and_expires_before_the_next_run(
    settings,
):
    # when
    entries = [
        entry
        for entry in settings.CELERY_BEAT_SCHEDULE.values()
        if entry["task"] == reconcile_recent_counters.name
    ]

    # then
    assert [(entry["schedule"], entry["options"]["expires"]) for entry in entries] == [(900, 840)]


# --- Counters of label subsets and hours -------------------------------------------------


def test_labelled_day_and_hour_counters_that_drift_are_found_and_repaired(caplog):
    # given: events with labels, in Paris
    account = AccountFactory(external_id="crm-labels", timezone="Europe/Paris")
    keys_counted(account, "model=large", "vendor=acme")
    large = {"model": "large", "vendor": "acme"}
    event_record(account, "2026-03-10T10:15:00+01:00", 100, labels=large)
    event_record(account, "2026-03-10T10:45:00+01:00", 20, labels={"model": "large"})
    event_record(account, "2026-03-10T11:00:00+01:00", 3)
    # a labelled day counter off, a labelled hour counter gone, a whole-metric hour too high
    UsageCounter.objects.filter(account=account, labels="model=large").update(quantity_milli=1)
    UsageHourCounter.objects.filter(account=account, labels="vendor=acme").delete()
    UsageHourCounter.objects.filter(
        account=account, labels="", hour=datetime.fromisoformat("2026-03-10T10:00:00+00:00")
    ).update(quantity_milli=5)

    # when
    with caplog.at_level(logging.INFO, logger="usage.tasks"):
        drifts = counters_rebuild(repaired_by="test")

    # then
    ten, eleven = (datetime.fromisoformat(f"2026-03-10T{h}:00:00+00:00") for h in ("09", "10"))
    common = {"account_id": account.pk, "external_id": "crm-labels", "metric": "text_tokens"}
    day = date(2026, 3, 10)
    assert drifts == [
        Drift(**common, day=day, labels="model=large", found_milli=1, expected_milli=120_000),
        Drift(
            **common,
            day=day,
            hour=ten,
            labels="vendor=acme",
            found_milli=None,
            expected_milli=100_000,
        ),
        Drift(**common, day=day, hour=eleven, labels="", found_milli=5, expected_milli=3_000),
    ]
    assert [drift.place for drift in drifts] == [
        "2026-03-10 model=large",
        "2026-03-10 09:00Z vendor=acme",
        "2026-03-10 10:00Z",
    ]
    assert UsageCounter.objects.get(account=account, labels="model=large").quantity_milli == 120_000
    assert (
        UsageHourCounter.objects.get(account=account, labels="vendor=acme", hour=ten).quantity_milli
        == 100_000
    )
    assert UsageHourCounter.objects.get(account=account, labels="", hour=eleven).quantity_milli == (
        3_000
    )
    assert sorted(
        CounterRepair.objects.values_list("labels", "hour", "found_milli", "expected_milli")
    ) == [
        ("", eleven, 5, 3_000),
        ("model=large", None, 1, 120_000),
        ("vendor=acme", ten, 0, 100_000),
    ]
    assert counters_rebuild(repaired_by="test") == []


def test_the_reconcile_task_logs_a_labelled_hour_counter_it_repairs(caplog):
    # given
    account = AccountFactory(external_id="crm-hour", timezone="UTC")
    keys_counted(account, "model=large")
    now = timezone.now()
    event_record(account, now, 10, labels={"model": "large"})
    UsageHourCounter.objects.filter(account=account, labels="model=large").update(quantity_milli=1)
    hour = UsageHourCounter.objects.get(account=account, labels="model=large").hour

    # when
    with caplog.at_level(logging.INFO, logger="usage.tasks"):
        repaired = reconcile_recent_counters.delay().get()

    # then
    assert repaired == 1
    place = f"{hour.date().isoformat()} {hour.astimezone(UTC):%H:%M}Z model=large"
    assert [record.getMessage() for record in caplog.records if record.levelname == "ERROR"] == [
        f"Usage counter repaired: account crm-hour ({account.pk}), text_tokens on {place}: "
        "counter 0.001, events 10",
        f"Usage counters repaired since {(now - timedelta(days=2)).date().isoformat()}: 1",
    ]
