"""Real concurrency against PostgreSQL: retries and overlaps never count an event twice."""

from __future__ import annotations

import random
import threading

import pytest
from django.db import connection
from knox.models import AuthToken
from rest_framework.test import APIClient

from tests.factories import AccountFactory
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
