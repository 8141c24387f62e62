"""Hostile values in the fields of the usage API: a 400 keyed by the field, never a 500,
nothing stored (SPEC section 5: "No request ever answers 500 for bad input")."""

from __future__ import annotations

import json

import pytest

from tests.factories import AccountFactory
from usage.models import UsageCounter, UsageEvent

pytestmark = pytest.mark.django_db

EVENTS = "/api/v1/usage/events/"


def event(account, event_id="e-1", metric="text_tokens", quantity=10, **extra):
    return {
        "event_id": event_id,
        "account": str(account.pk),
        "metric": metric,
        "quantity": quantity,
        **extra,
    }


def post_raw(client, url, text):
    """POST a JSON text as it is, so that numbers keep their spelling (``1e3``, ``7.0``)."""
    return client.post(url, text, content_type="application/json")


def nothing_stored():
    return not UsageEvent.objects.exists() and not UsageCounter.objects.exists()


# --- Quantities are JSON numbers ---------------------------------------------------------

NOT_NUMBERS = ["1e3", " 7 ", "1_000", "\u0663", "7", "", True, False, [7], {"value": 7}]


@pytest.mark.parametrize("quantity", NOT_NUMBERS, ids=repr)
def test_a_quantity_that_is_not_a_json_number_is_refused(service_client, quantity):
    # given
    account = AccountFactory()
    # when
    response = service_client.post(EVENTS, event(account, quantity=quantity), format="json")
    # then
    assert response.status_code == 400
    assert response.json() == {"quantity": ["Expected a JSON number."]}
    assert nothing_stored()


@pytest.mark.parametrize("quantity", ["2.5", "1e3", True], ids=repr)
def test_a_batch_with_a_quantity_that_is_not_a_number_is_refused_whole(service_client, quantity):
    account = AccountFactory()
    batch = [
        event(account, "a", metric="audio_analyzed_seconds", quantity=2.5),
        event(account, "b", metric="audio_analyzed_seconds", quantity=quantity),
    ]
    response = service_client.post(EVENTS, {"events": batch}, format="json")
    assert response.status_code == 400
    assert response.json() == {"events": {"1": {"quantity": ["Expected a JSON number."]}}}
    assert nothing_stored()


@pytest.mark.parametrize(
    ("spelling", "metric", "stored_milli"),
    [
        ("1e3", "text_tokens", 1_000_000),
        ("1530.0", "text_tokens", 1_530_000),
        ("1.25E1", "audio_analyzed_seconds", 12_500),
        ("0.001", "audio_transcribed_seconds", 1),
    ],
)
def test_every_spelling_of_a_json_number_is_taken_at_its_value(
    service_client, spelling, metric, stored_milli
):
    account = AccountFactory()
    text = (
        f'{{"event_id": "e-1", "account": "{account.pk}", "metric": "{metric}", '
        f'"quantity": {spelling}}}'
    )
    response = post_raw(service_client, EVENTS, text)
    assert response.status_code == 201, response.content
    assert UsageEvent.objects.get().quantity_milli == stored_milli


@pytest.mark.parametrize("quantity", NOT_NUMBERS, ids=repr)
def test_a_check_quantity_that_is_not_a_json_number_is_refused(service_client, quantity):
    account = AccountFactory()
    response = service_client.post(
        f"/api/v1/accounts/{account.pk}/usage/check/",
        {"metric": "text_tokens", "quantity": quantity},
        format="json",
    )
    assert response.status_code == 400
    assert response.json() == {"quantity": ["Expected a JSON number."]}


def test_a_check_takes_a_json_number_in_any_spelling(service_client):
    account = AccountFactory()
    response = post_raw(
        service_client,
        f"/api/v1/accounts/{account.pk}/usage/check/",
        json.dumps({"metric": "text_tokens"})[:-1] + ', "quantity": 1E2}',
    )
    assert response.status_code == 200, response.content
    assert response.json()["allowed"] is True


# --- occurred_at lies between 2000-01-01T00:00:00Z and 5 minutes from now -----------------

MSG_TOO_EARLY = "Ensure this moment is not before 2000-01-01T00:00:00Z."


@pytest.mark.parametrize(
    ("occurred_at", "message"),
    [
        ("0001-01-01T00:00:00+14:00", MSG_TOO_EARLY),
        ("0001-01-01T00:00:00-14:00", MSG_TOO_EARLY),
        ("1999-12-31T23:59:59.999999Z", MSG_TOO_EARLY),
        ("2000-01-01T00:30:00+01:00", MSG_TOO_EARLY),
        (
            "9999-12-31T23:59:59-14:00",
            "Ensure this moment is not more than 5 minutes in the future.",
        ),
        (
            "9999-12-31T23:59:59+14:00",
            "Ensure this moment is not more than 5 minutes in the future.",
        ),
        (
            "\u0662\u0660\u0662\u0666-01-01T00:00:00+00:00",
            "Datetime has wrong format. Use ISO 8601 with a UTC offset.",
        ),
    ],
)
@pytest.mark.parametrize("timezone_name", ["Pacific/Kiritimati", "Pacific/Pago_Pago"])
def test_an_occurred_at_out_of_bounds_is_refused(
    service_client, occurred_at, message, timezone_name
):
    # given
    account = AccountFactory(timezone=timezone_name)
    # when
    single = service_client.post(EVENTS, event(account, occurred_at=occurred_at), format="json")
    batch = service_client.post(
        EVENTS,
        {"events": [event(account, "a"), event(account, "b", occurred_at=occurred_at)]},
        format="json",
    )
    # then
    assert single.status_code == 400
    assert single.json() == {"occurred_at": [message]}
    assert batch.status_code == 400
    assert batch.json() == {"events": {"1": {"occurred_at": [message]}}}
    assert nothing_stored()


@pytest.mark.parametrize("timezone_name", ["Pacific/Kiritimati", "Pacific/Pago_Pago", "UTC"])
def test_the_first_moment_of_2000_is_recorded_in_its_own_period(service_client, timezone_name):
    account = AccountFactory(timezone=timezone_name)
    response = service_client.post(
        EVENTS, event(account, occurred_at="2000-01-01T00:00:00Z"), format="json"
    )
    assert response.status_code == 201, response.content
    assert UsageCounter.objects.get().day.isoformat() == (
        "1999-12-31" if timezone_name == "Pacific/Pago_Pago" else "2000-01-01"
    )
