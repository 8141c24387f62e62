"""The accounts endpoints of the API (SPEC section 5), and the schema and docs."""

from __future__ import annotations

import uuid

import pytest

from accounts.metrics import METRICS
from accounts.models import Plan
from tests.factories import AccountFactory

pytestmark = pytest.mark.django_db

LIST_URL = "/api/v1/accounts/"
NOT_AUTHENTICATED = {"detail": "Authentication credentials were not provided."}
NOT_ALLOWED = {"detail": "You do not have permission to perform this action."}
NOT_FOUND = {"detail": "Account not found."}


def detail_url(account_id) -> str:
    return f"/api/v1/accounts/{account_id}/"


def endpoint_url(endpoint: str, account) -> str:
    return LIST_URL if endpoint == "list" else detail_url(account.id)


def account_data(account) -> dict:
    return {
        "id": str(account.id),
        "external_id": account.external_id,
        "name": account.name,
        "plan": account.plan,
        "language": account.language,
        "timezone": account.timezone,
    }


@pytest.fixture
def account():
    return AccountFactory(
        external_id="crm-00042", name="Acme", language="fr", timezone="Europe/Paris"
    )


@pytest.mark.parametrize("endpoint", ["list", "detail"])
def test_accounts_need_credentials(api_client, account, endpoint):
    # when
    response = api_client.get(endpoint_url(endpoint, account))
    # then
    assert response.status_code == 401
    assert response.json() == NOT_AUTHENTICATED
    assert response["WWW-Authenticate"] == "Token"


@pytest.mark.parametrize("endpoint", ["list", "detail"])
def test_accounts_are_refused_to_a_user_without_the_permission(nobody_client, account, endpoint):
    # when
    response = nobody_client.get(endpoint_url(endpoint, account))
    # then
    assert response.status_code == 403
    assert response.json() == NOT_ALLOWED


@pytest.mark.parametrize("client_name", ["manager_client", "service_client"])
def test_managers_and_services_read_an_account(request, account, client_name):
    # given
    client = request.getfixturevalue(client_name)
    # when
    response = client.get(detail_url(account.id))
    # then
    assert response.status_code == 200
    assert response.json() == {
        "id": str(account.id),
        "external_id": "crm-00042",
        "name": "Acme",
        "plan": "enterprise",
        "language": "fr",
        "timezone": "Europe/Paris",
    }


@pytest.mark.parametrize("client_name", ["manager_client", "service_client"])
def test_managers_and_services_list_accounts_by_name(request, client_name):
    # given
    client = request.getfixturevalue(client_name)
    zeta = AccountFactory(name="Zeta")
    alpha = AccountFactory(name="Alpha", plan=Plan.PRO)
    # when
    response = client.get(LIST_URL)
    # then
    assert response.status_code == 200
    assert response.json() == {
        "count": 2,
        "next": None,
        "previous": None,
        "results": [account_data(alpha), account_data(zeta)],
    }


def test_account_list_is_paginated(manager_client):
    # given
    accounts = [AccountFactory(name=f"Customer {n:03d}") for n in range(51)]
    # when
    first = manager_client.get(LIST_URL)
    second = manager_client.get(LIST_URL, {"page": 2})
    # then
    assert first.status_code == second.status_code == 200
    assert first.json()["count"] == 51
    assert first.json()["next"] == "http://testserver/api/v1/accounts/?page=2"
    assert first.json()["results"] == [account_data(a) for a in accounts[:50]]
    assert second.json() == {
        "count": 51,
        "next": None,
        "previous": "http://testserver/api/v1/accounts/",
        "results": [account_data(accounts[50])],
    }


@pytest.mark.parametrize("search", ["acme", "CRM-ACME"])
def test_account_list_searches_name_and_external_id(manager_client, search):
    # given
    acme = AccountFactory(name="Acme Corp", external_id="crm-acme-1")
    AccountFactory(name="Globex", external_id="crm-globex-1")
    # when
    response = manager_client.get(LIST_URL, {"search": search})
    # then
    assert response.status_code == 200
    assert response.json() == {
        "count": 1,
        "next": None,
        "previous": None,
        "results": [account_data(acme)],
    }


@pytest.mark.parametrize("account_id", [uuid.UUID(int=1), "not-a-uuid", "12345"])
def test_unknown_or_malformed_account_id_answers_json_404(manager_client, account_id):
    # when
    response = manager_client.get(detail_url(account_id))
    # then
    assert response.status_code == 404
    assert response["Content-Type"] == "application/json"
    assert response.json() == NOT_FOUND


def test_unknown_account_is_not_revealed_before_the_permission_check(api_client, nobody_client):
    # when
    anonymous = api_client.get(detail_url(uuid.UUID(int=1)))
    nobody = nobody_client.get(detail_url(uuid.UUID(int=1)))
    # then
    assert (anonymous.status_code, anonymous.json()) == (401, NOT_AUTHENTICATED)
    assert (nobody.status_code, nobody.json()) == (403, NOT_ALLOWED)


def test_schema_is_served_to_anyone(api_client):
    # when
    response = api_client.get("/api/v1/schema/", {"format": "json"})
    # then
    assert response.status_code == 200
    schema = response.json()
    assert {
        "/api/v1/accounts/",
        "/api/v1/accounts/{id}/",
        "/api/v1/accounts/{id}/limits/",
    } <= set(schema["paths"])
    assert schema["components"]["securitySchemes"]["knoxApiToken"] == {
        "type": "apiKey",
        "in": "header",
        "name": "Authorization",
        "description": 'Token-based authentication with required prefix "Token"',
    }


def test_schema_lists_every_metric_in_the_limits_document(api_client):
    # when
    schema = api_client.get("/api/v1/schema/", {"format": "json"}).json()
    # then
    limits = schema["components"]["schemas"]["Limits"]
    assert list(limits["properties"]) == list(METRICS)
    assert sorted(limits["required"]) == sorted(METRICS)
    assert list(schema["components"]["schemas"]["LimitsRequest"]["properties"]) == list(METRICS)


def test_interactive_docs_are_served_to_anyone(api_client):
    # when
    response = api_client.get("/api/v1/docs/")
    # then
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/html")
