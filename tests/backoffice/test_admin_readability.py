"""What a person reads in the admin, in English and in French: labels rather than codes,
units, local times with the zone named, the account's real history, warnings about
thresholds that would tell nobody, and only the tables their work needs."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime

import pytest
from django.contrib.admin.models import LogEntry
from django.urls import reverse
from django.utils.translation import override

from accounts.models import Plan
from backoffice.services import limits_replace
from tests.accounts.test_admin import change_url, manager_admin_client, post_account_page
from tests.factories import AccountFactory, LimitFactory, RecipientFactory, UserFactory
from tests.usage.factories import event_record
from usage.models import CounterRepair, EventPurge, Extension, UsageCounter, UsageEvent

__all__ = ["manager_admin_client"]  # a fixture, used by name

pytestmark = pytest.mark.django_db

NBSP = "\xa0"
# 07:05 UTC on the 1st of a past month: 08:05 in Paris, "1er" in French.
OCCURRED = datetime(2026, 11, 1, 7, 5, tzinfo=UTC)


# --- Titles: labels, not codes ---


@pytest.mark.parametrize(
    ("language", "expected"),
    [
        (
            "en",
            [
                "pm@example.com (Blocked, French)",
                "Text tokens",
                "Audio transcribed: +1,800 seconds (30 min) (November 2026)",
                "Audio transcribed, Nov. 1, 2026: 2,160 seconds (36 min) (Model: large)",
                "Audio transcribed, Nov. 1, 2026: 1 second → 2.5 seconds",
                "Events before Nov. 1, 2026: 42 deleted",
            ],
        ),
        (
            "fr",
            [
                "pm@example.com (Bloqué, Français)",
                "Jetons texte",
                "Audio transcrit : +1\xa0800 secondes (30 min) (novembre 2026)",
                "Audio transcrit, 1er novembre 2026 : 2\xa0160 secondes (36 min) (Modèle : large)",
                "Audio transcrit, 1er novembre 2026 : 1 seconde → 2,5 secondes",
                "Événements antérieurs au 1er novembre 2026 : 42 supprimés",
            ],
        ),
    ],
)
def test_every_row_is_named_with_labels_units_and_dates(language, expected):
    # given
    account = AccountFactory()
    seconds = "audio_transcribed_seconds"
    day = date(2026, 11, 1)
    rows = [
        RecipientFactory(account=account, level="blocked", email="pm@example.com", language="fr"),
        LimitFactory(account=account),
        Extension(account=account, metric=seconds, period=day, amount=1800, reason="x"),
        UsageCounter(
            account=account,
            metric=seconds,
            labels="model=large",
            day=day,
            quantity_milli=2_160_000,
        ),
        CounterRepair(
            account=account, metric=seconds, day=day, found_milli=1000, expected_milli=2500
        ),
        EventPurge(before=day, deleted=42),
    ]
    # when
    with override(language):
        names = [str(row) for row in rows]
    # then
    assert names == expected


@pytest.mark.parametrize(
    ("language", "title", "occurred", "quantity"),
    [
        (
            "en",
            "Select usage event to view",
            "Nov. 1, 2026, 8:05 a.m. (Europe/Paris)",
            "2,160 seconds (36 min)",
        ),
        (
            "fr",
            "Sélectionnez l’objet événement de consommation à afficher",
            "1er novembre 2026 08:05 (Europe/Paris)",
            f"2{NBSP}160 secondes (36 min)",
        ),
    ],
)
def test_usage_events_show_their_time_in_the_account_zone_with_units(
    admin_client, language, title, occurred, quantity
):
    # given
    account = AccountFactory(timezone="Europe/Paris")
    event_record(account, OCCURRED, "2160", "audio_transcribed_seconds", labels={"model": "large"})
    event = UsageEvent.objects.get()
    # when
    listed = admin_client.get(
        reverse("admin:usage_usageevent_changelist"), HTTP_ACCEPT_LANGUAGE=language
    )
    page = admin_client.get(
        reverse("admin:usage_usageevent_change", args=[event.pk]), HTTP_ACCEPT_LANGUAGE=language
    )
    counters = admin_client.get(
        reverse("admin:usage_usagecounter_changelist"), HTTP_ACCEPT_LANGUAGE=language
    )
    # then
    assert listed.status_code == page.status_code == counters.status_code == 200
    assert title in listed.text
    assert f'<td class="field-occurred_at_display">{occurred}</td>' in listed.text
    assert f'<td class="field-quantity_display">{quantity}</td>' in listed.text
    assert f'<div class="readonly">{occurred}</div>' in page.text
    assert "(Europe/Paris)</td>" in counters.text  # the counters' update times
    assert f'<td class="field-quantity_display">{quantity}</td>' in counters.text
    assert ">model=large<" not in listed.text + counters.text


# --- The account page: a blocked threshold that would tell nobody ---


@pytest.mark.parametrize(
    ("language", "warning"),
    [
        (
            "en",
            "A blocked threshold is set (Text tokens) but there is no blocked recipient: "
            "when it is reached, processing is refused and nobody is told.",
        ),
        (
            "fr",
            "Un seuil de blocage est défini (Jetons texte) mais il n’y a aucun destinataire "
            "de blocage : une fois atteint, le traitement est refusé et personne n’est prévenu.",
        ),
    ],
)
def test_account_page_warns_of_a_blocked_threshold_without_blocked_recipient(
    admin_client, language, warning
):
    # given
    unheard = AccountFactory()
    LimitFactory(account=unheard, warning=None, blocked=1000)
    heard = AccountFactory()
    LimitFactory(account=heard, warning=None, blocked=1000)
    RecipientFactory(account=heard, level="blocked")
    # when
    warned = admin_client.get(change_url(unheard), HTTP_ACCEPT_LANGUAGE=language)
    quiet = admin_client.get(change_url(heard), HTTP_ACCEPT_LANGUAGE=language)
    # then
    assert warned.status_code == quiet.status_code == 200
    assert warning in " ".join(warned.text.split())
    assert 'id="blocked-without-recipient"' in warned.text
    assert 'id="blocked-without-recipient"' not in quiet.text


def test_the_warning_names_every_line_and_goes_once_a_blocked_recipient_is_added(admin_client):
    # given: a monthly and a daily blocked threshold, warning recipients only
    account = AccountFactory()
    limits_replace(
        account=account,
        data={
            "limits": {"text_tokens": {"warning": 10, "blocked": 100}},
            "recipients": {"warning": [{"email": "pm@example.com", "language": "en"}]},
            "scoped_limits": [
                {
                    "metric": "text_tokens",
                    "period": "day",
                    "labels": {"model": "large"},
                    "blocked": 5,
                }
            ],
        },
    )
    # when
    before = admin_client.get(change_url(account))
    post_account_page(admin_client, account, recipients=[("blocked", "ops@example.com", "en")])
    after = admin_client.get(change_url(account))
    # then
    text = " ".join(before.text.split())
    assert "Blocked thresholds are set (Text tokens, Text tokens, Day (Model: large))" in text
    assert 'id="blocked-without-recipient"' not in after.text


# --- The History page: the real history, no revert of limits ---


@pytest.mark.parametrize(
    ("language", "heading", "who_note"),
    [
        ("en", "Change history of the account, its limits and recipients", "“—” as the user"),
        (
            "fr",
            "Historique des modifications du compte, de ses limites et de ses destinataires",
            "« — » comme utilisateur",
        ),
    ],
)
def test_history_page_shows_who_changed_limits_and_the_account(
    admin_client, manager_admin_client, language, heading, who_note
):
    # given: the CRM sync renames the account (no person), a manager sets limits
    account = AccountFactory(name="Acme", plan=Plan.ENTERPRISE)
    account.name = "Acme Corporation"
    account.save()
    post_account_page(
        manager_admin_client,
        account,
        limit_text_tokens_warning=800,
        recipients=[("warning", "pm@example.com", "en")],
    )
    url = reverse("admin:accounts_account_history", args=[account.pk])
    # when
    as_manager = manager_admin_client.get(url, HTTP_ACCEPT_LANGUAGE=language)
    as_superuser = admin_client.get(url, HTTP_ACCEPT_LANGUAGE=language)
    # then
    assert as_manager.status_code == as_superuser.status_code == 200
    page = as_manager.text
    assert heading in page
    assert who_note in page
    changes = [
        (c.who, c.what, c.old, c.new) for c in as_manager.context["limits_history"]["changes"]
    ]
    with override(language):
        expected_tokens = "800 tokens" if language == "en" else "800 jetons"
    assert ("manager", changes[0][1], changes[0][2], expected_tokens) in changes or any(
        who == "manager" and new == expected_tokens for who, _what, _old, new in changes
    )
    assert any(who == "—" and new == "Acme Corporation" for who, _w, _o, new in changes)
    # simple-history's list and its "None" are gone; nothing invites a manager to revert
    for text in ("Changed by", "Modifié par", ">None<", ">Aucun<", "Choose a date", "revert"):
        assert text not in page, text
    assert "simple_history" not in page and "/history/" + "1/" not in page
    # a superuser may open the account's past versions (its own fields only)
    version = account.history.earliest("history_date")
    version_url = reverse(
        "admin:accounts_account_simple_history", args=[account.pk, version.history_id]
    )
    assert version_url in as_superuser.text
    assert version_url not in page


def test_limits_have_no_version_to_revert_to(admin_client):
    # given
    account = AccountFactory()
    LimitFactory(account=account, warning=None, blocked=1000)
    # when
    page = admin_client.get(reverse("admin:accounts_account_history", args=[account.pk]))
    # then: only the account's own records link to a version
    versions = [c.version_id for c in page.context["limits_history"]["changes"]]
    limit_rows = [c for c in page.context["limits_history"]["changes"] if "threshold" in c.what]
    assert limit_rows and all(c.version_id is None for c in limit_rows)
    assert any(versions)
    assert not LogEntry.objects.exists()


# --- Ops tables: for superusers and ops, not account managers ---

OPS_TABLES = {
    "admin:usage_counterrepair_changelist": ("Counter repairs", "Réparations de compteurs"),
    "admin:usage_eventpurge_changelist": ("Event purges", "Purges d’événements"),
    "admin:knox_authtoken_changelist": ("API tokens", "Jetons d’API"),
    "admin:notifications_earlytrackingevent_changelist": (
        "Early tracking events",
        "Événements de suivi arrivés en avance",
    ),
}


@pytest.mark.parametrize("language", ["en", "fr"])
def test_ops_tables_are_hidden_from_account_managers(admin_client, manager_admin_client, language):
    # when
    manager_home = manager_admin_client.get(reverse("admin:index"), HTTP_ACCEPT_LANGUAGE=language)
    superuser_home = admin_client.get(reverse("admin:index"), HTTP_ACCEPT_LANGUAGE=language)
    # then
    assert manager_home.status_code == superuser_home.status_code == 200
    index = 0 if language == "en" else 1
    for url_name, names in OPS_TABLES.items():
        url = reverse(url_name)
        assert url not in manager_home.text, url_name
        assert manager_admin_client.get(url).status_code == 403, url_name
        assert url in superuser_home.text, url_name
        assert names[index] in superuser_home.text, url_name
        assert admin_client.get(url, HTTP_ACCEPT_LANGUAGE=language).status_code == 200
    # what managers work with stays
    for url_name in (
        "admin:accounts_account_changelist",
        "admin:usage_usageevent_changelist",
        "admin:notifications_delivery_changelist",
    ):
        assert reverse(url_name) in manager_home.text
    # The token app shows by its own names only (tags and attributes left out: the page's
    # random CSRF token may spell anything).
    shown = re.sub(r"<[^>]*>", " ", superuser_home.text)
    assert "Auth tokens" not in shown
    assert "Knox" not in shown


@pytest.mark.parametrize(
    ("language", "columns"),
    [
        ("en", ["Digest", "Created at", "Expires at", "never"]),
        ("fr", ["Empreinte", "Date de création", "Expire le", "jamais"]),
    ],
)
def test_token_list_speaks_the_admin_language(admin_client, language, columns):
    from knox.models import AuthToken

    AuthToken.objects.create(user=UserFactory(username="svc"), expiry=None)
    response = admin_client.get(
        reverse("admin:knox_authtoken_changelist"), HTTP_ACCEPT_LANGUAGE=language
    )
    assert response.status_code == 200
    for text in columns:
        assert text in response.text, text
