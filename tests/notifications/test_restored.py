"""Notices of capacity restored (SPEC 12.2): a blocked line no longer blocked tells its
blocked recipients once, in their language, what changed and what is left.

The clock stands at fixed instants (``time_machine``) in Europe/Paris, so that each test
knows which period it is in; usage is recorded through the service at those instants.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest
import time_machine
from django.core import mail
from django.core.management import call_command
from django.utils import translation

from backoffice.services import (
    extensions_grant,
    limits_patch,
    limits_replace,
    scoped_limit_set,
    usage_events_record,
)
from notifications.hooks import webhook_payload
from notifications.models import Delivery, Notification, WebhookDelivery, WebhookEndpoint
from notifications.services import thresholds_evaluate
from tests.accounts.test_admin import page_errors, post_account_page
from tests.factories import AccountFactory

pytestmark = pytest.mark.django_db(transaction=True, serialized_rollback=True)

PARIS = ZoneInfo("Europe/Paris")
TOKENS = "text_tokens"
RECIPIENTS = {
    "warning": [{"email": "pm@example.com", "language": "en"}],
    "blocked": [
        {"email": "ops@example.com", "language": "en"},
        {"email": "direction@example.fr", "language": "fr"},
    ],
}


@pytest.fixture(autouse=True)
def _anymail_test_backend(settings):
    settings.EMAIL_BACKEND = "anymail.backends.test.EmailBackend"
    settings.WEBHOOKS_ALLOW_LOOPBACK = True


def paris(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=PARIS)


@contextmanager
def at(text: str) -> Iterator[datetime]:
    """The clock stands still at the Paris wall-clock reading ``text``."""
    instant = paris(text)
    with time_machine.travel(instant.astimezone(UTC), tick=False):
        yield instant


def record(account, event_id, quantity, instant: datetime, labels=None):
    usage_events_record(
        payload={
            "event_id": event_id,
            "account": str(account.pk),
            "metric": TOKENS,
            "quantity": quantity,
            "occurred_at": instant.isoformat(),
            "labels": labels or {},
        },
        now=instant.astimezone(UTC),
    )


def monthly_account(blocked=100, warning=None):
    account = AccountFactory(timezone="Europe/Paris", name="Acme", external_id="acme-7")
    limits_replace(
        account=account,
        data={
            "limits": {TOKENS: {"warning": warning, "blocked": blocked}},
            "recipients": RECIPIENTS,
        },
    )
    return account


def line_account(*, period, blocked=100, window_days=None, labels=None):
    account = AccountFactory(timezone="Europe/Paris", name="Acme", external_id="acme-7")
    limits_replace(
        account=account,
        data={
            "recipients": RECIPIENTS,
            "scoped_limits": [
                {
                    "metric": TOKENS,
                    "period": period,
                    "window_days": window_days,
                    "labels": labels or {},
                    "warning": None,
                    "blocked": blocked,
                }
            ],
        },
    )
    return account


def restored(account):
    """Each restored notice: reason, threshold it answers, threshold now, used, the blocked
    notification's level it answers, and its deliveries (address, language)."""
    return [
        (
            n.restored_reason,
            n.threshold,
            n.restored_threshold,
            n.used_milli // 1000,
            n.restores.level,
            sorted(n.deliveries.values_list("email", "language")),
        )
        for n in Notification.objects.filter(account=account, level="restored").order_by("pk")
    ]


def restored_mail():
    return [m for m in mail.outbox if m.extra_headers.get("X-Usage-Level") == "restored"]


EVERY_BLOCKED = [("direction@example.fr", "fr"), ("ops@example.com", "en")]


# --- Each path that lifts a block (current period) ---


def test_raising_the_blocked_threshold_through_the_api_restores_once(manager_client):
    with at("2027-01-13 10:00") as now:
        # given: a blocked monthly line
        account = monthly_account(blocked=100)
        record(account, "a", 120, now)
        assert Notification.objects.filter(level="blocked").count() == 1
        # when: the threshold is raised above usage, through the API
        response = manager_client.put(
            f"/api/v1/accounts/{account.pk}/limits/",
            {
                "limits": {TOKENS: {"warning": None, "blocked": 500}},
                "recipients": RECIPIENTS,
            },
            format="json",
        )
        # then
        assert response.status_code == 200
        assert restored(account) == [("raised", 100, 500, 120, "blocked", EVERY_BLOCKED)]
        assert sorted(m.to[0] for m in restored_mail()) == [
            "direction@example.fr",
            "ops@example.com",
        ]
        # and raising it again changes nothing more: the blocked notification is answered
        limits_patch(account=account, data={"limits": {TOKENS: {"blocked": 900}}})
        thresholds_evaluate()
        assert len(restored(account)) == 1
        assert len(restored_mail()) == 2


def test_the_restored_mail_says_what_changed_and_what_is_left_in_each_language():
    with at("2027-01-13 10:00") as now:
        account = monthly_account(blocked=100)
        record(account, "a", 120, now)
        limits_patch(account=account, data={"limits": {TOKENS: {"blocked": 500}}})
    by_address = {m.to[0]: m for m in restored_mail()}
    english, french = by_address["ops@example.com"], by_address["direction@example.fr"]
    notice = Notification.objects.get(level="restored")
    # subject, text and HTML in English
    assert english.subject == "Restored: Acme can process Text tokens again"
    assert english.body == (
        "The account Acme (acme-7) is no longer blocked for Text tokens: processing is"
        " accepted again.\n\n"
        "What changed: The blocked threshold was raised to 500 tokens.\n\n"
        "Blocked in: January 2027\n"
        "Blocked threshold reached: 100 tokens\n"
        "Blocked threshold now: 500 tokens\n"
        "Current usage: 120 tokens\n"
        "Remaining: 380 tokens\n\n"
        "What happens next: processing of this metric is accepted up to the remaining"
        " capacity; it is refused again once the blocked threshold is reached.\n\n"
        "This message was sent by the usage limits back-office.\n"
    )
    html, mimetype = english.alternatives[0]
    assert mimetype == "text/html"
    assert '<html lang="en">' in html
    assert "<strong>Acme</strong> (acme-7) is no longer blocked for Text tokens" in html
    assert "<td>380 tokens</td>" in html
    # and in French
    assert french.subject == "Rétabli : Acme peut de nouveau traiter « Jetons texte »"
    assert "Ce qui a changé : Le seuil de blocage a été relevé à 500 jetons." in french.body
    assert "Bloqué en : janvier 2027" in french.body
    assert "Restant : 380 jetons" in french.body
    html, _mimetype = french.alternatives[0]
    assert '<html lang="fr">' in html
    assert "<td>380 jetons</td>" in html
    # headers: the line's, level restored
    assert english.extra_headers == {
        "X-Usage-Account": str(account.pk),
        "X-Usage-Account-External-Id": "acme-7",
        "X-Usage-Metric": TOKENS,
        "X-Usage-Level": "restored",
        "X-Usage-Period": "2027-01",
        "X-Usage-Period-Kind": "month",
        "X-Usage-Threshold": "100",
        "X-Usage-Used": "120",
    }
    assert english.tags == ["usage-restored"]
    assert english.metadata["restores"] == str(notice.restores_id)
    # the ledger row in words names the blocked threshold it answers as such
    assert str(notice) == "Text tokens, restored after blocked at 100 tokens, January 2027"
    with translation.override("fr"):
        assert str(notice) == ("Jetons texte, rétabli après blocage à 100 jetons, janvier 2027")


def test_clearing_the_blocked_threshold_restores_with_no_cap_left():
    with at("2027-01-13 10:00") as now:
        account = monthly_account(blocked=100)
        record(account, "a", 100, now)  # an exact hit blocks
        limits_patch(account=account, data={"limits": {TOKENS: {"blocked": None}}})
    assert restored(account) == [("cleared", 100, None, 100, "blocked", EVERY_BLOCKED)]
    english = next(m for m in restored_mail() if m.to == ["ops@example.com"])
    assert "What changed: The blocked threshold was removed: this limit line has no cap any" in (
        english.body
    )
    assert "Blocked threshold now: none\n" in english.body
    assert "Remaining: no cap on this line\n" in english.body


def test_removing_a_blocked_line_with_set_limits_restores_it():
    with at("2027-01-13 10:00") as now:
        account = line_account(period="week", blocked=50, labels={"model": "large"})
        record(account, "a", 60, now, {"model": "large"})
        assert Notification.objects.filter(level="blocked").count() == 1
        call_command(
            "set_limits",
            str(account.pk),
            "--metric",
            TOKENS,
            "--period",
            "week",
            "--label",
            "model=large",
            "--clear",
            stdout=open("/dev/null", "w"),  # noqa: SIM115
        )
    assert restored(account) == [("removed", 50, None, 0, "blocked", EVERY_BLOCKED)]
    french = next(m for m in restored_mail() if m.to == ["direction@example.fr"])
    assert french.subject == (
        "Rétabli : Acme peut de nouveau traiter « Jetons texte »"
        " (semaine du 11 janvier 2027, Modèle : large)"
    )
    assert "Ce qui a changé : La ligne de limite a été supprimée." in french.body
    assert french.extra_headers["X-Usage-Labels"] == "model=large"
    assert french.extra_headers["X-Usage-Period-Kind"] == "week"


def test_an_extension_restores_a_blocked_line():
    with at("2027-01-13 10:00") as now:
        account = line_account(period="day", blocked=50)
        record(account, "a", 50, now)
        line = account.scoped_limits.get()
        extensions_grant(
            account=account,
            rows=[{"scoped_limit_id": line.pk, "amount": 30, "reason": "Launch"}],
            actor=None,
        )
    assert restored(account) == [("extended", 50, 80, 50, "blocked", EVERY_BLOCKED)]
    english = next(m for m in restored_mail() if m.to == ["ops@example.com"])
    assert (
        "What changed: An extension was granted for the current period: the blocked"
        " threshold is now 80 tokens." in english.body
    )
    assert "Remaining: 30 tokens" in english.body


def test_a_raise_that_leaves_the_line_blocked_restores_nothing_until_it_is_lifted():
    with at("2027-01-13 10:00") as now:
        account = monthly_account(blocked=100)
        record(account, "a", 150, now)
        limits_patch(account=account, data={"limits": {TOKENS: {"blocked": 120}}})
        # still blocked: a new blocked notification, no restored one
        assert restored(account) == []
        assert sorted(
            Notification.objects.filter(level="blocked").values_list("threshold", flat=True)
        ) == [100, 120]
        limits_patch(account=account, data={"limits": {TOKENS: {"blocked": 200}}})
    # one notice, answering the latest blocked notification
    assert restored(account) == [("raised", 120, 200, 150, "blocked", EVERY_BLOCKED)]
    assert Notification.objects.get(level="restored").restores.threshold == 120


def test_blocked_again_at_the_same_threshold_restores_once_per_blocked_notification():
    with at("2027-01-13 10:00") as now:
        account = monthly_account(blocked=100)
        record(account, "a", 150, now)
        limits_patch(account=account, data={"limits": {TOKENS: {"blocked": 200}}})
        limits_patch(account=account, data={"limits": {TOKENS: {"blocked": 100}}})
        limits_patch(account=account, data={"limits": {TOKENS: {"blocked": 300}}})
        thresholds_evaluate()
    # blocked at 100 once (the ledger keeps a crossing once), answered once
    assert Notification.objects.filter(level="blocked").count() == 1
    assert [r[:3] for r in restored(account)] == [("raised", 100, 200)]


def test_a_blocked_notification_of_an_earlier_period_is_not_answered_by_a_change():
    with at("2027-01-13 10:00") as now:
        account = monthly_account(blocked=100)
        record(account, "a", 150, now)
    # two months later (the previous month was never blocked), the limit is raised
    with at("2027-03-10 10:00"):
        thresholds_evaluate()
        limits_patch(account=account, data={"limits": {TOKENS: {"blocked": 500}}})
        thresholds_evaluate()
    assert restored(account) == []


def test_a_weekly_line_blocked_two_weeks_ago_is_not_answered_by_a_change():
    with at("2027-01-05 10:00") as now:
        account = line_account(period="week", blocked=50)
        record(account, "a", 70, now)
    # the week after it ended blocked, the sweep did not run; a week later the cap is raised
    with at("2027-01-20 10:00"):
        scoped_limit_set(account=account, metric=TOKENS, period="week", blocked=500)
        thresholds_evaluate()
    assert restored(account) == []


def test_without_blocked_recipients_the_notice_is_recorded_and_e_mails_nobody():
    with at("2027-01-13 10:00") as now:
        account = AccountFactory(timezone="Europe/Paris")
        limits_replace(
            account=account,
            data={"limits": {TOKENS: {"warning": None, "blocked": 100}}, "recipients": {}},
        )
        record(account, "a", 100, now)
        limits_patch(account=account, data={"limits": {TOKENS: {"blocked": 200}}})
    assert [(*r[:3], r[5]) for r in restored(account)] == [("raised", 100, 200, [])]
    assert restored_mail() == []


def test_a_test_notification_is_never_answered():
    with at("2027-01-13 10:00"):
        account = monthly_account(blocked=100)
        call_command(
            "send_test_notification",
            str(account.pk),
            "--level",
            "blocked",
            "--language",
            "en",
            "--to",
            "me@example.com",
            stdout=open("/dev/null", "w"),  # noqa: SIM115
        )
        limits_patch(account=account, data={"limits": {TOKENS: {"blocked": 500}}})
        thresholds_evaluate()
    assert restored(account) == []


# --- A new period (SPEC 12.2: lines of a day or longer) ---


@pytest.mark.parametrize(
    ("period", "blocked_at", "next_period", "code"),
    [
        ("month", "2027-01-31 23:00", "2027-02-01 00:01", "2027-01"),
        ("week", "2027-01-17 23:00", "2027-01-18 00:01", "2027-01-11T00:00:00+01:00"),
        ("day", "2027-03-27 23:00", "2027-03-28 00:01", "2027-03-27T00:00:00+01:00"),
    ],
)
def test_a_line_that_ended_its_period_blocked_is_restored_when_the_next_begins(
    period, blocked_at, next_period, code
):
    labels = {"model": "large"} if period == "month" else {}
    with at(blocked_at) as now:
        account = line_account(period=period, blocked=50, labels=labels)
        record(account, "a", 70, now, labels)
    # the sweep of the last minute of the period sees the line still blocked
    with at(blocked_at.replace("23:00", "23:59")):
        assert thresholds_evaluate() == []
    # when: the sweep runs in the next period
    with at(next_period):
        created = thresholds_evaluate()
        # then: one notice, for the new period, with the line's whole cap left
        assert restored(account) == [("new_period", 50, 50, 0, "blocked", EVERY_BLOCKED)]
        assert created == [Notification.objects.get(level="restored").pk]
        # and the next sweeps send nothing more
        assert thresholds_evaluate() == []
    english = next(m for m in restored_mail() if m.to == ["ops@example.com"])
    assert english.extra_headers["X-Usage-Period"] == code
    assert english.extra_headers["X-Usage-Period-Kind"] == period
    assert "and a new period has started." in english.body
    assert "Remaining: 50 tokens" in english.body


def test_the_whole_metric_month_is_restored_when_the_next_month_begins():
    with at("2027-01-31 22:00") as now:
        account = monthly_account(blocked=100)
        record(account, "a", 100, now)
    with at("2027-02-01 00:00"):
        out = io.StringIO()
        call_command("evaluate_thresholds", stdout=out)
    assert out.getvalue() == "acme-7  text_tokens  restored  100\n1 notification(s) created.\n"
    assert restored(account) == [("new_period", 100, 100, 0, "blocked", EVERY_BLOCKED)]
    english = next(m for m in restored_mail() if m.to == ["ops@example.com"])
    assert "What changed: The period January 2027 has ended and a new period has started." in (
        english.body
    )


def test_a_line_blocked_again_at_the_start_of_the_next_period_is_not_restored():
    with at("2027-01-31 22:00") as now:
        account = monthly_account(blocked=0)  # a cap of nothing: blocked from the start
        record(account, "a", 1, now)
    with at("2027-02-01 00:01"):
        thresholds_evaluate()
    assert restored(account) == []
    assert Notification.objects.filter(level="blocked").count() == 2


@pytest.mark.parametrize("period", ["hour", "minute"])
def test_hour_and_minute_lines_are_not_restored_by_a_new_period(period):
    with at("2027-01-13 10:59") as now:
        account = line_account(period=period, blocked=50)
        record(account, "a", 70, now)
    with at("2027-01-13 11:00"):
        assert thresholds_evaluate() == []
    assert restored(account) == []


def test_an_hour_line_is_restored_in_its_own_hour_by_a_raise():
    with at("2027-01-13 10:30") as now:
        account = line_account(period="hour", blocked=50)
        record(account, "a", 70, now)
        scoped_limit_set(account=account, metric=TOKENS, period="hour", blocked=100)
    assert restored(account) == [("raised", 50, 100, 70, "blocked", EVERY_BLOCKED)]


def test_a_rolling_window_that_moves_below_its_cap_at_midnight_is_restored():
    # given: a 2-day rolling line of 50, blocked by usage on the 12th
    with at("2027-01-12 10:00") as now:
        account = line_account(period="rolling", window_days=2, blocked=50)
        record(account, "a", 60, now)
    # on the 13th the window (12th and 13th) still holds it: still blocked
    with at("2027-01-13 00:01"):
        assert thresholds_evaluate() == []
    # when: on the 14th the window (13th and 14th) holds nothing
    with at("2027-01-14 00:01"):
        thresholds_evaluate()
        thresholds_evaluate()
    # then
    assert restored(account) == [("new_period", 50, 50, 0, "blocked", EVERY_BLOCKED)]
    english = next(m for m in restored_mail() if m.to == ["ops@example.com"])
    assert english.extra_headers["X-Usage-Period-Kind"] == "rolling"


# --- Webhooks ---


def test_each_endpoint_subscribed_to_restored_gets_one_delivery():
    with at("2027-01-13 10:00") as now:
        account = monthly_account(blocked=100)
        wants = WebhookEndpoint.objects.create(
            account=account,
            url="http://127.0.0.1:9/a",
            levels=["restored"],
            secret="whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        )
        both = WebhookEndpoint.objects.create(
            account=account,
            url="http://127.0.0.1:9/b",
            levels=["blocked", "restored"],
            secret="whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        )
        WebhookEndpoint.objects.create(
            account=account,
            url="http://127.0.0.1:9/c",
            levels=["blocked"],
            secret="whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        )
        record(account, "a", 120, now)
        limits_patch(account=account, data={"limits": {TOKENS: {"blocked": 500}}})
        limits_patch(account=account, data={"limits": {TOKENS: {"blocked": 600}}})
    notice = Notification.objects.get(level="restored")
    assert sorted(
        WebhookDelivery.objects.filter(notification=notice).values_list("endpoint_id", flat=True)
    ) == sorted([wants.pk, both.pk])
    payload = webhook_payload(notice)
    assert payload["type"] == "usage.restored"
    assert payload["data"] | {"notification_id": None} == {
        "notification_id": None,
        "account": {"id": str(account.pk), "external_id": "acme-7", "name": "Acme"},
        "metric": TOKENS,
        "level": "restored",
        "period_kind": "month",
        "period": "2027-01",
        "labels": {},
        "threshold": 100,
        "used": 120,
        "restores": notice.restores_id,
        "blocked_threshold": 500,
        "remaining": 380,
    }


def test_deliveries_go_to_those_the_blocked_notice_reached():
    with at("2027-01-13 10:00") as now:
        account = monthly_account(blocked=100)
        record(account, "a", 120, now)
        # the blocked list changes, then the line is lifted
        limits_patch(
            account=account,
            data={
                "limits": {TOKENS: {"blocked": 500}},
                "recipients": {"blocked": [{"email": "new@example.com", "language": "en"}]},
            },
        )
    notice = Notification.objects.get(level="restored")
    assert sorted(
        Delivery.objects.filter(notification=notice).values_list("email", "language")
    ) == (EVERY_BLOCKED)


# --- Admin ---


def test_the_admin_lists_a_restored_notice_with_its_label_and_a_link_to_what_it_answers(
    admin_client,
):
    with at("2027-01-13 10:00") as now:
        account = monthly_account(blocked=100)
        record(account, "a", 120, now)
        limits_patch(account=account, data={"limits": {TOKENS: {"blocked": 500}}})
    notice = Notification.objects.get(level="restored")
    blocked_url = f"/admin/notifications/notification/{notice.restores_id}/change/"
    for page in (
        "/admin/notifications/notification/",
        f"/admin/notifications/notification/{notice.pk}/change/",
        f"/admin/accounts/account/{account.pk}/change/",
    ):
        response = admin_client.get(page)
        assert response.status_code == 200
        html = response.content.decode()
        assert '<span class="notification-level notification-level-restored">Restored</span>' in (
            html
        )
        if "change" not in page or "account" in page:
            assert (
                '<span class="notification-level notification-level-blocked">Blocked</span>' in html
            )
        assert (
            f'<a class="notification-restores" href="{blocked_url}">'
            f"answers blocked notification #{notice.restores_id}</a>" in html
        )
        assert "Blocked threshold raised" in html
        if "change" not in page:
            assert "Capacity restored" in html
    # and in French
    response = admin_client.get(
        "/admin/notifications/notification/?level=restored", HTTP_ACCEPT_LANGUAGE="fr"
    )
    html = response.content.decode()
    assert "notification-level-restored" in html
    assert "notification-level-blocked" not in html
    assert f"répond à la notification de blocage n° {notice.restores_id}" in html


def test_raising_the_threshold_on_the_admin_account_page_restores_once(client, admin_user):
    with at("2027-01-13 10:00") as now:
        client.force_login(admin_user)  # a session of that day
        admin_client = client
        account = monthly_account(blocked=100)
        record(account, "a", 120, now)
        # when: the page is posted back with a higher blocked threshold, twice
        for blocked in (500, 600):
            response = post_account_page(admin_client, account, limit_text_tokens_blocked=blocked)
            assert response.status_code == 302, page_errors(response)
    assert restored(account) == [("raised", 100, 500, 120, "blocked", EVERY_BLOCKED)]
