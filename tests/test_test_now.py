"""TEST_NOW moves the session's clock to an instant (see ``tests/conftest.py``)."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from django.utils import timezone
from hypothesis import given
from hypothesis import strategies as st

from tests import conftest

INSTANT = datetime(2028, 2, 29, 12, 0, tzinfo=UTC)


class _Config:
    def __init__(self) -> None:
        self.stash = pytest.Stash()


@pytest.mark.parametrize("raw", ["2027-03-28T00:59:00", "tomorrow", "2027-02-30T00:00:00Z"])
def test_a_test_now_without_an_offset_or_not_a_date_is_refused(monkeypatch, raw):
    monkeypatch.setenv("TEST_NOW", raw)
    with pytest.raises(pytest.UsageError, match="is not an ISO 8601 instant with an offset"):
        conftest.pytest_configure(_Config())


def test_without_test_now_the_clock_is_left_alone(monkeypatch):
    monkeypatch.delenv("TEST_NOW", raising=False)
    config = _Config()
    conftest.pytest_configure(config)
    assert conftest._TRAVEL not in config.stash
    conftest.pytest_unconfigure(config)


def test_test_now_moves_every_clock_the_suite_reads_and_time_still_ticks(monkeypatch):
    # given
    monkeypatch.setenv("TEST_NOW", "2028-03-01T01:00:00+13:00")  # INSTANT, in Auckland
    config = _Config()
    before = time.time()

    # when
    conftest.pytest_configure(config)
    try:
        seen = {
            "timezone.now": timezone.now(),
            "datetime.now": datetime.now(tz=ZoneInfo("Pacific/Kiritimati")),
            "time.time": datetime.fromtimestamp(time.time(), tz=UTC),
        }
        first = time.time()
        time.sleep(0.01)
        later = time.time()
    finally:
        conftest.pytest_unconfigure(config)

    # then
    for clock, moment in seen.items():
        assert INSTANT <= moment < INSTANT + timedelta(hours=1), clock
    assert later > first
    assert abs(time.time() - before) < 3600  # back to the clock the session had


def test_hypothesis_runs_while_the_clock_is_moved(monkeypatch):
    monkeypatch.setenv("TEST_NOW", INSTANT.isoformat())
    config = _Config()
    seen = []

    @given(st.integers())
    def prop(n: int) -> None:
        seen.append(timezone.now())

    conftest.pytest_configure(config)
    try:
        prop()
    finally:
        conftest.pytest_unconfigure(config)
    assert seen
    assert all(INSTANT <= moment < INSTANT + timedelta(hours=1) for moment in seen)
