"""Forecast notices (SPEC 12.3): a month or week line projected, at its average rate since
the period began, to reach its blocked threshold before the period ends gets one notice.

Every test runs at fixed instants (time-machine, the clock stopped) in Europe/Paris: the
sweep is the beat task itself, run in-process; e-mails go through the eager task after
commit to Anymail's test backend.
"""

from __future__ import annotations

import threading
from io import StringIO
from datetime import UTC, date, datetime
from zoneinfo import ZoneInfo

import pytest
import time_machine
from django.core import mail
from django.core.management import call_command
from django.db import connection

from backoffice.services import extensions_grant, limits_replace, usage_events_record
from notifications.models import Delivery, Notification, WebhookDelivery, WebhookEndpoint
from notifications.services import thresholds_evaluate
from notifications.tasks import sweep_notifications
from tests.factories import AccountFactory

pytestmark = pytest.mark.django_db(transaction=True, serialized_rollback=True)

PARIS = ZoneInfo("Europe/Paris")
TOKENS = "text_tokens"
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
RECIPIENTS = {
    "warning": [
        {"email": "pm@example.com", "language": "en"},
        {"email": "dg@example.com", "language": "fr"},
    ],
    "blocked": [{"email": "ops@example.com", "language": "en"}],
}


@pytest.fixture(autouse=True)
def _settings(settings):
    settings.EMAIL_BACKEND = "anymail.backends.test.EmailBackend"
    settings.WEBHOOKS_ALLOW_LOOPBACK = True
    settings.WEBHOOKS_TIMEOUT = 5.0


def paris(text: str) -> datetime:
    """A wall-clock reading in Paris (``2027-01-04 12:00``)."""
    return datetime.fromisoformat(text).replace(tzinfo=PARIS)


def monthly_account(*, blocked=1000, recipients=None, **fields):
    """A Paris account limited to ``blocked`` tokens a month, no warning threshold (so that
    recording usage notifies nothing), with warning and blocked recipients."""
    fields = {"name": "Acme", "external_id": "acme", **fields}
    account = AccountFactory(timezone="Europe/Paris", **fields)
    limits_replace(
        account=account,
        data={
            "limits": {TOKENS: {"warning": None, "blocked": blocked}},
            "recipients": RECIPIENTS if recipients is None else recipients,
        },
    )
    return account


def weekly_account(*, blocked=1000):
    account = AccountFactory(timezone="Europe/Paris", name="Acme", external_id="acme")
    limits_replace(
        account=account,
        data={
            "recipients": RECIPIENTS,
            "scoped_limits": [
                {
                    "metric": TOKENS,
                    "period": "week",
                    "window_days": None,
                    "labels": {"model": "large"},
                    "warning": None,
                    "blocked": blocked,
                }
            ],
        },
    )
    return account


def record(account, event_id, quantity, at: datetime, labels=None):
    """One event occurring at ``at``, received at that instant."""
    usage_events_record(
        payload={
            "event_id": event_id,
            "account": str(account.pk),
            "metric": TOKENS,
            "quantity": quantity,
            "occurred_at": at.isoformat(),
            "labels": labels or {},
        },
        now=at.astimezone(UTC),
    )


def sweep_at(instant: datetime) -> None:
    """The beat task, run at ``instant``."""
    with time_machine.travel(instant, tick=False):
        sweep_notifications()


def forecasts(account):
    return list(
        Notification.objects.filter(account=account, level="forecast").values_list(
            "period_kind", "labels_key", "period", "threshold", "used_milli", "projected_at"
        )
    )


# --- When a forecast is made ---


def test_no_forecast_before_a_tenth_of_the_period_has_passed():
    # given: January 2027 in Paris (31 days); 900 of 1000 tokens used on its 2nd day
    account = monthly_account()
    record(account, "a", 900, paris("2027-01-02 10:00"))
    # when: 2.5 days in (8 %), then 3.09 days in (just under 10 %)
    sweep_at(paris("2027-01-03 12:00"))
    sweep_at(paris("2027-01-04 02:09"))
    # then
    assert forecasts(account) == []
    assert mail.outbox == []


def test_a_projection_before_the_end_sends_one_forecast():
    # given
    account = monthly_account()
    record(account, "a", 900, paris("2027-01-02 10:00"))
    # when: 3.5 days in (11 %): 900 tokens in 3.5 days reach 1000 in 3 days 21 h 20 min
    sweep_at(paris("2027-01-04 12:00"))
    # then
    assert forecasts(account) == [
        (
            "month",
            "",
            date(2027, 1, 1),
            1000,
            900_000,
            datetime(2027, 1, 4, 20, 20, tzinfo=UTC),
        )
    ]
    notice = Notification.objects.get(account=account)
    assert notice.recorded_only is False
    # to the warning recipients, not the blocked one
    assert sorted(Delivery.objects.values_list("email", "status")) == [
        ("dg@example.com", "sent"),
        ("pm@example.com", "sent"),
    ]
    assert sorted(m.to[0] for m in mail.outbox) == ["dg@example.com", "pm@example.com"]


def test_a_projection_after_the_end_sends_nothing():
    # given: 250 tokens in 8 days reach 1000 on day 32, after January ends
    account = monthly_account()
    record(account, "a", 250, paris("2027-01-02 10:00"))
    # when
    sweep_at(paris("2027-01-09 00:00"))
    # then
    assert forecasts(account) == []
    assert mail.outbox == []


def test_a_blocked_line_gets_no_forecast():
    # given: the threshold reached (its blocked notice sent)
    account = monthly_account()
    record(account, "a", 1000, paris("2027-01-02 10:00"))
    assert list(Notification.objects.values_list("level", flat=True)) == ["blocked"]
    # when
    sweep_at(paris("2027-01-10 12:00"))
    # then
    assert forecasts(account) == []
    assert [m.to for m in mail.outbox] == [["ops@example.com"]]


def test_an_extension_is_part_of_the_threshold_projected():
    # given: 1000 more granted for January, then 900 used
    account = monthly_account()
    with time_machine.travel(paris("2027-01-02 09:00"), tick=False):
        extensions_grant(
            account=account,
            rows=[{"metric": TOKENS, "amount": 1000, "reason": "Launch"}],
            actor=None,
        )
    record(account, "a", 900, paris("2027-01-02 10:00"))
    # when: 3.5 days in, 900 tokens reach 2000 in 7 days 18 h 40 min
    sweep_at(paris("2027-01-04 12:00"))
    # then
    [(_kind, _labels, _day, threshold, _used, projected_at)] = forecasts(account)
    assert threshold == 2000
    assert projected_at == datetime(2027, 1, 8, 17, 40, tzinfo=UTC)


def test_without_warning_recipients_the_blocked_ones_get_it():
    # given
    account = monthly_account(
        recipients={"warning": [], "blocked": [{"email": "ops@example.com", "language": "en"}]}
    )
    record(account, "a", 900, paris("2027-01-02 10:00"))
    # when
    sweep_at(paris("2027-01-04 12:00"))
    # then
    assert [m.to for m in mail.outbox] == [["ops@example.com"]]
    assert mail.outbox[0].extra_headers["X-Usage-Level"] == "forecast"


# --- Exactly once ---


def test_repeated_sweeps_send_one_forecast_per_line_and_period():
    # given: a forecast sent
    account = monthly_account()
    record(account, "a", 900, paris("2027-01-02 10:00"))
    sweep_at(paris("2027-01-04 12:00"))
    # when: the sweep runs again, the same minute and days later with a nearer projection
    sweep_at(paris("2027-01-04 12:00"))
    sweep_at(paris("2027-01-04 12:01"))
    record(account, "b", 50, paris("2027-01-05 10:00"))
    sweep_at(paris("2027-01-06 12:00"))
    with time_machine.travel(paris("2027-01-06 12:00"), tick=False):
        call_command("evaluate_thresholds", stdout=StringIO())
    # then: still the first forecast and its two e-mails
    assert len(forecasts(account)) == 1
    assert forecasts(account)[0][5] == datetime(2027, 1, 4, 20, 20, tzinfo=UTC)
    assert len(mail.outbox) == 2


def test_the_next_period_gets_its_own_forecast():
    # given: January's forecast
    account = monthly_account()
    record(account, "a", 900, paris("2027-01-02 10:00"))
    sweep_at(paris("2027-01-04 12:00"))
    # when: in February, 900 tokens again by its 4th day (28 days: 10 % is 2.8 days)
    record(account, "b", 900, paris("2027-02-02 10:00"))
    sweep_at(paris("2027-02-04 12:00"))
    # then
    assert sorted(day for _kind, _labels, day, *_rest in forecasts(account)) == [
        date(2027, 1, 1),
        date(2027, 2, 1),
    ]
    assert len(mail.outbox) == 4


def test_evaluate_thresholds_makes_forecasts_and_prints_them(capsys):
    # given
    account = monthly_account()
    record(account, "a", 900, paris("2027-01-02 10:00"))
    # when
    with time_machine.travel(paris("2027-01-04 12:00"), tick=False):
        call_command("evaluate_thresholds", "--account", "acme")
    # then
    assert capsys.readouterr().out.splitlines() == [
        "acme  text_tokens  forecast  1000",
        "1 notification(s) created.",
    ]
    assert len(forecasts(account)) == 1


@pytest.mark.postgres
def test_concurrent_sweeps_record_one_forecast():
    # given: eight accounts each projected before January ends
    accounts = []
    for n in range(8):
        account = monthly_account(name=f"Acme {n}", external_id=f"acme-{n}")
        record(account, f"a{n}", 900, paris("2027-01-02 10:00"))
        accounts.append(account)
    instant = paris("2027-01-04 12:00")
    start = threading.Barrier(4)
    failures: list[str] = []

    def sweep() -> None:
        try:
            start.wait()
            thresholds_evaluate(now=instant)
        except Exception as error:
            failures.append(repr(error))
        finally:
            connection.close()

    # when: four sweeps at once
    threads = [threading.Thread(target=sweep) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    # then: one forecast per account, two deliveries each
    assert not any(thread.is_alive() for thread in threads)
    assert failures == []
    for account in accounts:
        assert len(forecasts(account)) == 1
    assert Notification.objects.filter(level="forecast").count() == 8
    assert Delivery.objects.count() == 16
