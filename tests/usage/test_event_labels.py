"""Labels on usage events (SPEC 11.1): checked, stored, and part of the event."""

from __future__ import annotations

import pytest

from tests.factories import AccountFactory
from tests.usage.factories import event_body as event
from tests.usage.factories import event_record
from usage.models import UsageEvent

pytestmark = pytest.mark.django_db

URL = "/api/v1/usage/events/"


def test_labels_are_stored_with_the_event(service_client):
    # given
    account = AccountFactory()
    labels = {"vendor": "acme", "model": "large-2.5:eu/x_y-z", "technology": "llm"}
    # when
    response = service_client.post(URL, event(account, labels=labels), format="json")
    # then
    assert response.status_code == 201
    assert UsageEvent.objects.get().labels == labels


@pytest.mark.parametrize("labels", [None, {}])
def test_no_labels_or_null_is_the_empty_set(service_client, labels):
    # given
    account = AccountFactory()
    # when
    response = service_client.post(URL, event(account, labels=labels), format="json")
    # then
    assert response.status_code == 201
    assert UsageEvent.objects.get().labels == {}


@pytest.mark.parametrize(
    ("labels", "errors"),
    [
        (
            {"region": "eu"},
            {
                "region": [
                    "“region” is not a known label. Expected one of: "
                    "technology, vendor, operation, model."
                ]
            },
        ),
        (
            {"vendor": "ac me"},
            {
                "vendor": [
                    "The label “vendor” may only contain letters A-Z and a-z, digits and _ . : / -."
                ]
            },
        ),
        ({"vendor": ""}, {"vendor": ["The label “vendor” may not be blank."]}),
        ({"vendor": 7}, {"vendor": ["The label “vendor” takes a string."]}),
        (
            {"vendor": "x" * 65},
            {"vendor": ["Ensure the label “vendor” has no more than 64 characters."]},
        ),
        (["vendor"], ["Expected an object of labels, e.g. {“model”: “large”}."]),
    ],
)
def test_a_bad_label_is_refused_keyed_by_its_path(service_client, labels, errors):
    # given
    account = AccountFactory()
    # when
    response = service_client.post(URL, event(account, labels=labels), format="json")
    # then
    assert response.status_code == 400
    assert response.json() == {"labels": errors}
    assert not UsageEvent.objects.exists()


def test_a_bad_label_in_a_batch_is_keyed_by_index_and_refuses_the_batch(service_client):
    # given
    account = AccountFactory()
    events = [event(account, f"e-{i}", labels={"vendor": "acme"}) for i in range(5)]
    events[3]["labels"] = {"vendor": "a;b"}
    # when
    response = service_client.post(URL, {"events": events}, format="json")
    # then
    assert response.status_code == 400
    assert response.json() == {
        "events": {
            "3": {
                "labels": {
                    "vendor": [
                        "The label “vendor” may only contain letters A-Z and a-z, digits "
                        "and _ . : / -."
                    ]
                }
            }
        }
    }
    assert not UsageEvent.objects.exists()


def test_a_resent_event_with_other_labels_is_a_duplicate(service_client):
    # given
    account = AccountFactory()
    service_client.post(URL, event(account, labels={"model": "large"}), format="json")
    # when
    response = service_client.post(URL, event(account, labels={"model": "small"}), format="json")
    # then
    assert response.status_code == 200
    assert (response.json()["accepted"], response.json()["duplicates"]) == (0, 1)
    assert UsageEvent.objects.get().labels == {"model": "large"}


def test_within_a_batch_the_first_copy_and_its_labels_win(service_client):
    # given
    account = AccountFactory()
    events = [
        event(account, "same", labels={"model": "large"}),
        event(account, "same", labels={"model": "small"}),
    ]
    # when
    response = service_client.post(URL, {"events": events}, format="json")
    # then
    assert response.status_code == 201
    assert (response.json()["accepted"], response.json()["duplicates"]) == (1, 1)
    assert UsageEvent.objects.get().labels == {"model": "large"}


def test_the_schema_states_the_label_rules(client, service_client):
    # given
    schema = client.get("/api/v1/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json").json()
    components = schema["components"]["schemas"]
    variants = [
        components[variant["$ref"].rsplit("/", 1)[-1]]["properties"]["labels"]
        for variant in components["EventRequest"]["oneOf"]
    ]
    value = {
        "type": "string",
        "minLength": 1,
        "maxLength": 64,
        "pattern": "^[A-Za-z0-9_.:/-]{1,64}$",
    }
    # then
    for labels in variants:
        labels.pop("description", None)
        assert labels == {
            "type": "object",
            "nullable": True,
            "additionalProperties": False,
            "maxProperties": 4,
            "properties": {key: value for key in ("technology", "vendor", "operation", "model")},
        }


def test_the_event_admin_shows_the_labels(admin_client):
    # given
    account = AccountFactory()
    event_record(
        account,
        "2026-11-02T10:00:00+00:00",
        event_id="labelled",
        labels={"model": "large", "vendor": "acme"},
    )
    stored = UsageEvent.objects.get()
    # when
    listing = admin_client.get("/admin/usage/usageevent/")
    page = admin_client.get(f"/admin/usage/usageevent/{stored.pk}/change/")
    # then
    assert '<td class="field-labels_display">Model: large, Vendor: acme</td>' in listing.text
    assert "large" in page.content.decode() and "acme" in page.content.decode()
