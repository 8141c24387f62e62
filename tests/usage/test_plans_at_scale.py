"""No request reads the accounts, their limits or their scoped limits whole.

Among a few thousand other accounts with limits, every statement of the usage read,
capacities, the pre-flight, a single event, a batch naming two accounts and a reservation
is planned by PostgreSQL (under ``EXPLAIN``, in a savepoint rolled back before it runs for
real) and must reach these tables through an index: a whole read makes one account's
request cost more with every account stored (the usage read, joined to the accounts and
limits, took five times as long among 10,000 accounts as among 100). A batch naming more
than ``usage.selectors.USAGE_FEW_ROWS`` (account, metric) pairs reads them joined, once per
batch, by design (see there).
"""

from __future__ import annotations

import re
from typing import Any

import pytest
import time_machine
from django.db import connection

from accounts.metrics import METRICS
from accounts.models import Account, Limit, Plan, ScopedLimit
from tests.factories import AccountFactory
from tests.usage.factories import event_body
from tests.usage.test_api_capacities import NOW, account_with_lines
from tests.usage.test_read_queries import paths

pytestmark = [pytest.mark.postgres, pytest.mark.django_db]

OTHERS = 2000
# The tables that grow with the accounts.
GROWING = {
    Account._meta.db_table,
    Limit._meta.db_table,
    ScopedLimit._meta.db_table,
}
WHOLE = re.compile(r"(?:Parallel )?Seq Scan on (\w+)")


def others_create() -> None:
    """``OTHERS`` Enterprise accounts, each with the three limits and a scoped limit."""
    others = Account.objects.bulk_create(
        Account(external_id=f"other-{n}", name=f"Other {n}", plan=Plan.ENTERPRISE)
        for n in range(OTHERS)
    )
    Limit.objects.bulk_create(
        Limit(account=account, metric=metric, warning=100, blocked=200)
        for account in others
        for metric in METRICS
    )
    ScopedLimit.objects.bulk_create(
        ScopedLimit(
            account=account, metric="text_tokens", period="day", labels={}, labels_key="", blocked=9
        )
        for account in others
    )
    with connection.cursor() as cursor:
        for table in sorted(GROWING):
            cursor.execute(f'ANALYZE "{table}"')


def whole_reads(request: Any) -> list[tuple[str, str]]:
    """The growing tables that the statements of ``request()`` read whole, with each
    statement's start."""
    found: list[tuple[str, str]] = []

    def planned(execute: Any, sql: str, params: Any, many: bool, context: dict[str, Any]) -> Any:
        if not many and sql.lstrip().split(None, 1)[0].upper() in {"SELECT", "INSERT", "WITH"}:
            raw = context["cursor"].cursor  # the driver's cursor: this wrapper is not run again
            raw.execute("SAVEPOINT planned")
            raw.execute("EXPLAIN (ANALYZE) " + sql, params)
            plan = "\n".join(row[0] for row in raw.fetchall())
            raw.execute("ROLLBACK TO SAVEPOINT planned")
            found.extend((table, sql[:80]) for table in WHOLE.findall(plan) if table in GROWING)
        return execute(sql, params, many, context)

    with connection.execute_wrapper(planned):
        response = request()
    assert response.status_code in (200, 201), response.content
    return found


def requests_of(client: Any, account: Account, other: Account, run: str) -> dict[str, Any]:
    """The requests of every per-request path, their ids new for each ``run``."""
    event = event_body(account, f"scale-{run}", "text_tokens", 5, labels={"model": "large"})
    batch = {
        "events": [
            {**event, "event_id": f"scale-{run}-{n}", "account": str(pk)}
            for n, pk in enumerate([account.pk, other.pk] * 5)
        ]
    }
    reservation = {
        "reservation_id": f"scale-{run}",
        "metric": "text_tokens",
        "quantity": 1,
        "labels": {"model": "small"},  # CHECK's vendor is blocked on its hour line
        "ttl_seconds": 60,
    }
    events = "/api/v1/usage/events/"
    reservations = f"/api/v1/accounts/{account.pk}/usage/reservations/"
    return {
        **paths(client, account),
        "single event": lambda: client.post(events, event, format="json"),
        "batch": lambda: client.post(events, batch, format="json"),
        "reservation": lambda: client.post(reservations, reservation, format="json"),
    }


def test_no_request_reads_the_accounts_or_their_limits_whole(manager_client, service_client):
    # given: an account with lines and events, among many accounts with limits
    account = account_with_lines(manager_client, service_client)
    other = AccountFactory()
    others_create()
    with time_machine.travel(NOW, tick=False):
        for request in requests_of(service_client, account, other, "first").values():
            request()  # the lines and the token read once, as in a running process
        # when
        found = {
            name: whole_reads(request)
            for name, request in requests_of(service_client, account, other, "then").items()
        }

    # then: each request reached every account, limit and scoped limit through an index
    assert found == {name: [] for name in found}
