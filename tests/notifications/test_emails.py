"""The threshold e-mail, in each language: subject, text and HTML parts, headers."""

from __future__ import annotations

from datetime import date, datetime
from zoneinfo import ZoneInfo

import pytest

from notifications.emails import threshold_message
from notifications.models import Delivery, Notification
from tests.factories import AccountFactory

pytestmark = pytest.mark.django_db


def message_for(
    level,
    language,
    metric="text_tokens",
    threshold=1_000_000,
    used_milli=None,
    name="Acme Speech",
    is_test=False,
):
    account = AccountFactory(name=name, external_id="CRM-42")
    notification = Notification.objects.create(
        account=account,
        metric=metric,
        level=level,
        period=date(2026, 11, 1),
        period_start=datetime(2026, 11, 1, tzinfo=account.zone),
        threshold=threshold,
        used_milli=used_milli if used_milli is not None else threshold * 850,
        is_test=is_test,
    )
    delivery = Delivery.objects.create(
        notification=notification, email="pm@example.com", language=language
    )
    return account, notification, threshold_message(notification=notification, delivery=delivery)


def html_of(message):
    [(html, mimetype)] = message.alternatives
    assert mimetype == "text/html"
    return html


def test_warning_in_english():
    account, notification, message = message_for("warning", "en")
    assert message.subject == "Warning: Acme Speech is approaching its Text tokens limit"
    assert message.to == ["pm@example.com"]
    assert message.body.splitlines()[:5] == [
        "The account Acme Speech (CRM-42) has reached its warning threshold for Text tokens.",
        "",
        "Period: November 2026",
        "Threshold: 1,000,000 tokens",
        "Current usage: 850,000 tokens (85% of the threshold)",
    ]
    assert (
        "What happens next: nothing changes yet. Usage is approaching the cap; processing "
        "will be refused once the blocked threshold is reached."
    ) in message.body
    html = html_of(message)
    assert "<strong>Acme Speech</strong> (CRM-42) has reached its warning threshold" in html
    assert "<td>850,000 tokens (85% of the threshold)</td>" in html
    assert '<html lang="en">' in html
    assert message.extra_headers == {
        "X-Usage-Account": str(account.pk),
        "X-Usage-Account-External-Id": "CRM-42",
        "X-Usage-Metric": "text_tokens",
        "X-Usage-Level": "warning",
        "X-Usage-Period": "2026-11",
        "X-Usage-Period-Kind": "month",
        "X-Usage-Threshold": "1000000",
        "X-Usage-Used": "850000",
    }
    assert message.tags == ["usage-warning"]
    assert message.metadata["notification"] == str(notification.pk)
    assert message.metadata["period"] == "2026-11"


def test_blocked_in_french_with_seconds_as_hours_and_minutes():
    _, _, message = message_for(
        "blocked",
        "fr",
        metric="audio_transcribed_seconds",
        threshold=72000,
        used_milli=72_000_500,
    )
    assert message.subject == "Blocage : Acme Speech a atteint sa limite « Audio transcrit »"
    nbsp = "\xa0"  # Django groups French digits with a no-break space
    assert message.body.splitlines()[:5] == [
        "Le compte Acme Speech (CRM-42) a atteint son seuil de blocage pour « Audio transcrit ».",
        "",
        "Période : novembre 2026",
        f"Seuil : 72{nbsp}000 secondes (20 h 0 min)",
        f"Consommation actuelle : 72{nbsp}000,5 secondes (20 h 0 min) (100 % du seuil)",
    ]
    assert (
        "Et maintenant : tout nouveau traitement de cette métrique est refusé jusqu’au début "
        "de la prochaine période ou jusqu’à une modification de la limite."
    ) in message.body
    html = html_of(message)
    assert '<html lang="fr">' in html
    assert "<title>Seuil de blocage atteint</title>" in html
    assert "<strong>Acme Speech</strong> (CRM-42) a atteint son seuil de blocage" in html


def test_warning_in_french():
    _, _, message = message_for("warning", "fr")
    assert message.subject == "Avertissement : Acme Speech approche de sa limite « Jetons texte »"
    assert "a atteint son seuil d’avertissement pour « Jetons texte »." in message.body
    assert "Et maintenant : rien ne change pour l’instant." in message.body
    assert "Seuil d’avertissement atteint" in html_of(message)


def test_blocked_in_english():
    _, _, message = message_for("blocked", "en", threshold=100, used_milli=100_000)
    assert message.subject == "Blocked: Acme Speech reached its Text tokens limit"
    assert "Current usage: 100 tokens (100% of the threshold)" in message.body
    assert "further processing of this metric is refused until the next period" in message.body


def test_account_names_are_escaped_in_html_and_cannot_inject_headers():
    _, _, message = message_for("warning", "en", name="<b>Evil</b> & Co\nBcc: all@example.com")
    assert "\n" not in message.subject
    assert message.subject.startswith("Warning: <b>Evil</b> & Co Bcc: all@example.com is")
    html = html_of(message)
    assert "&lt;b&gt;Evil&lt;/b&gt; &amp; Co" in html
    assert "<b>Evil</b>" not in html
    mime = message.message()
    assert mime["Bcc"] is None
    headers = mime.as_string().split("\n\n", 1)[0]
    assert "\nBcc:" not in headers


def test_a_test_message_says_so():
    _, _, message = message_for("warning", "fr", is_test=True)
    assert message.subject.startswith("[Test] Avertissement : ")
    assert message.body.startswith(
        "Ceci est un message de test : aucun seuil n’a réellement été atteint."
    )


# --- Scoped lines (SPEC 11.5): the period and the labels, in each language ---


def line_message(language, *, level, kind, start, window_days=None, labels_key="", day=None):
    """The message of a notification of a line of ``kind`` whose period starts at ``start``
    (an aware datetime; Paris account), 40,000-token threshold, 85% used."""
    account = AccountFactory(name="Acme Speech", external_id="CRM-42", timezone="Europe/Paris")
    notification = Notification.objects.create(
        account=account,
        metric="text_tokens",
        period_kind=kind,
        window_days=window_days,
        labels_key=labels_key,
        level=level,
        period=day or start.date(),
        period_start=start,
        threshold=40_000,
        used_milli=34_000_000,
    )
    delivery = Delivery.objects.create(
        notification=notification, email="pm@example.com", language=language
    )
    return threshold_message(notification=notification, delivery=delivery)


PARIS = ZoneInfo("Europe/Paris")


def test_a_daily_line_with_labels_in_english():
    message = line_message(
        "en",
        level="warning",
        kind="day",
        start=datetime(2026, 12, 2, tzinfo=PARIS),
        labels_key="model=large;vendor=acme",
    )
    assert message.subject == (
        "Warning: Acme Speech is approaching its Text tokens limit"
        " (day of 2 December 2026, Model: large, Vendor: acme)"
    )
    assert message.body == "\n".join(
        [
            "The account Acme Speech (CRM-42) has reached its warning threshold for Text tokens.",
            "",
            "Limit line: Day, Model: large, Vendor: acme",
            "Period: day of 2 December 2026",
            "Threshold: 40,000 tokens",
            "Current usage: 34,000 tokens (85% of the threshold)",
            "",
            "What happens next: nothing changes yet. Usage is approaching the cap; processing"
            " will be refused once the blocked threshold is reached.",
            "",
            "This message was sent by the usage limits back-office.",
            "",
            "",
        ]
    )
    html = html_of(message)
    assert "<th" in html
    assert ">Limit line</th><td>Day, Model: large, Vendor: acme</td></tr>" in html
    assert ">Period</th><td>day of 2 December 2026</td></tr>" in html
    assert message.extra_headers["X-Usage-Period-Kind"] == "day"
    assert message.extra_headers["X-Usage-Labels"] == "model=large;vendor=acme"
    assert message.extra_headers["X-Usage-Period"] == "2026-12-02T00:00:00+01:00"
    assert message.metadata["labels"] == "model=large;vendor=acme"


def test_a_daily_line_with_labels_in_french():
    message = line_message(
        "fr",
        level="blocked",
        kind="day",
        start=datetime(2026, 12, 2, tzinfo=PARIS),
        labels_key="model=large",
    )
    nbsp = "\xa0"
    assert message.subject == (
        "Blocage : Acme Speech a atteint sa limite « Jetons texte »"
        " (journée du 2 décembre 2026, Modèle : large)"
    )
    assert message.body.splitlines()[:6] == [
        "Le compte Acme Speech (CRM-42) a atteint son seuil de blocage pour « Jetons texte ».",
        "",
        "Ligne de limite : Jour, Modèle : large",
        "Période : journée du 2 décembre 2026",
        f"Seuil : 40{nbsp}000 jetons",
        f"Consommation actuelle : 34{nbsp}000 jetons (85 % du seuil)",
    ]
    html = html_of(message)
    assert ">Ligne de limite</th><td>Jour, Modèle : large</td></tr>" in html
    assert ">Période</th><td>journée du 2 décembre 2026</td></tr>" in html
    assert message.extra_headers["X-Usage-Labels"] == "model=large"


@pytest.mark.parametrize(
    ("language", "subject", "line", "period"),
    [
        (
            "en",
            "Warning: Acme Speech is approaching its Text tokens limit"
            " (the last 7 days, to 28 March 2027)",
            "Limit line: Rolling window of 7 days",
            "Period: the last 7 days, to 28 March 2027",
        ),
        (
            "fr",
            "Avertissement : Acme Speech approche de sa limite « Jetons texte »"
            " (7 jours glissants, jusqu’au 28 mars 2027)",
            "Ligne de limite : Fenêtre glissante de 7 jours",
            "Période : 7 jours glissants, jusqu’au 28 mars 2027",
        ),
    ],
)
def test_a_rolling_line_names_its_window(language, subject, line, period):
    # the day its window reached the threshold: the 23-hour day of the spring change
    message = line_message(
        language,
        level="warning",
        kind="rolling",
        window_days=7,
        start=datetime(2027, 3, 28, tzinfo=PARIS),
    )
    assert message.subject == subject
    assert message.body.splitlines()[2:4] == [line, period]
    assert period.split(" : ")[-1].split(": ")[-1] in html_of(message)
    assert message.extra_headers["X-Usage-Period-Kind"] == "rolling"
    assert message.extra_headers["X-Usage-Period"] == "2027-03-28T00:00:00+01:00"
    assert "X-Usage-Labels" not in message.extra_headers


@pytest.mark.parametrize(
    ("language", "subject", "period"),
    [
        (
            "en",
            "Blocked: Acme Speech reached its Text tokens limit"
            " (31 October 2027, hour starting 02:00)",
            "Period: 31 October 2027, hour starting 02:00",
        ),
        (
            "fr",
            "Blocage : Acme Speech a atteint sa limite « Jetons texte »"
            " (31 octobre 2027, heure commençant à 02:00)",
            "Période : 31 octobre 2027, heure commençant à 02:00",
        ),
    ],
)
def test_an_hour_line_names_its_hour(language, subject, period):
    # the second 02:00 of the autumn change (winter time, +01:00)
    start = datetime(2027, 10, 31, 2, tzinfo=PARIS, fold=1)
    message = line_message(language, level="blocked", kind="hour", start=start)
    assert message.subject == subject
    assert message.body.splitlines()[3] == period
    assert period.split(" : ")[-1].split(": ")[-1] in html_of(message)
    assert message.extra_headers["X-Usage-Period-Kind"] == "hour"
    assert message.extra_headers["X-Usage-Period"] == "2027-10-31T02:00:00+01:00"
