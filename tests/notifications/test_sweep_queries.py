"""What one sweep costs: the same few queries whatever the number of accounts and lines
(SPEC 10: 10,000 accounts with lines in < 3 s), each line read by the database, which hands
back only the lines with something to do.

The tests run in the test's transaction, which never commits: the e-mails (sent after
commit) are not part of what is counted, only the sweep's own queries.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import time_machine
from django.db import connection
from django.test.utils import CaptureQueriesContext

from accounts.models import Account, Limit
from backoffice.services import limits_replace, usage_events_record
from notifications.models import Notification
from notifications.selectors import sweep_read
from notifications.services import thresholds_evaluate
from tests.factories import AccountFactory

pytestmark = pytest.mark.django_db

# A Wednesday in the middle of January in every zone below: far from any period's start or
# end, past a tenth of the week and of the month.
NOW = datetime(2027, 1, 13, 10, 0, 30, tzinfo=UTC)
ZONES = ("Europe/Paris", "Asia/Kathmandu", "America/St_Johns")
TOKENS = "text_tokens"
AUDIO = "audio_transcribed_seconds"
RECIPIENTS = {
    "warning": [{"email": "pm@example.com", "language": "en"}],
    "blocked": [{"email": "ops@example.com", "language": "fr"}],
}
# A line of every kind: crossed (the day, hour and minute lines, the rolling window),
# projected past its blocked threshold (the week), far from its thresholds (the month).
SCOPED_LIMITS = [
    {"period": "day", "window_days": None, "labels": {}, "warning": 100, "blocked": None},
    {"period": "week", "window_days": None, "labels": {}, "warning": None, "blocked": 600},
    {"period": "hour", "window_days": None, "labels": {}, "warning": 100, "blocked": None},
    {"period": "minute", "window_days": None, "labels": {}, "warning": 100, "blocked": None},
    {"period": "rolling", "window_days": 7, "labels": {}, "warning": 150, "blocked": None},
    {
        "period": "month",
        "window_days": None,
        "labels": {"vendor": "acme"},
        "warning": None,
        "blocked": 100_000,
    },
]


@pytest.fixture(autouse=True)
def _clock():
    with time_machine.travel(NOW, tick=False):
        yield


def event(account: Account, event_id: str, metric: str, quantity: int, at: datetime) -> None:
    usage_events_record(
        payload={
            "event_id": event_id,
            "account": str(account.pk),
            "metric": metric,
            "quantity": quantity,
            "occurred_at": at.isoformat(),
            "labels": {"vendor": "acme"},
        },
        now=NOW,
    )


def accounts_with_every_line(count: int) -> list[Account]:
    """``count`` accounts whose requests recorded their crossings, each with a forecast due
    (the week line) and a restored notice due (the audio line, lifted without evaluation)."""
    accounts = []
    for number in range(count):
        account = AccountFactory(timezone=ZONES[number % len(ZONES)])
        limits_replace(
            account=account,
            data={
                "recipients": RECIPIENTS,
                "limits": {
                    TOKENS: {"warning": 100, "blocked": 200},
                    AUDIO: {"warning": None, "blocked": 1000},
                },
                "scoped_limits": [{"metric": TOKENS, **line} for line in SCOPED_LIMITS],
            },
        )
        event(account, "yesterday", TOKENS, 150, NOW - timedelta(days=1))
        event(account, "now", TOKENS, 150, NOW)
        event(account, "audio", AUDIO, 1500, NOW - timedelta(hours=2))
        accounts.append(account)
    # The audio line's block lifted by an update that evaluates nothing.
    Limit.objects.filter(metric=AUDIO).update(blocked=5000)
    return accounts


def sweeps(count: int) -> tuple[list[int], list[str], list[str]]:
    """Two sweeps over ``count`` such accounts: what the first created (by level), and the
    queries of each."""
    Account.objects.all().delete()
    accounts_with_every_line(count)
    with CaptureQueriesContext(connection) as first:
        created = thresholds_evaluate()
    with CaptureQueriesContext(connection) as second:
        assert thresholds_evaluate() == []
    levels = sorted(Notification.objects.filter(pk__in=created).values_list("level", flat=True))
    return levels, [q["sql"] for q in first], [q["sql"] for q in second]


def test_a_sweep_makes_the_same_few_queries_for_two_accounts_as_for_seven():
    # given / when
    levels_of_two, first_of_two, second_of_two = sweeps(2)
    levels_of_seven, first_of_seven, second_of_seven = sweeps(7)
    # then: each account's forecast and restored notice, and nothing else new
    assert levels_of_two == ["forecast"] * 2 + ["restored"] * 2
    assert levels_of_seven == ["forecast"] * 7 + ["restored"] * 7
    assert len(first_of_seven) == len(first_of_two) <= 25
    assert len(second_of_seven) == len(second_of_two) <= 14


def lines_read() -> list[tuple[str, list[str]]]:
    """What the sweep's read hands back: each account's zone and the kinds of its lines
    (``month`` for a whole-metric monthly line)."""
    read = sweep_read(account_ids=None, now=NOW)
    found = {}
    for usage in read.usages:
        found.setdefault(usage.account_id, []).append(f"month {usage.metric}")
    for account, lines in read.lines.items():
        found.setdefault(account.pk, []).extend(line.line.period for line in lines)
    zones = dict(Account.objects.values_list("pk", "timezone"))
    return sorted((zones[pk], sorted(kinds)) for pk, kinds in found.items())


def test_the_sweep_reads_only_the_lines_with_something_to_do():
    # given: the crossings recorded by the requests
    accounts_with_every_line(2)
    # when / then: the week line, due a forecast; the rolling line, whose period start the
    # ledger cannot tell; the minute line, with events this minute; none of the lines whose
    # crossings are recorded (the monthly lines, the day and hour lines) or far from their
    # thresholds (the labelled month)
    due = ["minute", "rolling", "week"]
    assert lines_read() == [("Asia/Kathmandu", due), ("Europe/Paris", due)]
    # and once the forecasts are sent, the week line no more
    thresholds_evaluate()
    assert lines_read() == [
        ("Asia/Kathmandu", ["minute", "rolling"]),
        ("Europe/Paris", ["minute", "rolling"]),
    ]


def test_a_monthly_line_past_a_threshold_the_ledger_lacks_is_read_and_recorded():
    # given: the monthly line's warning threshold lowered by an update that evaluates nothing
    accounts_with_every_line(1)
    Limit.objects.filter(metric=TOKENS).update(warning=50)
    # when
    before = lines_read()
    created = thresholds_evaluate()
    # then
    assert before == [("Europe/Paris", ["minute", "month text_tokens", "rolling", "week"])]
    assert sorted(
        Notification.objects.filter(pk__in=created).values_list("period_kind", "level", "threshold")
    ) == [("month", "restored", 1000), ("month", "warning", 50), ("week", "forecast", 600)]
