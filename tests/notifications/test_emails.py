"""The threshold e-mail, in each language: subject, text and HTML parts, headers."""

from __future__ import annotations

from datetime import date, datetime

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
