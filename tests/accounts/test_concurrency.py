"""Real concurrency against PostgreSQL: a CRM sync of a new account run several times at once."""

from __future__ import annotations

import threading

import pytest
from django.db import connection

from accounts.models import Account
from backoffice.services import account_upsert

THREADS = 8
ROUNDS = 5


def upsert_at_once(external_id: str) -> tuple[list[tuple[object, bool]], list[str]]:
    """``THREADS`` upserts of ``external_id`` released together; their answers and errors."""
    start = threading.Barrier(THREADS)
    results: list[tuple[object, bool]] = []
    failures: list[str] = []
    lock = threading.Lock()

    def sync(name: str) -> None:
        try:
            start.wait()
            account, created = account_upsert(
                external_id=external_id, name=name, timezone_name="Europe/Paris"
            )
            with lock:
                results.append((account.pk, created))
        except Exception as exc:  # an IntegrityError surfaces here
            with lock:
                failures.append(repr(exc))
        finally:
            connection.close()

    threads = [threading.Thread(target=sync, args=(f"Acme {n}",)) for n in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return results, failures


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_concurrent_upserts_of_a_new_external_id_create_one_account_and_all_return_it():
    for round_number in range(ROUNDS):
        # given: an external id that does not exist yet
        external_id = f"crm-race-{round_number}"

        # when: eight syncs of it run at once
        results, failures = upsert_at_once(external_id)

        # then: one account, which every call returned, created by exactly one of them
        assert failures == []
        stored = Account.objects.get(external_id=external_id)
        assert [pk for pk, _created in results] == [stored.pk] * THREADS
        assert sorted(created for _pk, created in results) == [False] * (THREADS - 1) + [True]
        assert stored.name in {f"Acme {n}" for n in range(THREADS)}
        assert stored.timezone == "Europe/Paris"
    assert Account.objects.filter(external_id__startswith="crm-race-").count() == ROUNDS
