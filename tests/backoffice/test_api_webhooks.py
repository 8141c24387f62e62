"""The webhook endpoints of an account through the API (SPEC 12.4): list, replace, refuse."""

from __future__ import annotations

import pytest

from notifications import hooks
from notifications.models import WebhookEndpoint
from tests.factories import AccountFactory

pytestmark = pytest.mark.django_db

ALL_LEVELS = ["warning", "blocked", "restored", "forecast"]
PUBLIC = "93.184.215.14"


@pytest.fixture(autouse=True)
def _resolve_every_name_to_a_public_address(monkeypatch) -> None:
    """No test calls out: ``crm.example.com`` and friends resolve to a public address;
    ``*.internal`` to a private one, ``*.invalid`` to nothing."""

    def resolve(host: str, port: int) -> list[str]:
        if host.endswith(".invalid"):
            raise OSError("Name or service not known")
        if host.endswith(".internal"):
            return ["10.0.0.5"]
        return [PUBLIC]

    monkeypatch.setattr(hooks, "_resolve", resolve)


def url_of(account) -> str:
    return f"/api/v1/accounts/{account.pk}/webhooks/"


def stored(account) -> list[tuple]:
    return list(
        WebhookEndpoint.objects.filter(account=account)
        .order_by("created_at", "pk")
        .values_list("url", "levels", "is_active")
    )


def test_an_account_without_endpoints_lists_none(manager_client):
    account = AccountFactory()

    response = manager_client.get(url_of(account))

    assert (response.status_code, response.json()) == (200, [])


def test_a_created_endpoint_shows_its_secret_once(manager_client):
    # given
    account = AccountFactory()
    body = [{"url": "https://crm.example.com/hooks", "levels": ALL_LEVELS, "is_active": True}]
    # when
    created = manager_client.put(url_of(account), body, format="json")
    listed = manager_client.get(url_of(account))
    # then
    endpoint = WebhookEndpoint.objects.get()
    assert created.status_code == 200
    assert created.json() == [
        {
            "id": endpoint.pk,
            "url": "https://crm.example.com/hooks",
            "levels": ALL_LEVELS,
            "is_active": True,
            "secret": endpoint.secret,
        }
    ]
    assert endpoint.secret.startswith("whsec_")
    assert listed.json() == [
        {
            "id": endpoint.pk,
            "url": "https://crm.example.com/hooks",
            "levels": ALL_LEVELS,
            "is_active": True,
        }
    ]


def test_put_replaces_the_list_keeping_the_id_and_secret_of_an_unchanged_url(manager_client):
    # given
    account = AccountFactory()
    first = manager_client.put(
        url_of(account),
        [
            {"url": "https://crm.example.com/hooks", "levels": ["warning"]},
            {"url": "https://old.example.com/hooks", "levels": ["blocked"]},
        ],
        format="json",
    ).json()
    kept = WebhookEndpoint.objects.get(url="https://crm.example.com/hooks")
    # when
    response = manager_client.put(
        url_of(account),
        [
            {"url": "https://crm.example.com/hooks", "levels": ["blocked"], "is_active": False},
            {"url": "https://new.example.com/hooks", "levels": ["restored"]},
        ],
        format="json",
    )
    # then
    new = WebhookEndpoint.objects.get(url="https://new.example.com/hooks")
    assert response.status_code == 200
    assert response.json() == [
        {
            "id": first[0]["id"],
            "url": "https://crm.example.com/hooks",
            "levels": ["blocked"],
            "is_active": False,
        },
        {
            "id": new.pk,
            "url": "https://new.example.com/hooks",
            "levels": ["restored"],
            "is_active": True,
            "secret": new.secret,
        },
    ]
    assert WebhookEndpoint.objects.get(pk=kept.pk).secret == kept.secret == first[0]["secret"]
    assert stored(account) == [
        ("https://crm.example.com/hooks", ["blocked"], False),
        ("https://new.example.com/hooks", ["restored"], True),
    ]


def test_an_empty_list_removes_every_endpoint(manager_client):
    account = AccountFactory()
    WebhookEndpoint.objects.create(account=account, url="https://a.example.com/", secret="x")

    response = manager_client.put(url_of(account), [], format="json")

    assert (response.status_code, response.json(), stored(account)) == (200, [], [])


def test_more_than_ten_endpoints_are_refused(manager_client):
    account = AccountFactory()
    body = [{"url": f"https://crm.example.com/{i}", "levels": ["warning"]} for i in range(11)]

    response = manager_client.put(url_of(account), body, format="json")

    assert response.status_code == 400
    assert response.json() == {"non_field_errors": ["At most 10 webhook endpoints per account."]}
    assert stored(account) == []


def test_each_refused_endpoint_is_named_by_index_and_field_and_nothing_is_saved(manager_client):
    # given
    account = AccountFactory()
    WebhookEndpoint.objects.create(account=account, url="https://kept.example.com/", secret="x")
    body = [
        {"url": "https://crm.example.com/hooks", "levels": ["warning"]},
        {"url": "https://vault.internal/hooks", "levels": ["warning"]},
        {"url": "http://crm.example.com/hooks", "levels": ["paused"]},
        {"url": "https://gone.invalid/", "levels": []},
        {"url": "https://crm.example.com/hooks", "levels": ["blocked"]},
        {"url": 7, "levels": "warning", "is_active": "yes", "secret": "whsec_mine"},
        "https://crm.example.com/",
    ]
    # when
    response = manager_client.put(url_of(account), body, format="json")
    # then
    assert response.status_code == 400
    assert response.json() == {
        "5": {
            "secret": ["Unknown field."],
            "url": ["Expected the URL as a string."],
            "levels": ["Expected a list of levels."],
            "is_active": ["Expected true or false."],
        },
        "6": {"non_field_errors": ["Expected an object with “url”, “levels” and “is_active”."]},
    }
    assert stored(account) == [("https://kept.example.com/", [], True)]
    # when the types are right, the rules
    response = manager_client.put(url_of(account), body[:5], format="json")
    assert response.status_code == 400
    assert response.json() == {
        "1": {
            "url": [
                "vault.internal resolves to 10.0.0.5, which is not a public address: only "
                "public addresses are accepted."
            ]
        },
        "2": {
            "url": ["Only https:// URLs are accepted."],
            "levels": ["Expected levels among: warning, blocked, restored, forecast."],
        },
        "3": {
            "url": ["The host name gone.invalid does not resolve."],
            "levels": ["Choose at least one level."],
        },
        "4": {"url": ["This URL is listed twice."]},
    }
    assert stored(account) == [("https://kept.example.com/", [], True)]


def test_a_body_that_is_not_a_list_is_refused(manager_client):
    account = AccountFactory()

    response = manager_client.put(
        url_of(account), {"url": "https://crm.example.com/", "levels": ["warning"]}, format="json"
    )

    assert (response.status_code, response.json()) == (
        400,
        {"non_field_errors": ["Expected a list of endpoints."]},
    )


def test_the_messages_are_in_the_callers_language(manager_client):
    account = AccountFactory()

    response = manager_client.put(
        url_of(account),
        [{"url": "http://crm.example.com/", "levels": []}],
        format="json",
        HTTP_ACCEPT_LANGUAGE="fr",
    )

    assert response.status_code == 400
    assert response.json() == {
        "0": {
            "url": ["Seules les URL https:// sont acceptées."],
            "levels": ["Choisissez au moins un niveau."],
        }
    }


def test_a_usage_service_may_not_read_or_change_endpoints(service_client):
    account = AccountFactory()

    assert service_client.get(url_of(account)).status_code == 403
    assert service_client.put(url_of(account), [], format="json").status_code == 403


def test_a_url_longer_than_2000_characters_is_refused(manager_client):
    account = AccountFactory()
    url = "https://crm.example.com/" + "a" * 1977

    response = manager_client.put(
        url_of(account), [{"url": url, "levels": ["warning"]}], format="json"
    )

    assert (response.status_code, response.json()) == (
        400,
        {"0": {"url": ["At most 2000 characters."]}},
    )
    assert stored(account) == []
