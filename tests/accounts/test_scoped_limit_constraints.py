"""The database refuses what a scoped limit must never be (SPEC section 11.2), whoever writes.

The service checks the same rules first, with messages; these constraints are what holds
when two writers race or a row is written by hand.
"""

from __future__ import annotations

import threading

import pytest
from django.db import IntegrityError, connection, transaction

from accounts.labels import labels_key
from accounts.models import ScopedLimit
from tests.factories import AccountFactory

pytestmark = pytest.mark.django_db


def _row(account, **fields) -> ScopedLimit:
    values = {
        "metric": "text_tokens",
        "period": "day",
        "window_days": None,
        "labels": {"model": "large"},
        "blocked": 100,
        **fields,
    }
    values.setdefault("labels_key", labels_key(values["labels"]))
    return ScopedLimit(account=account, **values)


@pytest.mark.parametrize(
    "fields",
    [
        pytest.param({}, id="window days null"),
        pytest.param({"period": "rolling", "window_days": 7}, id="rolling"),
        pytest.param({"labels": {}, "period": "week"}, id="no labels"),
    ],
)
def test_the_same_line_twice_in_an_account_is_refused(fields):
    # given
    account = AccountFactory()
    _row(account, **fields).save()
    # when / then
    with pytest.raises(IntegrityError), transaction.atomic():
        _row(account, warning=1, **fields).save()
    assert ScopedLimit.objects.count() == 1


def test_the_same_line_in_two_accounts_or_another_window_is_stored():
    # given
    first, second = AccountFactory(), AccountFactory()
    # when
    _row(first).save()
    _row(second).save()
    _row(first, period="rolling", window_days=7).save()
    _row(first, period="rolling", window_days=8).save()
    # then
    assert ScopedLimit.objects.count() == 4


@pytest.mark.parametrize(
    "fields",
    [
        pytest.param({"warning": 100, "blocked": 100}, id="warning not below blocked"),
        pytest.param({"period": "rolling", "window_days": None}, id="rolling without days"),
        pytest.param({"period": "rolling", "window_days": 367}, id="rolling too long"),
        pytest.param({"period": "rolling", "window_days": 0}, id="rolling of no day"),
        pytest.param({"period": "day", "window_days": 3}, id="days without rolling"),
        pytest.param({"period": "month", "labels": {}}, id="month without labels"),
    ],
)
def test_a_row_breaking_a_rule_is_refused_by_the_database(fields):
    # given
    account = AccountFactory()
    # when / then
    with pytest.raises(IntegrityError), transaction.atomic():
        _row(account, **fields).save()
    assert not ScopedLimit.objects.exists()


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_racing_inserts_of_the_same_line_store_one():
    # given: an account, and eight writers of the same line, window days null
    account = AccountFactory()
    writers = 8
    start = threading.Barrier(writers)
    outcomes: list[str] = []
    lock = threading.Lock()

    def insert() -> None:
        try:
            start.wait()
            with transaction.atomic():
                _row(account).save()
            outcome = "stored"
        except IntegrityError:
            outcome = "refused"
        finally:
            connection.close()
        with lock:
            outcomes.append(outcome)

    threads = [threading.Thread(target=insert) for _ in range(writers)]
    # when
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    # then
    assert sorted(outcomes) == ["refused"] * (writers - 1) + ["stored"]
    assert ScopedLimit.objects.filter(account=account).count() == 1
