"""A change of an account's lines made in one process shows in another's next read.

Each process remembers the lines it last read of an account, to send their figures in the
same statement as the account and its current lines; it uses them only when that
statement finds them unchanged (``usage.selectors.account_lines_current``). The API is
served by a real gunicorn process (one worker, so that every request meets its memory);
this process changes the lines behind the ORM's signals, as another server, a queryset
update or raw SQL would, and nothing tells the server: its next answer shows the change.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from django.contrib.auth.models import Group
from knox.models import AuthToken

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


@pytest.fixture
def server(cache_url, service) -> Iterator[Server]:  # noqa: F811
    key, account = service
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
    # when: thresholds changed, a line added, the time zone and plan changed
    ScopedLimit.objects.filter(account=account).update(blocked=70)
    assert blocked(server, key, account) == [None, None, 100, 70]
    Limit.objects.filter(account=account).update(blocked=90)
    assert blocked(server, key, account) == [None, None, 90, 70]
    ScopedLimit.objects.bulk_create(
        [ScopedLimit(account=account, metric="text_tokens", period="hour", blocked=5, position=1)]
    )
    assert blocked(server, key, account) == [None, None, 90, 70, 5]
    Account.objects.filter(pk=account.pk).update(plan="pro")
    assert blocked(server, key, account) == [None, None, None, None, None]
    Account.objects.filter(pk=account.pk).update(plan="enterprise", timezone="Asia/Tokyo")
    status, body = server.get(f"/api/v1/accounts/{account.pk}/capacities/", key)
    assert status == 200
    assert body["items"][3]["current_period"]["start_time"].endswith("+09:00")
    ScopedLimit.objects.filter(account=account).delete()
    assert blocked(server, key, account) == [None, None, 90]
