"""Counters cost what the lines need: an event adds to its metric's counters and to those of
the label keys its account's scoped limits read, and a line saved later fills its key's
counters from the events of its current period (SPEC 11.2), exactly, even while events are
being recorded."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from django.db import connection
from django.utils import timezone
from hypothesis import given, settings
from hypothesis import strategies as st

from backoffice import services as backoffice
from backoffice.services import scoped_limit_set, usage_events_record
from tests.factories import AccountFactory
from tests.usage.factories import event_body, event_record
from usage import services
from usage.models import UsageCounter, UsageCounterKey, UsageHourCounter
from usage.selectors import account_lines_usage
from usage.services import counters_rebuild, event_place, hour_start

pytestmark = pytest.mark.django_db

TOKENS = "text_tokens"
LARGE = {"model": "large"}


def line_used(account, labels: dict[str, str], period: str = "day", now=None, days=None) -> int:
    """What the scoped line of ``period`` and ``labels`` has used, in thousandths."""
    for line in account_lines_usage(account=account, now=now or timezone.now()):
        found = line.line
        same = found.scoped_limit_id and found.period == period and found.labels == labels
        if same and days in (None, found.window_days):
            return line.usage.used_milli
    raise AssertionError(f"no {period} line for {labels}")


TWO_DAYS = {"period": "rolling", "window_days": 2}  # holds "now" and a moment before, always


def add_line(account, labels: dict[str, str], period: str = "day", **extra) -> None:
    scoped_limit_set(
        account=account, metric=TOKENS, period=period, labels=labels, reason="test", **extra
    )


def test_a_line_saved_after_the_events_counts_those_of_its_current_period():
    # given: labelled events of today and of yesterday, and no line yet
    account = AccountFactory(timezone="Europe/Paris")
    now = timezone.now()
    day_start = now.astimezone(account.zone).replace(hour=0, minute=0, second=0, microsecond=0)
    event_record(account, day_start, 1, labels={"model": "large", "vendor": "acme"})
    event_record(account, now, 10, labels=LARGE)
    event_record(account, now, 100, labels={"model": "small"})
    event_record(account, day_start - timedelta(seconds=1), 1000, labels=LARGE)
    assert not UsageCounter.objects.filter(labels="model=large").exists()

    # when
    add_line(account, LARGE)

    # then: today's events of the key count, yesterday's are outside the day line
    assert line_used(account, LARGE) == 11_000
    assert UsageCounterKey.objects.get(account=account).since == day_start.date()
    assert counters_rebuild(repair=False, repaired_by="test") == []


def test_a_longer_window_on_a_counted_key_fills_the_earlier_days():
    # given: a day line of the key, then events of the last three days
    account = AccountFactory(timezone="Europe/Paris")
    now = timezone.now()
    add_line(account, LARGE)
    for days in (0, 1, 2):
        event_record(account, now - timedelta(days=days), 10**days, labels=LARGE)

    # when: a rolling window of three days on the same key
    add_line(account, LARGE, period="rolling", window_days=3)

    # then: both read the key's counters, the earlier days filled once
    assert line_used(account, LARGE, now=now) == 1_000
    assert line_used(account, LARGE, period="rolling", now=now) == 111_000
    first = (now - timedelta(days=2)).astimezone(account.zone).date()
    assert UsageCounterKey.objects.get(account=account).since == first
    assert counters_rebuild(repair=False, repaired_by="test") == []


def test_a_key_no_line_reads_stops_being_counted_and_counts_again_from_the_events():
    # given: a line of the key, and an event it counts
    account = AccountFactory(timezone="Europe/Paris")
    now = timezone.now()
    add_line(account, LARGE, **TWO_DAYS)
    event_record(account, now, 5, labels=LARGE)

    # when: the line is removed, an event is recorded, the line saved again
    add_line(account, LARGE, clear=True, **TWO_DAYS)
    removed = set(UsageCounter.objects.values_list("labels", flat=True))
    event_record(account, now, 7, labels=LARGE)
    added_while_removed = set(UsageCounter.objects.values_list("labels", flat=True))
    hours_while_removed = set(UsageHourCounter.objects.values_list("labels", flat=True))
    keys_while_removed = UsageCounterKey.objects.count()
    add_line(account, LARGE, **TWO_DAYS)

    # then: no key and no counter of it while no line read it; both events count after
    assert removed == added_while_removed == hours_while_removed == {""}
    assert keys_while_removed == 0
    assert line_used(account, LARGE, period="rolling", now=timezone.now()) == 12_000


def test_an_event_adds_to_its_metric_and_to_the_counted_keys_its_labels_hold_only():
    # given: lines on two keys, and a minute line (which reads events, not counters)
    account = AccountFactory(timezone="Europe/Paris")
    add_line(account, {"vendor": "acme"})
    add_line(account, {"vendor": "acme", "model": "large"}, period="hour")
    add_line(account, {"technology": "llm"}, period="minute")
    four = {"model": "large", "vendor": "acme", "operation": "chat", "technology": "llm"}
    now = timezone.now()

    # when: two events of the same instant
    event_record(account, now, 3, labels=four)
    event_record(account, now, 4, labels={"vendor": "zeta"})

    # then: three day counters and three hour counters, not the 16 subsets of the labels
    rows = sorted(UsageCounter.objects.values_list("labels", "quantity_milli"))
    assert rows == [("", 7_000), ("model=large;vendor=acme", 3_000), ("vendor=acme", 3_000)]
    assert UsageHourCounter.objects.count() == 3
    assert line_used(account, {"technology": "llm"}, period="minute", now=now) == 3_000


def test_a_rebuild_leaves_the_rows_of_uncounted_days_and_keys_alone():
    # given: a key counted from today, a stale row of it before, and one of a key not counted
    account = AccountFactory(timezone="Europe/Paris")
    now = timezone.now()
    add_line(account, LARGE)
    event_record(account, now, 2, labels=LARGE)
    today = UsageCounter.objects.get(labels="model=large").day
    yesterday = today - timedelta(days=1)
    for labels in ("model=large", "vendor=acme"):
        UsageCounter.objects.create(
            account=account,
            metric=TOKENS,
            labels=labels,
            day=yesterday,
            quantity_milli=1,
            updated_at=now,
        )
    # when / then: nothing to repair, and a drift of the counted key today is found
    assert counters_rebuild(repair=False, repaired_by="test") == []
    UsageCounter.objects.filter(labels="model=large", day=today).update(quantity_milli=1)
    drifts = counters_rebuild(repaired_by="test")
    assert [(d.labels, d.day, d.found_milli, d.expected_milli) for d in drifts] == [
        ("model=large", today, 1, 2_000)
    ]


# --- Races on PostgreSQL --------------------------------------------------------------------


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True, serialized_rollback=True)
@pytest.mark.parametrize("path", ["batch", "single"])
def test_a_line_saved_while_events_are_being_recorded_counts_each_event_once(monkeypatch, path):
    # given: events recorded one request at a time, the first paused inside its transaction
    # right after it wrote its counters (none of the key yet), while a line of that key is
    # being saved. A batch writes its counters in ``counters_add``, a single event on
    # PostgreSQL in ``usage_event_store_one``'s one statement: each path is paused where it
    # writes.
    account = AccountFactory(timezone="Europe/Paris")
    now = datetime.now(UTC)
    module, name = (
        (services, "counters_add") if path == "batch" else (backoffice, "usage_event_store_one")
    )
    original = getattr(module, name)
    paused, saved = threading.Event(), threading.Event()
    failures: list[str] = []

    def write(*args, **kwargs):
        written = original(*args, **kwargs)
        if threading.current_thread().name == "recorder" and not paused.is_set():
            paused.set()
            # The line's saving runs meanwhile: it finishes only if it does not wait for the
            # recording (the lock broken); with the lock, it waits and this goes on alone.
            saved.wait(timeout=3)
        return written

    monkeypatch.setattr(module, name, write)

    def record() -> None:
        try:
            for index in range(20):
                body = event_body(
                    account,
                    f"e{index}",
                    quantity=index + 1,
                    labels=LARGE,
                    occurred_at=now.isoformat(),
                )
                usage_events_record(
                    payload={"events": [body]} if path == "batch" else body, now=now
                )
        except Exception as exc:
            failures.append(repr(exc))
        finally:
            connection.close()

    def save() -> None:
        try:
            if paused.wait(timeout=30):
                add_line(account, LARGE, **TWO_DAYS)
                saved.set()
        except Exception as exc:
            failures.append(repr(exc))
        finally:
            connection.close()

    threads = [threading.Thread(target=record, name="recorder"), threading.Thread(target=save)]
    # when
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)

    # then: the recording did pause in its transaction while the line was saved; the line
    # counts every event once, and the counters agree with the events
    assert (paused.is_set(), saved.is_set(), failures) == (True, True, [])
    used = line_used(account, LARGE, period="rolling", now=timezone.now())
    assert used == sum(range(1, 21)) * 1000
    assert counters_rebuild(repair=False, repaired_by="test") == []


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_lines_saved_and_removed_while_batches_race_keep_every_line_exact():
    # given: two threads recording labelled batches while a third adds and removes lines
    account = AccountFactory(timezone="Europe/Paris")
    now = datetime.now(UTC)
    labels_of = [LARGE, {"model": "large", "vendor": "acme"}, {"vendor": "acme"}]
    failures: list[str] = []
    start = threading.Barrier(3)

    def record(prefix: str) -> None:
        try:
            start.wait()
            for batch in range(8):
                for index in range(3):
                    event_record(
                        account,
                        now - timedelta(seconds=index),
                        index + 1,
                        labels=labels_of[(batch + index) % 3],
                        event_id=f"{prefix}-{batch}-{index}",
                    )
        except Exception as exc:
            failures.append(repr(exc))
        finally:
            connection.close()

    def lines() -> None:
        try:
            start.wait()
            for round_ in range(4):
                add_line(account, LARGE, **TWO_DAYS)
                add_line(account, {"vendor": "acme"}, period="rolling", window_days=3)
                if round_ < 3:
                    add_line(account, LARGE, clear=True, **TWO_DAYS)
        except Exception as exc:
            failures.append(repr(exc))
        finally:
            connection.close()

    threads = [
        threading.Thread(target=record, args=("a",)),
        threading.Thread(target=record, args=("b",)),
        threading.Thread(target=lines),
    ]
    # when
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)

    # then: each line's used is the sum of its matching events
    assert failures == []
    total = 2 * 8 * (1 + 2 + 3) * 1000
    matching_large = sum(
        (index + 1) * 1000
        for _prefix in "ab"
        for batch in range(8)
        for index in range(3)
        if "model" in labels_of[(batch + index) % 3]
    )
    matching_acme = sum(
        (index + 1) * 1000
        for _prefix in "ab"
        for batch in range(8)
        for index in range(3)
        if "vendor" in labels_of[(batch + index) % 3]
    )
    later = timezone.now()
    assert line_used(account, LARGE, period="rolling", now=later) == matching_large
    acme = line_used(account, {"vendor": "acme"}, period="rolling", now=later, days=3)
    assert acme == matching_acme
    assert sum(UsageCounter.objects.filter(labels="").values_list("quantity_milli", flat=True)) == (
        total
    )
    assert counters_rebuild(repair=False, repaired_by="test") == []


# --- Where an event falls, computed once per quarter hour ------------------------------------

ZONES = [
    "Europe/Paris",
    "Asia/Kathmandu",
    "America/St_Johns",
    "America/Goose_Bay",  # changed its offset at 00:01 local until 2011
    "Australia/Lord_Howe",  # a change of 30 minutes
    "Pacific/Chatham",
    "Pacific/Kiritimati",
]


@settings(max_examples=400, deadline=None)
@given(
    zone=st.sampled_from(ZONES),
    instant=st.datetimes(
        min_value=datetime(2000, 1, 1), max_value=datetime(2030, 12, 31), timezones=st.just(UTC)
    ),
    near=st.integers(min_value=-120, max_value=120),
)
def test_an_events_hour_and_day_are_those_of_its_own_instant(zone, instant, near):
    # given: an instant, often a minute or two from a change of offset
    zone = ZoneInfo(zone)
    changes = [c for c in _changes(zone, instant.year) if c.year == instant.year]
    if changes and near % 2:
        instant = changes[near % len(changes)] + timedelta(seconds=near * 7)
    # when / then
    hour, hour_day = hour_start(instant, zone)
    assert event_place(instant, zone) == (hour, hour_day, instant.astimezone(zone).date())


def _changes(zone: ZoneInfo, year: int) -> list[datetime]:
    """The instants of ``year`` at which ``zone`` changes its offset (to the minute)."""
    found = []
    moment = datetime(year, 1, 1, tzinfo=UTC)
    offset = moment.astimezone(zone).utcoffset()
    while moment.year == year:
        after = moment + timedelta(days=1)
        if after.astimezone(zone).utcoffset() != offset:
            low, high = moment, after
            while high - low > timedelta(minutes=1):
                middle = low + (high - low) / 2
                if middle.astimezone(zone).utcoffset() == offset:
                    low = middle
                else:
                    high = middle
            found.append(high.replace(second=0, microsecond=0))
            offset = after.astimezone(zone).utcoffset()
        moment = after
    return found


def test_a_batch_counts_the_key_of_a_line_saved_since_this_process_last_read_the_keys():
    # given: a batch read the account's counted keys (none yet), then a line on
    # model=large made that key counted
    account = AccountFactory(timezone="Europe/Paris")
    now = timezone.now()

    def batch(event_id: str, quantity: int) -> None:
        event = event_body(
            account, event_id, TOKENS, quantity, occurred_at=now.isoformat(), labels=LARGE
        )
        usage_events_record(payload={"events": [event]}, now=now)

    batch("before", 1)
    add_line(account, LARGE, **TWO_DAYS)
    # when: a batch of an event with those labels
    batch("after", 10)
    # then: the line counts both (the first filled from the events, the second added by its
    # batch, for the keys read under the lock, not those this process remembered)
    assert line_used(account, LARGE, "rolling", now=now, days=2) == 11_000
