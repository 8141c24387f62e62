"""How many queries each per-request path costs, beyond verifying the token.

The usage read, capacities and the pre-flight answer in one statement once the process has
read the account's lines (``usage.selectors.account_lines_current``): the account with its
limits, scoped limits, extensions, counters, events of the current minute and active
reservations. What a request costs for its credentials (the token and the permissions,
nothing once the token is remembered with Redis) is measured on a request refused before
any query of its own (a malformed account id) and counted apart.
"""

from __future__ import annotations

import pytest
import time_machine
from django.db import connection
from django.test.utils import CaptureQueriesContext

from accounts.models import Account, ScopedLimit
from tests.usage.test_api_capacities import NOW, account_with_lines
from usage.selectors import _remembered

pytestmark = pytest.mark.django_db

CHECK = {"metric": "text_tokens", "quantity": 1, "labels": {"model": "large", "vendor": "acme"}}


@pytest.fixture
def account(manager_client, service_client) -> Account:
    return account_with_lines(manager_client, service_client)


def queries(request) -> list[str]:
    with CaptureQueriesContext(connection) as captured:
        response = request()
    assert response.status_code in (200, 201), response.content
    return [query["sql"] for query in captured.captured_queries]


def credentials(client) -> int:
    """The queries of a request that makes none of its own: the token's and permissions'."""
    with CaptureQueriesContext(connection) as captured:
        assert client.get("/api/v1/accounts/not-an-id/usage/").status_code == 404
    return len(captured)


def paths(client, account: Account) -> dict:
    url = f"/api/v1/accounts/{account.pk}/"
    return {
        "usage": lambda: client.get(url + "usage/"),
        "capacities": lambda: client.get(url + "capacities/"),
        "check": lambda: client.post(url + "usage/check/", CHECK, format="json"),
    }


def test_the_usage_read_capacities_and_the_check_cost_one_statement(account, service_client):
    with time_machine.travel(NOW, tick=False):
        for request in paths(service_client, account).values():
            request()  # the token remembered where there is Redis, the lines read
        base = credentials(service_client)
        # when
        found = {name: queries(request) for name, request in paths(service_client, account).items()}
    # then: one statement each, beyond the credentials, with every line and reservation
    assert {name: len(sql) - base for name, sql in found.items()} == {
        "usage": 1,
        "capacities": 1,
        "check": 1,
    }


def test_the_first_read_of_the_lines_costs_two_statements(account, service_client):
    # given: this process has not read the account's lines
    with time_machine.travel(NOW, tick=False):
        service_client.get(f"/api/v1/accounts/{account.pk}/usage/")
        base = credentials(service_client)
        _remembered.clear()
        # when
        first = queries(paths(service_client, account)["capacities"])
        second = queries(paths(service_client, account)["capacities"])
    # then: the account with its lines, then their figures; then one statement
    assert (len(first) - base, len(second) - base) == (2, 1)


def test_a_change_the_process_did_not_hear_of_shows_at_the_next_read(account, service_client):
    # given: the lines read, then changed behind the ORM's signals (as another process, a
    # queryset update or raw SQL would)
    with time_machine.travel(NOW, tick=False):
        capacities = paths(service_client, account)["capacities"]
        before = capacities().json()
        day = ScopedLimit.objects.get(account=account, period="day")
        ScopedLimit.objects.filter(pk=day.pk).update(blocked=12000, warning=None)
        changed = capacities().json()
        Account.objects.filter(pk=account.pk).update(timezone="Asia/Tokyo")
        moved = capacities().json()
        checked = paths(service_client, account)["check"]().json()
    # then: each read answers with what is stored
    assert [item["blocked_threshold"] for item in before["items"]][3] == 50000
    assert changed["items"][3]["blocked_threshold"] == 12000
    assert changed["items"][3]["status"] == "blocked"
    assert moved["items"][3]["current_period"]["start_time"] == "2026-12-02T00:00:00+09:00"
    assert checked["allowed"] is False


def test_a_plan_changed_behind_the_process_shows_at_the_next_read(account, service_client):
    # given: the lines read on Enterprise, then the plan changed behind the ORM's signals
    with time_machine.travel(NOW, tick=False):
        capacities = paths(service_client, account)["capacities"]
        before = capacities().json()
        Account.objects.filter(pk=account.pk).update(plan="pro")
        after = capacities().json()
        Account.objects.filter(pk=account.pk).update(plan="enterprise")
        again = capacities().json()
    # then: no threshold is in force on another plan, and all are again on Enterprise
    blocked = [[item["blocked_threshold"] for item in body["items"]] for body in (before, after)]
    assert any(value is not None for value in blocked[0])
    assert blocked[1] == [None] * len(blocked[1])
    assert again == before


def test_a_reservation_and_a_single_event_cost_their_known_queries(account, service_client):
    # given: the account's lines read once, the credentials' queries measured
    url = f"/api/v1/accounts/{account.pk}/usage/reservations/"
    with time_machine.travel(NOW, tick=False):
        service_client.get(f"/api/v1/accounts/{account.pk}/capacities/")
        base = credentials(service_client)
        reserved = queries(
            lambda: service_client.post(
                url,
                {"reservation_id": "job-1", "metric": "text_tokens", "quantity": 5},
                format="json",
            )
        )
        event = {
            "event_id": "single",
            "account": str(account.pk),
            "metric": "text_tokens",
            "quantity": 3,
            "labels": {"model": "large"},
        }
        recorded = queries(
            lambda: service_client.post("/api/v1/usage/events/", event, format="json")
        )
    # then: on PostgreSQL, a reservation takes the lock, reads the account with its lines,
    # their usage and reservations and the id looked for (one statement), inserts; an
    # event takes the lock, reads the lines it counts on with their usage, writes the
    # event and its counters in one statement (``tests/usage/test_write_queries.py``);
    # each in a savepoint here, in the test's transaction. On SQLite, no lock; the event
    # is recorded as a batch is, and its line past a threshold looks for crossings
    expected = {"sqlite": (4, 12), "postgresql": (5, 5)}[connection.vendor]
    assert (len(reserved) - base, len(recorded) - base) == expected, (reserved, recorded)


def prepared(text: str) -> list[tuple[str, int, int]]:
    """The statements prepared on this connection that contain ``text``: how PostgreSQL
    holds them (its plans made so far, generic and custom)."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT statement, generic_plans, custom_plans FROM pg_prepared_statements"
            " WHERE statement LIKE %s",
            [f"%{text}%"],
        )
        return cursor.fetchall()


@pytest.mark.postgres
def test_the_reads_statement_is_prepared_once_and_planned_no_more(account, service_client):
    # given: the read asked a few times (the first reads the lines; the statement is
    # prepared on the connection at its third run)
    table = Account._meta.db_table
    with time_machine.travel(NOW, tick=False):
        for _ in range(4):
            assert paths(service_client, account)["capacities"]().status_code == 200
        before = prepared(f'FROM "{table}"')

        # when: asked ten times more
        for _ in range(10):
            assert paths(service_client, account)["capacities"]().status_code == 200
        after = prepared(f'FROM "{table}"')

    # then: the same prepared statement answered all ten, planned for each of its first five
    # runs, then generically: neither parsed nor planned again
    assert len(before) == len(after) == 1
    (statement, generic, custom), (_same, generic_before, custom_before) = after[0], before[0]
    assert statement == _same
    assert generic + custom == generic_before + custom_before + 10
    assert custom == 5
