"""The bound on distinct label sets per account, metric and local day (USAGE_MAX_LABEL_SETS)."""

from __future__ import annotations

import contextlib
import threading
from datetime import datetime

import pytest
import time_machine
from django.db import connection
from django.test import override_settings

from backoffice import services as backoffice
from backoffice.services import usage_events_record
from tests.factories import AccountFactory
from tests.usage.factories import event_body as event
from usage import services
from usage.models import UsageCounter, UsageEvent, UsageLabelSet

URL = "/api/v1/usage/events/"
DAY = "2027-05-03"
NOW = datetime.fromisoformat("2027-05-04T00:30:00+02:00")

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _at_noon():
    with time_machine.travel(NOW, tick=False):
        yield


def too_many(account, day=DAY, limit=100, metric="text_tokens") -> str:
    return (
        f"Account {account.pk} already has {limit} different label sets for {metric} on "
        f"{day}, the most allowed per metric and day: labels must take few values (a model "
        "or a vendor, never a request id). Events without labels, or with a label set "
        "already used that day, are still accepted."
    )


def labelled(account, event_id, model, at=f"{DAY}T10:00:00+02:00", **extra) -> dict:
    return event(account, event_id, occurred_at=at, labels={"model": model}, **extra)


@pytest.fixture
def account():
    return AccountFactory(timezone="Europe/Paris")


def test_the_set_past_the_bound_refuses_the_whole_batch_keyed_by_its_event(service_client, account):
    # given: 100 label sets on the day, the default bound
    batch = [labelled(account, f"e{i}", f"m{i}") for i in range(100)]
    assert service_client.post(URL, {"events": batch}, format="json").status_code == 201
    # when: sets already seen, no labels, then one set more
    response = service_client.post(
        URL,
        {
            "events": [
                labelled(account, "seen", "m7"),
                event(account, "plain", occurred_at=f"{DAY}T10:00:00+02:00"),
                labelled(account, "new", "m100"),
                labelled(account, "new-again", "m100"),
            ]
        },
        format="json",
    )
    # then
    assert response.status_code == 400
    assert response.json() == {"events": {"2": {"labels": [too_many(account)]}}}
    assert UsageEvent.objects.count() == 100
    assert UsageLabelSet.objects.count() == 100
    assert sum(UsageCounter.objects.filter(labels="").values_list("quantity_milli", flat=True)) == (
        100 * 10_000
    )


@override_settings(USAGE_MAX_LABEL_SETS=2)
def test_events_without_labels_or_with_a_set_seen_that_day_are_never_refused(
    service_client, account
):
    # given
    batch = [labelled(account, "a", "large"), labelled(account, "b", "small")]
    service_client.post(URL, {"events": batch}, format="json")
    # when
    response = service_client.post(
        URL,
        {
            "events": [
                labelled(account, "c", "small"),
                event(account, "d", occurred_at=f"{DAY}T11:00:00+02:00"),
                labelled(account, "a", "third"),  # a duplicate: its first copy counted
            ]
        },
        format="json",
    )
    # then
    assert response.status_code == 201
    assert (response.json()["accepted"], response.json()["duplicates"]) == (2, 1)


@override_settings(USAGE_MAX_LABEL_SETS=1)
def test_the_bound_is_per_local_day_and_metric(service_client, account):
    # given: one set on 2027-05-03 in Paris
    service_client.post(URL, labelled(account, "a", "large"), format="json")
    # when: another set on the next local day (22:00 UTC), and for another metric
    next_day = service_client.post(
        URL, labelled(account, "b", "small", at="2027-05-03T22:00:00+00:00"), format="json"
    )
    other_metric = service_client.post(
        URL, labelled(account, "c", "small", metric="audio_analyzed_seconds"), format="json"
    )
    same_day = service_client.post(
        URL, labelled(account, "d", "small", at="2027-05-03T21:59:59+00:00"), format="json"
    )
    # then
    assert (next_day.status_code, other_metric.status_code) == (201, 201)
    assert same_day.status_code == 400
    assert same_day.json() == {"labels": [too_many(account, limit=1)]}


@override_settings(USAGE_MAX_LABEL_SETS=1)
def test_the_refusal_is_in_french_for_a_french_client(service_client, account):
    # given
    service_client.post(URL, labelled(account, "a", "large"), format="json")
    # when
    response = service_client.post(
        URL, labelled(account, "b", "small"), format="json", HTTP_ACCEPT_LANGUAGE="fr"
    )
    # then
    assert response.status_code == 400
    assert response.json()["labels"][0].startswith(f"Le compte {account.pk} a déjà 1 ")


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True, serialized_rollback=True)
@pytest.mark.parametrize("path", ["batch", "single"])
def test_two_requests_racing_cannot_both_add_the_last_set(monkeypatch, path):
    # given: 99 sets; each thread adds one more, and both would count before either commits.
    # A batch counts the sets in ``label_sets_count``, a single event on PostgreSQL in
    # ``usage_event_store_one``'s one statement: each path meets the other thread there.
    account = AccountFactory(timezone="Europe/Paris")
    usage_events_record(
        payload={"events": [labelled(account, f"e{i}", f"m{i}") for i in range(99)]},
        now=NOW,
    )
    meet = threading.Barrier(2)
    module, name = (
        (services, "label_sets_count") if path == "batch" else (backoffice, "usage_event_store_one")
    )
    original = getattr(module, name)
    arrived: list[str] = []

    def count_when_both_are_here(*args, **kwargs):
        # Without the lock both threads count at once; with it, the other thread waits for
        # this one's commit, and this one goes on alone.
        arrived.append(threading.current_thread().name)
        with contextlib.suppress(threading.BrokenBarrierError):
            meet.wait(timeout=3)
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, count_when_both_are_here)
    answers: list[str] = []

    def post(model: str) -> None:
        body = labelled(account, model, model)
        try:
            usage_events_record(payload={"events": [body]} if path == "batch" else body, now=NOW)
            answers.append("accepted")
        except services.EventsInvalid:
            answers.append("refused")
        finally:
            connection.close()

    threads = [
        threading.Thread(target=post, args=(f"last-{n}",), name=f"last-{n}") for n in range(2)
    ]
    # when
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    # then: both requests reached the count; one added the last set, the other was refused
    assert sorted(arrived) == ["last-0", "last-1"]
    assert sorted(answers) == ["accepted", "refused"]
    assert UsageLabelSet.objects.filter(account=account).count() == 100
    assert UsageEvent.objects.filter(account=account).count() == 100
