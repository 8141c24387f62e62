"""What the OpenAPI schema says of a field is what the API does with it.

Each test pairs a statement of the served schema with the API's answer to a request at the
edge it describes (found by the Schemathesis run of ``test_api_schemathesis.py``).
"""

from __future__ import annotations

import pytest

from tests.factories import AccountFactory
from usage.models import UsageEvent

pytestmark = pytest.mark.django_db

EVENTS = "/api/v1/usage/events/"


@pytest.fixture
def components(client) -> dict:
    response = client.get("/api/v1/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    return response.json()["components"]["schemas"]


def _variants(components: dict, name: str) -> list[dict]:
    """The properties of every variant of ``name`` (one per unit of the metrics)."""
    return [
        components[variant["$ref"].rsplit("/", 1)[-1]]["properties"]
        for variant in components[name]["oneOf"]
    ]


def _event(account, **fields) -> dict:
    return {
        "event_id": "e-1",
        "account": str(account.pk),
        "metric": "text_tokens",
        "quantity": 10,
        **fields,
    }


def test_a_batch_holds_one_to_a_thousand_events(components, service_client):
    # given
    events = components["EventBatchRequest"]["properties"]["events"]
    # when
    response = service_client.post(EVENTS, {"events": []}, format="json")
    # then
    assert (events["minItems"], events["maxItems"]) == (1, 1000)
    assert response.status_code == 400
    assert response.json() == {"events": ["This list may not be empty."]}


@pytest.mark.parametrize("field", ["occurred_at", "source", "metadata", "labels"])
def test_an_optional_event_field_may_be_null_as_if_left_out(components, service_client, field):
    # given
    account = AccountFactory()
    # when
    response = service_client.post(EVENTS, _event(account, **{field: None}), format="json")
    # then
    assert all(event[field]["nullable"] for event in _variants(components, "EventRequest"))
    assert response.status_code == 201
    stored = UsageEvent.objects.get()
    assert (stored.source, stored.metadata) == ("", {})


def test_an_empty_source_is_no_source(components, service_client):
    # given
    account = AccountFactory()
    # when
    response = service_client.post(EVENTS, _event(account, source=""), format="json")
    # then
    assert not any(
        "minLength" in event["source"] for event in _variants(components, "EventRequest")
    )
    assert response.status_code == 201
    assert UsageEvent.objects.get().source == ""


@pytest.mark.parametrize("source", [0, False, [], {}])
def test_a_source_that_is_not_a_string_is_refused_even_when_falsy(service_client, source):
    # given
    account = AccountFactory()
    # when
    response = service_client.post(EVENTS, _event(account, source=source), format="json")
    # then
    assert response.status_code == 400
    assert response.json() == {"source": ["Not a valid string."]}
    assert not UsageEvent.objects.exists()


def test_a_check_of_a_null_quantity_checks_zero(components, service_client):
    # given
    account = AccountFactory()
    url = f"/api/v1/accounts/{account.pk}/usage/check/"
    # when
    response = service_client.post(url, {"metric": "text_tokens", "quantity": None}, format="json")
    # then
    checks = _variants(components, "CheckRequestRequest")
    assert all(check["quantity"]["nullable"] for check in checks)
    assert response.status_code == 200
    assert response.json() == {
        "allowed": True,
        "metric": "text_tokens",
        "used": 0,
        "remaining": None,
        "status": "ok",
        "lines": [
            {
                "period": "month",
                "window_days": None,
                "labels": {},
                "used": 0,
                "remaining": None,
                "status": "ok",
                "allowed": True,
            }
        ],
    }


BAD_PAGE = "A valid page number is required: a whole number from 1 to 2147483647."


def test_an_empty_page_number_is_refused_as_the_schema_wants_a_number(components, manager_client):
    # given: the schema's page is an integer from 1, never an empty text
    AccountFactory()
    # when
    response = manager_client.get("/api/v1/accounts/?page=")
    # then
    assert response.status_code == 400
    assert response.json() == {"page": [BAD_PAGE]}


@pytest.mark.parametrize(
    "query",
    [
        "page=abc&page=1",
        "page=1&page=",
        "search=a&search=b",
    ],
)
def test_a_query_parameter_given_twice_is_refused(manager_client, query):
    # given: every query parameter of the API takes one value; which one would count?
    AccountFactory()
    name = query.split("=", 1)[0]
    # when
    response = manager_client.get(f"/api/v1/accounts/?{query}")
    # then
    assert response.status_code == 400
    assert response.json() == {name: ["Give this parameter once."]}


def test_a_period_given_twice_is_refused(service_client):
    # given
    account = AccountFactory()
    # when
    response = service_client.get(
        f"/api/v1/accounts/{account.pk}/usage/?period=2026-01&period=2026-02"
    )
    # then
    assert response.status_code == 400
    assert response.json() == {"period": ["Give this parameter once."]}


NO_NULL = r"^[^\u0000]*$"


def test_the_strings_of_request_bodies_say_they_refuse_null_characters(components, service_client):
    # given: the API refuses a null character in any JSON string (config/parsers.py)
    account = AccountFactory()
    events = _variants(components, "EventRequest")
    # when
    response = service_client.post(EVENTS, _event(account, event_id="a\x00b"), format="json")
    # then
    assert all(event["event_id"]["pattern"] == NO_NULL for event in events)
    assert all(event["source"]["pattern"] == NO_NULL for event in events)
    assert response.status_code == 400
    assert not UsageEvent.objects.exists()


def test_strings_with_their_own_format_or_choices_keep_them(components):
    event = _variants(components, "EventRequest")[0]
    recipient = components["RecipientRequest"]["properties"]
    assert "pattern" not in event["account"]
    assert "pattern" not in recipient["email"]
    assert event["occurred_at"]["pattern"] == "^[2-9][0-9]{3}-"
