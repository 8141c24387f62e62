"""One restored notice per blocked notification under real concurrency on PostgreSQL
(SPEC 12.2).

Limit changes on one account wait for each other (its row lock), but the sweep, the
``evaluate_thresholds`` command and the admin's "evaluate now" take no such lock: each
can find the same blocked notification unanswered and its line lifted. Reading the
lines is slowed down a little (``slow_line_reads``), so that in every round several of
them read before any has inserted; the ledger's one-to-one ``restores`` and ``ON
CONFLICT DO NOTHING`` are then what lets one notice in.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime

import pytest
import time_machine
from django.utils import timezone

import notifications.restored
from accounts.models import Limit
from backoffice.services import limits_patch, limits_replace, usage_events_record
from notifications.models import Delivery, Notification
from notifications.services import thresholds_evaluate
from tests.factories import AccountFactory
from tests.notifications.test_crossing_races import run_together

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.django_db(transaction=True, serialized_rollback=True),
]

ROUNDS = 6
TOKENS = "text_tokens"
RECIPIENTS = {
    "warning": [],
    "blocked": [
        {"email": "ops@example.com", "language": "en"},
        {"email": "direction@example.fr", "language": "fr"},
    ],
}
# Mid-month in every zone, far from any period's end: the rounds all run in one period.
NOW = datetime(2027, 1, 13, 10, 0, tzinfo=UTC)


@pytest.fixture(autouse=True)
def _settings(settings) -> None:
    settings.EMAIL_BACKEND = "anymail.backends.test.EmailBackend"


# Set once the round's limit change has committed; sweeps read the lines only then.
COMMITTED = threading.Event()
CHANGER = threading.local()


@pytest.fixture(autouse=True)
def slow_line_reads(monkeypatch) -> None:
    """Every read of the blocked lines by the restored notices waits 100 ms first; a
    sweep's waits, moreover, for the round's limit change to commit (at most 5 s): it found
    the blocked notification unanswered before, and reads the line lifted after."""
    read = notifications.restored.blocked_lines_usage

    def slow_read(**kwargs):
        time.sleep(0.1)
        if not getattr(CHANGER, "is_changer", False):
            COMMITTED.wait(timeout=5)
        return read(**kwargs)

    monkeypatch.setattr(notifications.restored, "blocked_lines_usage", slow_read)


@pytest.fixture(autouse=True)
def _clock():
    with time_machine.travel(NOW, tick=True):
        yield


def blocked_account(round_number: int):
    CHANGER.is_changer = True  # this thread's reads never wait
    account = AccountFactory(timezone="Europe/Paris", external_id=f"race-{round_number}")
    limits_replace(
        account=account,
        data={"limits": {TOKENS: {"warning": None, "blocked": 100}}, "recipients": RECIPIENTS},
    )
    usage_events_record(
        payload={"event_id": "a", "account": str(account.pk), "metric": TOKENS, "quantity": 120},
        now=timezone.now(),
    )
    assert Notification.objects.filter(account=account, level="blocked").count() == 1
    return account


def assert_one_notice(account) -> None:
    notices = Notification.objects.filter(account=account, level="restored")
    assert notices.count() == 1
    assert sorted(
        Delivery.objects.filter(notification__in=notices).values_list("email", flat=True)
    ) == [
        "direction@example.fr",
        "ops@example.com",
    ]


def test_sweeps_racing_a_limit_change_restore_once():
    for round_number in range(ROUNDS):
        # given: a blocked line whose threshold is raised while sweeps run
        account = blocked_account(round_number)

        COMMITTED.clear()

        def raise_limit(account=account) -> None:
            CHANGER.is_changer = True
            time.sleep(0.05)  # the sweeps look for unanswered notifications first
            limits_patch(account=account, data={"limits": {TOKENS: {"blocked": 500}}})
            COMMITTED.set()

        def sweep_after(delay: float) -> Callable[[], None]:
            def sweep() -> None:
                time.sleep(delay)
                thresholds_evaluate()

            return sweep

        actions = [raise_limit, *(sweep_after(0) for _ in range(3))]
        # when
        failures = run_together(actions)
        # then
        assert failures == []
        assert_one_notice(account)


def test_sweeps_racing_each_other_after_a_lift_restore_once():
    for round_number in range(ROUNDS):
        # given: a line lifted without its notice (an update that evaluates nothing)
        account = blocked_account(round_number)
        Limit.objects.filter(account=account).update(blocked=500)
        # when: four sweeps at once
        COMMITTED.set()
        failures = run_together([thresholds_evaluate] * 4)
        # then
        assert failures == []
        assert_one_notice(account)


def changer(account, value) -> Callable[[], None]:
    def change() -> None:
        CHANGER.is_changer = True
        limits_patch(account=account, data={"limits": {TOKENS: {"blocked": value}}})

    return change


def test_concurrent_limit_changes_restore_once():
    for round_number in range(ROUNDS):
        account = blocked_account(round_number)
        failures = run_together([changer(account, value) for value in (200, 300, 400, None)])
        assert failures == []
        assert_one_notice(account)
