"""A change of an account's lines made in one process shows in another's next read.

Each process remembers the lines it last read of an account, tagged with the account's
generation in Redis (``usage.selectors.account_lines_known``), and, in the same statement
as the account, sends the figures of the lines it last read
(``usage.selectors.account_lines_current``). The API is served by a real gunicorn process
(one worker, so that every request meets its memory); this process changes the lines.
Through the ORM (the admin, the services) every change announces itself once committed,
and the server's next answer shows it. A change behind the ORM's signals (a queryset
update, ``bulk_create``, raw SQL) shows once announced with ``accounts_changed``, as
docs/how-it-works.md says; until then the server answers from its memory.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from django.contrib.auth.models import Group
from knox.models import AuthToken

from accounts.generations import accounts_changed
from accounts.models import Account, Limit, ScopedLimit
from accounts.roles import USAGE_SERVICES
from tests.factories import AccountFactory, UserFactory
from tests.integration.test_token_cache_processes import Server, cache_url  # noqa: F401

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.redis,
    pytest.mark.django_db(transaction=True, serialized_rollback=True),
]


@pytest.fixture
def service() -> tuple[str, Account]:
    user = UserFactory(username="transcription")
    user.groups.add(Group.objects.get(name=USAGE_SERVICES))
    _token, key = AuthToken.objects.create(user=user, expiry=None)
    account = AccountFactory(timezone="Europe/Paris")
    Limit.objects.create(account=account, metric="text_tokens", warning=None, blocked=100)
    ScopedLimit.objects.create(
        account=account,
        metric="text_tokens",
        period="day",
        labels={"model": "large"},
        labels_key="model=large",
        blocked=50,
    )
    return key, account


# The account's lines (monthly and daily) all end at its midnight, where the server forgets
# them with no change announced; a test that reads twice from the server's memory must not
# straddle it.
MIDNIGHT_MARGIN = timedelta(seconds=60)


def clear_of_midnight(zone: str) -> None:
    """Wait, when the next midnight in ``zone`` is less than ``MIDNIGHT_MARGIN`` away, until it
    has passed."""
    now = datetime.now(ZoneInfo(zone))
    midnight = datetime.combine(now.date() + timedelta(days=1), datetime.min.time(), now.tzinfo)
    left = midnight.timestamp() - now.timestamp()
    if left < MIDNIGHT_MARGIN.total_seconds():
        time.sleep(left + 1)


@pytest.fixture
def server(cache_url, service) -> Iterator[Server]:  # noqa: F811
    key, account = service
    clear_of_midnight(account.timezone)
    started = Server(cache_url)
    started.wait(f"/api/v1/accounts/{account.pk}/capacities/", key)
    yield started
    started.stop()


def blocked(server: Server, key: str, account: Account) -> list[int | None]:
    status, body = server.get(f"/api/v1/accounts/{account.pk}/capacities/", key)
    assert status == 200, body
    return [item["blocked_threshold"] for item in body["items"]]


def test_changed_lines_show_in_another_process_at_once(server, service):
    key, account = service
    assert blocked(server, key, account) == [None, None, 100, 50]
    assert blocked(server, key, account) == [None, None, 100, 50]  # from its memory
    # when: thresholds changed, a line added, the time zone and plan changed, through the ORM
    line = ScopedLimit.objects.get(account=account)
    line.blocked = 70
    line.save()
    assert blocked(server, key, account) == [None, None, 100, 70]
    limit = Limit.objects.get(account=account)
    limit.blocked = 90
    limit.save()
    assert blocked(server, key, account) == [None, None, 90, 70]
    ScopedLimit.objects.create(
        account=account, metric="text_tokens", period="hour", blocked=5, position=1
    )
    assert blocked(server, key, account) == [None, None, 90, 70, 5]
    account.plan = "pro"
    account.save()
    assert blocked(server, key, account) == [None, None, None, None, None]
    account.plan, account.timezone = "enterprise", "Asia/Tokyo"
    account.save()
    status, body = server.get(f"/api/v1/accounts/{account.pk}/capacities/", key)
    assert status == 200
    assert body["items"][3]["current_period"]["start_time"].endswith("+09:00")
    ScopedLimit.objects.filter(account=account).delete()
    assert blocked(server, key, account) == [None, None, 90]


def test_a_change_behind_the_signals_shows_once_announced(server, service):
    key, account = service
    assert blocked(server, key, account) == [None, None, 100, 50]
    # when: a queryset update, which sends no signal
    ScopedLimit.objects.filter(account=account).update(blocked=70)
    Limit.objects.filter(account=account).update(blocked=90)
    # then: the server still answers from its memory...
    assert blocked(server, key, account) == [None, None, 100, 50]
    # ...until the change is announced
    accounts_changed([account.pk])
    assert blocked(server, key, account) == [None, None, 90, 70]
