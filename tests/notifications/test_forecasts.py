"""Forecast notices (SPEC 12.3): a month or week line projected, at its average rate since
the period began, to reach its blocked threshold before the period ends gets one notice.

Every test runs at fixed instants (time-machine, the clock stopped) in Europe/Paris: the
sweep is the beat task itself, run in-process; e-mails go through the eager task after
commit to Anymail's test backend.
"""

from __future__ import annotations

import threading
from datetime import UTC, date, datetime
from io import StringIO
from zoneinfo import ZoneInfo

import pytest
import time_machine
from django.core import mail
from django.core.management import call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext

from backoffice.services import extensions_grant, limits_replace, usage_events_record
from notifications.models import Delivery, Notification, WebhookDelivery, WebhookEndpoint
from notifications.services import thresholds_evaluate
from notifications.tasks import sweep_notifications
from tests.factories import AccountFactory
from tests.notifications.receiver import SECRET
from tests.notifications.test_lines import event_of

pytestmark = pytest.mark.django_db(transaction=True, serialized_rollback=True)

PARIS = ZoneInfo("Europe/Paris")
TOKENS = "text_tokens"
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
        payload=event_of(account, event_id, quantity, at, labels), now=at.astimezone(UTC)
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
    with CaptureQueriesContext(connection) as queries:
        sweep_at(paris("2027-01-04 12:00"))
    # (a forecast already recorded is not even offered to the ledger again)
    inserts = [q["sql"] for q in queries if q["sql"].startswith("INSERT INTO")]
    assert not [sql for sql in inserts if "notifications_notification" in sql.split("(")[0]]
    sweep_at(paris("2027-01-04 12:01"))
    record(account, "b", 50, paris("2027-01-05 10:00"))
    sweep_at(paris("2027-01-06 12:00"))
    with time_machine.travel(paris("2027-01-06 12:00"), tick=False):
        call_command("evaluate_thresholds", stdout=StringIO())
        # and with another threshold (an extension granted), still projected before the end
        extensions_grant(
            account=account,
            rows=[{"metric": TOKENS, "amount": 500, "reason": "Launch"}],
            actor=None,
        )
    sweep_at(paris("2027-01-06 12:05"))
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


# --- Across DST changes, and a week line ---


def test_a_month_with_a_dst_change_is_projected_over_its_real_hours():
    # given: March 2027 in Paris lasts 743 hours (the clock skips 02:00 on the 28th); at
    # 29 March 10:00 (+02:00), 681 hours in, 1,000,000 of 1,091,000 tokens are used
    account = monthly_account(blocked=1_091_000)
    record(account, "a", 1_000_000, paris("2027-03-02 10:00"))
    # when
    sweep_at(paris("2027-03-29 10:00"))
    # then: 681 h x 1.091 = 742 h 58 min 16 s, 1 min 44 s before the period ends (counted
    # on the wall clock, 682 h x 1.091 would fall after its 744 wall-clock hours)
    [(kind, _labels, day, threshold, used, projected_at)] = forecasts(account)
    assert (kind, day, threshold, used) == ("month", date(2027, 3, 1), 1_091_000, 1_000_000_000)
    assert projected_at == datetime(2027, 3, 31, 21, 58, 16, tzinfo=UTC)
    (message, _other) = sorted(mail.outbox, key=lambda m: m.to)
    assert message.extra_headers["X-Usage-Projected-At"] == "2027-03-31T23:58:16+02:00"
    assert (
        message.subject
        == "Prévision : Acme pourrait atteindre sa limite « Jetons texte » le 31 mars 2027"
    )


def test_a_month_with_a_dst_change_projected_past_its_end_sends_nothing():
    # given: as above, with a threshold 1 second of rate higher: 742 h 59 min 59 s...
    account = monthly_account(blocked=1_091_200)
    record(account, "a", 1_000_000, paris("2027-03-02 10:00"))
    # when: 681 h x 1.0912 = 743 h 6 min, after the period's 743 hours
    sweep_at(paris("2027-03-29 10:00"))
    # then
    assert forecasts(account) == []


def test_a_week_line_across_the_october_dst_change():
    # given: the week of Monday 25 October 2027 lasts 169 hours in Paris (the clock goes
    # back on the 31st); a line of 1000 tokens with the label model=large
    account = weekly_account()
    record(account, "a", 930, paris("2027-10-26 10:00"), labels={"model": "large"})
    record(account, "b", 5000, paris("2027-10-26 10:00"), labels={"model": "small"})
    # when: Sunday 12:00 (+01:00), 157 hours in: 930 tokens reach 1000 at 168 h 49 min 2 s
    sweep_at(datetime(2027, 10, 31, 11, tzinfo=UTC))
    # then: counted on the wall clock (158 of 168 hours) it would fall after the week
    assert forecasts(account) == [
        (
            "week",
            "model=large",
            date(2027, 10, 25),
            1000,
            930_000,
            datetime(2027, 10, 31, 22, 49, 2, tzinfo=UTC),
        )
    ]
    message = next(m for m in mail.outbox if m.to == ["pm@example.com"])
    assert message.subject == (
        "Forecast: Acme may reach its Text tokens limit on 31 October 2027"
        " (week of 25 October 2027, Model: large)"
    )
    headers = message.extra_headers
    assert headers["X-Usage-Level"] == "forecast"
    assert headers["X-Usage-Period-Kind"] == "week"
    assert headers["X-Usage-Period"] == "2027-10-25T00:00:00+02:00"
    assert headers["X-Usage-Labels"] == "model=large"
    assert headers["X-Usage-Projected-At"] == "2027-10-31T23:49:02+01:00"
    assert "Limit line: Week, Model: large" in message.body


def test_a_week_line_before_a_tenth_of_its_week_gets_nothing():
    # given: 900 tokens on Monday morning
    account = weekly_account()
    record(account, "a", 900, paris("2027-10-25 08:00"), labels={"model": "large"})
    # when: Monday 16:00, 16 hours in (9.5 % of 169 hours)
    sweep_at(paris("2027-10-25 16:00"))
    # then
    assert forecasts(account) == []
    # and 17 hours in, it is made (900 tokens reach 1000 at 18 h 53 min 20 s)
    sweep_at(paris("2027-10-25 17:00"))
    assert [row[5] for row in forecasts(account)] == [
        datetime(2027, 10, 25, 16, 53, 20, tzinfo=UTC)
    ]


# --- What recipients get ---


def test_the_forecast_e_mail_in_english():
    # given
    account = monthly_account()
    record(account, "a", 900, paris("2027-01-02 10:00"))
    # when
    sweep_at(paris("2027-01-04 12:00"))
    # then
    message = next(m for m in mail.outbox if m.to == ["pm@example.com"])
    notice = Notification.objects.get()
    assert message.subject == "Forecast: Acme may reach its Text tokens limit on 4 January 2027"
    assert message.body.splitlines()[:7] == [
        "At its rate since the period began, the account Acme (acme) will reach its blocked"
        " threshold for Text tokens on Jan. 4, 2027, 9:20 p.m. (Europe/Paris), before the"
        " period ends.",
        "",
        "Period: January 2027",
        "Blocked threshold: 1,000 tokens",
        "Current usage: 900 tokens (90% of the threshold)",
        "Projected to reach it: Jan. 4, 2027, 9:20 p.m. (Europe/Paris)",
        "",
    ]
    assert (
        "What happens next: nothing changes yet. If usage goes on at this rate, processing will"
        " be refused once the blocked threshold is reached; raising the limit or granting an"
        " extension avoids it."
    ) in message.body
    [(html, mimetype)] = message.alternatives
    assert mimetype == "text/html"
    assert '<html lang="en">' in html
    assert "<title>Blocked threshold foreseen</title>" in html
    assert (
        "the account <strong>Acme</strong> (acme) will reach its blocked threshold for Text"
        " tokens on <strong>Jan. 4, 2027, 9:20 p.m. (Europe/Paris)</strong>"
    ) in html
    assert (
        '<th style="text-align: left; padding: 4px 12px 4px 0;">Projected to reach it</th><td>Jan. 4, 2027, 9:20 p.m. (Europe/Paris)</td>'
        in html
    )
    assert message.extra_headers == {
        "X-Usage-Account": str(account.pk),
        "X-Usage-Account-External-Id": "acme",
        "X-Usage-Metric": "text_tokens",
        "X-Usage-Level": "forecast",
        "X-Usage-Period": "2027-01",
        "X-Usage-Period-Kind": "month",
        "X-Usage-Threshold": "1000",
        "X-Usage-Used": "900",
        "X-Usage-Projected-At": "2027-01-04T21:20:00+01:00",
    }
    assert message.tags == ["usage-forecast"]
    assert message.metadata["notification"] == str(notice.pk)


def test_the_forecast_e_mail_in_french():
    # given
    account = monthly_account()
    record(account, "a", 400, paris("2027-01-01 10:00"))
    # when: 3 days 12 hours in, 400 tokens reach 1000 at 8 days 18 hours
    sweep_at(paris("2027-01-04 12:00"))
    # then
    message = next(m for m in mail.outbox if m.to == ["dg@example.com"])
    assert message.subject == (
        "Prévision : Acme pourrait atteindre sa limite « Jetons texte » le 9 janvier 2027"
    )
    assert message.body.splitlines()[:7] == [
        "Au rythme suivi depuis le début de la période, le compte Acme (acme) atteindra son"
        " seuil de blocage pour « Jetons texte » le 9 janvier 2027 18:00 (Europe/Paris), avant"
        " la fin de la période.",
        "",
        "Période : janvier 2027",
        "Seuil de blocage : 1\u00a0000 jetons",
        "Consommation actuelle : 400 jetons (40 % du seuil)",
        "Date prévue du blocage : 9 janvier 2027 18:00 (Europe/Paris)",
        "",
    ]
    assert (
        "Et maintenant : rien ne change pour l’instant. Si la consommation garde ce rythme, les"
        " traitements seront refusés une fois le seuil de blocage atteint ; relever la limite ou"
        " accorder une extension l’évite."
    ) in message.body
    [(html, _mimetype)] = message.alternatives
    assert '<html lang="fr">' in html
    assert "<title>Seuil de blocage prévu</title>" in html
    assert (
        "le compte <strong>Acme</strong> (acme) atteindra son seuil de blocage pour « Jetons"
        " texte » le <strong>9 janvier 2027 18:00 (Europe/Paris)</strong>"
    ) in html
    assert "<td>9 janvier 2027 18:00 (Europe/Paris)</td>" in html
    assert message.extra_headers["X-Usage-Projected-At"] == "2027-01-09T18:00:00+01:00"
    assert message.extra_headers["X-Usage-Account"] == str(account.pk)


def test_the_projected_day_of_the_first_is_1er_in_french():
    # given: the week of Monday 29 November 2027 runs into December
    account = weekly_account()
    record(account, "a", 600, paris("2027-11-29 08:00"), labels={"model": "large"})
    # when: Tuesday 12:00, 36 hours in: 600 tokens reach 1000 at 60 hours, Wednesday 12:00
    sweep_at(paris("2027-11-30 12:00"))
    # then
    message = next(m for m in mail.outbox if m.to == ["dg@example.com"])
    assert message.extra_headers["X-Usage-Projected-At"] == "2027-12-01T12:00:00+01:00"
    assert message.subject == (
        "Prévision : Acme pourrait atteindre sa limite « Jetons texte » le 1er décembre 2027"
        " (semaine du 29 novembre 2027, Modèle : large)"
    )
    assert "le 1er décembre 2027 12:00 (Europe/Paris)" in message.body


# --- Webhooks ---


def test_an_endpoint_subscribed_to_forecasts_gets_usage_forecast(receiver):
    # given: one endpoint subscribed to forecasts, one to the thresholds only
    url, received = receiver.url, receiver.requests
    account = monthly_account()
    WebhookEndpoint.objects.create(account=account, url=url, secret=SECRET, levels=["forecast"])
    WebhookEndpoint.objects.create(
        account=account, url=url + "/thresholds", secret=SECRET, levels=["warning", "blocked"]
    )
    record(account, "a", 900, paris("2027-01-02 10:00"))
    # when
    sweep_at(paris("2027-01-04 12:00"))
    # then
    notice = Notification.objects.get()
    (request,) = received()
    assert request.verified, request.error
    assert request.path == "/hooks/usage"
    assert request.payload == {
        "type": "usage.forecast",
        "timestamp": notice.created_at.isoformat(),
        "data": {
            "notification_id": notice.pk,
            "account": {"id": str(account.pk), "external_id": "acme", "name": "Acme"},
            "metric": "text_tokens",
            "level": "forecast",
            "period_kind": "month",
            "period": "2027-01",
            "labels": {},
            "threshold": 1000,
            "used": 900,
            "projected_at": notice.projected_at.isoformat(),
        },
    }
    assert notice.projected_at == datetime(2027, 1, 4, 20, 20, tzinfo=UTC)
    assert list(WebhookDelivery.objects.values_list("url", "status", "http_status")) == [
        (url, "sent", 200)
    ]
