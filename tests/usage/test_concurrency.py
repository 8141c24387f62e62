"""Real concurrency against PostgreSQL: retries and overlaps never count an event twice."""

from __future__ import annotations

import random
import threading
import time
from typing import Any

import pytest
from django.db import connection
from knox.models import AuthToken
from rest_framework.test import APIClient

import backoffice.services
from tests.factories import AccountFactory
from tests.usage.factories import event_body
from usage.models import UsageCounter, UsageEvent

THREADS = 8
BATCHES_PER_THREAD = 6
BATCH_SIZE = 250
POOL = 1500


def quantity_of(number: int) -> int:
    return number % 97 + 1


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_eight_threads_posting_overlapping_batches_count_each_event_once(service_user):
    # given: two accounts and a pool of event ids that every thread draws from
    accounts = [AccountFactory(), AccountFactory()]
    _, key = AuthToken.objects.create(user=service_user, expiry=None)
    rng = random.Random(7)
    plans = [
        [rng.sample(range(POOL), BATCH_SIZE) for _ in range(BATCHES_PER_THREAD)]
        for _ in range(THREADS)
    ]
    start = threading.Barrier(THREADS)
    answers: list[tuple[int, int]] = []
    failures: list[str] = []
    lock = threading.Lock()

    def post_batches(batches: list[list[int]]) -> None:
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Token {key}")
        try:
            start.wait()
            for numbers in batches:
                events = [
                    {
                        "event_id": f"evt-{n}",
                        "account": str(accounts[n % 2].pk),
                        "metric": "text_tokens",
                        "quantity": quantity_of(n),
                    }
                    for n in numbers
                ]
                response = client.post("/api/v1/usage/events/", {"events": events}, format="json")
                with lock:
                    if response.status_code in (200, 201):
                        answers.append((response.json()["accepted"], len(numbers)))
                    else:
                        failures.append(f"{response.status_code} {response.content[:200]!r}")
        except Exception as exc:  # a deadlock or a 500 surfaces here
            with lock:
                failures.append(repr(exc))
        finally:
            connection.close()

    threads = [threading.Thread(target=post_batches, args=(plan,)) for plan in plans]
    # when
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    # then
    assert failures == []
    assert len(answers) == THREADS * BATCHES_PER_THREAD
    distinct = {n for plan in plans for batch in plan for n in batch}
    assert sum(accepted for accepted, _ in answers) == len(distinct)
    assert UsageEvent.objects.count() == len(distinct)
    for index, account in enumerate(accounts):
        expected = sum(quantity_of(n) for n in distinct if n % 2 == index) * 1000
        counted = sum(
            UsageCounter.objects.filter(account=account).values_list("quantity_milli", flat=True)
        )
        assert counted == expected


# --- A single event and a batch inserting the same event id at once ---
#
# A batch inserts its events before it takes the usage locks; a single event takes its lock
# before it inserts. When both insert the same id at once, each waits for the other and
# PostgreSQL rolls one back (after ``deadlock_timeout``, a second): that one is recorded
# again, and finds the event the other recorded. The hooks below hold each request at the
# point that makes the cycle.

EVENTS = "/api/v1/usage/events/"
HOLD = 10  # seconds a held request waits for its release at most


class Held:
    """Holds the first call of ``name`` (a function of ``backoffice.services``) made by the
    thread ``thread`` until ``release``; tells when it got there (``reached``)."""

    def __init__(self, monkeypatch, name: str, thread: str) -> None:
        self.reached, self.release = threading.Event(), threading.Event()
        real = getattr(backoffice.services, name)

        def held(**kwargs):
            if threading.current_thread().name == thread and not self.reached.is_set():
                self.reached.set()
                assert self.release.wait(HOLD), f"{name} was never released"
            return real(**kwargs)

        monkeypatch.setattr(backoffice.services, name, held)


def request_thread(name: str, post, answers: dict, failures: list) -> threading.Thread:
    def run() -> None:
        try:
            response = post()
            answers[name] = (response.status_code, response.json())
        except Exception as error:  # a deadlock not recorded again surfaces here
            failures.append(f"{name}: {error!r}")
        finally:
            connection.close()

    return threading.Thread(target=run, name=name)


def deadlock_run(service_user, monkeypatch, *, held: str, first: str) -> tuple[Any, dict]:
    """Post a batch of "shared" and "batch-only" and a single event "shared" for a new
    account: the request ``first`` starts first and is held at its first call of ``held``;
    the other starts then, and 0.5 s later the first is released. Returns the account and
    each request's ``(status, body)``; no request may fail."""
    account = AccountFactory()
    _, key = AuthToken.objects.create(user=service_user, expiry=None)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    shared = event_body(account, "shared", quantity=5)
    posts = {
        "batch": lambda: client.post(
            EVENTS,
            {"events": [shared, event_body(account, "batch-only", quantity=7)]},
            format="json",
        ),
        "single": lambda: client.post(EVENTS, shared, format="json"),
    }
    hold = Held(monkeypatch, held, thread=first)
    answers: dict = {}
    failures: list = []
    threads = {name: request_thread(name, post, answers, failures) for name, post in posts.items()}
    threads[first].start()
    assert hold.reached.wait(HOLD)
    next(thread for name, thread in threads.items() if name != first).start()
    time.sleep(0.5)
    hold.release.set()
    for thread in threads.values():
        thread.join(timeout=3 * HOLD)
    assert failures == []
    return account, answers


def counted(account) -> int:
    return sum(
        UsageCounter.objects.filter(account=account, labels="").values_list(
            "quantity_milli", flat=True
        )
    )


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_a_single_event_rolled_back_by_a_deadlock_with_a_batch_is_recorded_again(
    service_user, monkeypatch
):
    # given: a batch that inserted "shared", held before its locks
    # when: the single event takes its lock and waits for the batch's "shared"; then the
    # batch asks for that lock
    account, answers = deadlock_run(service_user, monkeypatch, held="usage_lock", first="batch")
    # then: PostgreSQL rolled the single event back (it waited first), which was recorded
    # again and found "shared" recorded by the batch
    assert answers["batch"][0] == 201
    assert (answers["batch"][1]["accepted"], answers["batch"][1]["duplicates"]) == (2, 0)
    assert answers["single"][0] == 200
    assert (answers["single"][1]["accepted"], answers["single"][1]["duplicates"]) == (0, 1)
    assert UsageEvent.objects.filter(account=account).count() == 2
    assert counted(account) == 12_000


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_a_batch_rolled_back_by_a_deadlock_with_a_single_event_is_recorded_again(
    service_user, monkeypatch
):
    # given: a single event holding its lock, held before it inserts "shared"
    # when: the batch inserts "shared" and waits for that lock; then the single event
    # inserts "shared" too
    account, answers = deadlock_run(
        service_user, monkeypatch, held="account_lines_current", first="single"
    )
    # then: PostgreSQL rolled the batch back (it waited first), which was recorded again
    # and found "shared" recorded by the single event
    assert answers["single"][0] == 201
    assert (answers["single"][1]["accepted"], answers["single"][1]["duplicates"]) == (1, 0)
    assert answers["batch"][0] == 201
    assert (answers["batch"][1]["accepted"], answers["batch"][1]["duplicates"]) == (1, 1)
    assert UsageEvent.objects.filter(account=account).count() == 2
    assert counted(account) == 12_000
