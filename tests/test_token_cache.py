"""Verified tokens are remembered per process, and every revocation forgets them at once.

With a shared cache (Redis, as in production) a token verified once costs no query for its
credentials until ``TOKEN_CACHE_SECONDS`` pass or something that could revoke or narrow
it changes: deleting the token (admin, its bulk action, a queryset delete), deactivating
its user, changing the user's or a group's permissions, or its account binding. Those
tests need Redis; the one across two real processes is in
``tests/integration/test_token_cache_processes.py``. On the embedded default (process
memory) nothing is remembered.
"""

from __future__ import annotations

import uuid

import pytest
from django.contrib.auth.models import Group, Permission
from django.urls import reverse
from knox.models import AuthToken
from rest_framework.test import APIClient

from accounts.models import Account, TokenAccount
from accounts.roles import USAGE_SERVICES
from config import authentication
from tests.factories import AccountFactory, UserFactory

pytestmark = pytest.mark.django_db

INVALID = {"detail": "Invalid token."}
INACTIVE = {"detail": "User inactive or deleted."}
FORBIDDEN = {"detail": "You do not have permission to perform this action."}
OTHER_ACCOUNT = {"detail": "This token is bound to another account."}
# A usage read: the token with its user and binding, the user's permissions, the session
# of ``SessionAuthentication`` is not read (a token was given), the account with its usage.
COLD_QUERIES = 3
WARM_QUERIES = 1  # the account with its usage: nothing for the credentials


def usage_url(account: Account) -> str:
    return f"/api/v1/accounts/{account.pk}/usage/"


def shared_cache_settings(settings, location: str) -> None:
    settings.CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": location,
            "KEY_PREFIX": f"test-token-cache-{uuid.uuid4().hex}",
        }
    }
    settings.TOKEN_CACHE_SECONDS = 60
    # The usage read makes its one statement at every request, as without the memory of
    # lines (tests/usage/test_lines_memory.py): what these tests count is the token's.
    settings.LINES_MEMORY_SECONDS = 0


@pytest.fixture(autouse=True)
def _forget_tokens():
    authentication._verified.clear()
    yield
    authentication._verified.clear()


@pytest.fixture
def shared_cache(settings) -> None:
    """Redis as the default cache, as ``CACHE_URL=redis://...`` sets it in production."""
    shared_cache_settings(settings, settings.CELERY_BROKER_URL)


@pytest.fixture
def service():
    """A service user in the "Usage services" group, its token's key and an account."""
    user = UserFactory(username="transcription")
    user.groups.add(Group.objects.get(name=USAGE_SERVICES))
    token, key = AuthToken.objects.create(user=user, expiry=None)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    return user, token, client, AccountFactory()


def warm(client: APIClient, account: Account, django_assert_num_queries) -> dict:
    """Two reads: the first verifies the token in the database, the second remembers it."""
    with django_assert_num_queries(COLD_QUERIES):
        cold = client.get(usage_url(account))
    with django_assert_num_queries(WARM_QUERIES):
        warmed = client.get(usage_url(account))
    assert cold.status_code == warmed.status_code == 200
    assert warmed.json() == cold.json()
    return warmed.json()


def test_the_embedded_default_reads_the_token_at_every_request(service, django_assert_num_queries):
    # given: process memory as the default cache, which no other process can invalidate
    _user, _token, client, account = service
    # then: every request verifies the token in the database
    for _ in range(3):
        with django_assert_num_queries(COLD_QUERIES):
            assert client.get(usage_url(account)).status_code == 200
    assert authentication._verified == {}


@pytest.mark.redis
def test_a_remembered_token_costs_no_query(shared_cache, service, django_assert_num_queries):
    _user, _token, client, account = service
    body = warm(client, account, django_assert_num_queries)
    # then: it stays remembered for the following requests
    with django_assert_num_queries(WARM_QUERIES):
        again = client.get(usage_url(account))
    assert again.status_code == 200
    assert again.json() == body


@pytest.mark.redis
def test_the_remembered_user_and_binding_are_those_of_the_database(
    shared_cache, django_assert_num_queries
):
    # given: a token bound to one account, remembered
    acme, globex = AccountFactory(), AccountFactory()
    user = UserFactory(username="bound")
    user.groups.add(Group.objects.get(name=USAGE_SERVICES))
    token, key = AuthToken.objects.create(user=user, expiry=None)
    TokenAccount.objects.create(token=token, account=acme)
    authentication.TokenAuthentication().authenticate_credentials(key.encode())
    # when: the same token again
    with django_assert_num_queries(0):
        cached_user, cached_token = authentication.TokenAuthentication().authenticate_credentials(
            key.encode()
        )
    # then: the rows as stored, the permissions of the group, the binding
    assert (cached_user.pk, cached_user.username, cached_user.is_active) == (user.pk, "bound", True)
    assert cached_user._api_permissions == frozenset(
        f"{p.content_type.app_label}.{p.codename}"
        for p in Group.objects.get(name=USAGE_SERVICES).permissions.all()
    )
    assert (cached_token.digest, cached_token.user) == (token.digest, cached_user)
    assert cached_token.account_binding.account_id == acme.pk
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    refused = client.get(usage_url(globex))
    assert refused.status_code == 403
    assert refused.json() == OTHER_ACCOUNT


@pytest.mark.redis
def test_an_unbound_remembered_token_reads_no_binding(
    shared_cache, service, django_assert_num_queries
):
    user, _token, _client, _account = service
    key = AuthToken.objects.create(user=user, expiry=None)[1]
    authentication.TokenAuthentication().authenticate_credentials(key.encode())
    with django_assert_num_queries(0):
        _cached_user, cached_token = authentication.TokenAuthentication().authenticate_credentials(
            key.encode()
        )
        with pytest.raises(TokenAccount.DoesNotExist):
            cached_token.account_binding  # noqa: B018


@pytest.mark.redis
def test_a_token_deleted_in_the_admin_stops_working_at_once(
    shared_cache,
    service,
    admin_client,
    django_assert_num_queries,
    django_capture_on_commit_callbacks,
):
    _user, token, client, account = service
    warm(client, account, django_assert_num_queries)
    with django_capture_on_commit_callbacks(execute=True):
        revoked = admin_client.post(
            reverse("admin:knox_authtoken_delete", args=[token.pk]), {"post": "yes"}
        )
    assert revoked.status_code == 302
    answer = client.get(usage_url(account))
    assert answer.status_code == 401
    assert answer.json() == INVALID


@pytest.mark.redis
def test_tokens_deleted_by_the_admins_bulk_action_stop_working_at_once(
    shared_cache,
    service,
    admin_client,
    django_assert_num_queries,
    django_capture_on_commit_callbacks,
):
    _user, token, client, account = service
    warm(client, account, django_assert_num_queries)
    with django_capture_on_commit_callbacks(execute=True):
        revoked = admin_client.post(
            reverse("admin:knox_authtoken_changelist"),
            {"action": "delete_selected", "_selected_action": [token.pk], "post": "yes"},
        )
    assert revoked.status_code == 302
    assert not AuthToken.objects.exists()
    answer = client.get(usage_url(account))
    assert answer.status_code == 401
    assert answer.json() == INVALID


@pytest.mark.redis
def test_tokens_deleted_by_a_queryset_stop_working_at_once(
    shared_cache, service, django_assert_num_queries, django_capture_on_commit_callbacks
):
    # given: what knox's "log out everywhere" does
    user, _token, client, account = service
    warm(client, account, django_assert_num_queries)
    with django_capture_on_commit_callbacks(execute=True):
        user.auth_token_set.all().delete()
    answer = client.get(usage_url(account))
    assert answer.status_code == 401
    assert answer.json() == INVALID


@pytest.mark.redis
def test_a_deactivated_user_is_refused_at_once(
    shared_cache, service, django_assert_num_queries, django_capture_on_commit_callbacks
):
    user, _token, client, account = service
    warm(client, account, django_assert_num_queries)
    with django_capture_on_commit_callbacks(execute=True):
        user.is_active = False
        user.save()
    answer = client.get(usage_url(account))
    assert answer.status_code == 401
    assert answer.json() == INACTIVE


@pytest.mark.redis
def test_a_user_removed_from_its_group_is_refused_at_once(
    shared_cache, service, django_assert_num_queries, django_capture_on_commit_callbacks
):
    user, _token, client, account = service
    warm(client, account, django_assert_num_queries)
    with django_capture_on_commit_callbacks(execute=True):
        user.groups.clear()
    answer = client.get(usage_url(account))
    assert answer.status_code == 403
    assert answer.json() == FORBIDDEN


@pytest.mark.redis
def test_a_permission_removed_from_the_group_is_refused_at_once(
    shared_cache, service, django_assert_num_queries, django_capture_on_commit_callbacks
):
    _user, _token, client, account = service
    warm(client, account, django_assert_num_queries)
    group = Group.objects.get(name=USAGE_SERVICES)
    with django_capture_on_commit_callbacks(execute=True):
        group.permissions.remove(Permission.objects.get(codename="view_usagecounter"))
    answer = client.get(usage_url(account))
    assert answer.status_code == 403
    assert answer.json() == FORBIDDEN


@pytest.mark.redis
def test_a_changed_binding_applies_at_once(
    shared_cache, service, django_assert_num_queries, django_capture_on_commit_callbacks
):
    # given: a token bound to one account, remembered
    _user, token, client, account = service
    binding = TokenAccount.objects.create(token=token, account=account)
    warm(client, account, django_assert_num_queries)
    other = AccountFactory()
    # when: bound to another account
    with django_capture_on_commit_callbacks(execute=True):
        binding.account = other
        binding.save()
    answer = client.get(usage_url(account))
    # then
    assert answer.status_code == 403
    assert answer.json() == OTHER_ACCOUNT
    assert client.get(usage_url(other)).status_code == 200


@pytest.mark.redis
def test_a_token_bound_after_it_was_remembered_is_confined_at_once(
    shared_cache, service, django_assert_num_queries, django_capture_on_commit_callbacks
):
    _user, token, client, account = service
    warm(client, account, django_assert_num_queries)
    other = AccountFactory()
    with django_capture_on_commit_callbacks(execute=True):
        TokenAccount.objects.create(token=token, account=other)
    answer = client.get(usage_url(account))
    assert answer.status_code == 403
    assert answer.json() == OTHER_ACCOUNT


@pytest.mark.redis
def test_a_change_behind_the_orms_back_waits_for_an_explicit_invalidation(
    shared_cache, service, django_assert_num_queries, django_capture_on_commit_callbacks
):
    # given: a remembered token whose user is deactivated by an UPDATE, which sends no signal
    user, _token, client, account = service
    warm(client, account, django_assert_num_queries)
    type(user).objects.filter(pk=user.pk).update(is_active=False)
    # then: the remembered verification stands (until TOKEN_CACHE_SECONDS pass)...
    assert client.get(usage_url(account)).status_code == 200
    # ... or until token_cache_invalidate()
    with django_capture_on_commit_callbacks(execute=True):
        authentication.token_cache_invalidate()
    answer = client.get(usage_url(account))
    assert answer.status_code == 401
    assert answer.json() == INACTIVE


@pytest.mark.redis
def test_a_login_in_the_admin_forgets_no_token(
    shared_cache, service, django_assert_num_queries, django_capture_on_commit_callbacks
):
    _user, _token, client, account = service
    warm(client, account, django_assert_num_queries)
    admin = UserFactory(username="boss", is_staff=True, is_superuser=True)
    admin.set_password("correct horse battery staple")
    admin.save()
    with django_capture_on_commit_callbacks(execute=True):
        assert APIClient().login(username="boss", password="correct horse battery staple")
    with django_assert_num_queries(WARM_QUERIES):
        assert client.get(usage_url(account)).status_code == 200


def test_a_cache_that_does_not_answer_means_the_database(
    settings, service, django_assert_num_queries
):
    # given: a shared cache on a port where nothing listens
    with socket_free_port() as port:
        shared_cache_settings(settings, f"redis://127.0.0.1:{port}/0")
        _user, _token, client, account = service
        # then: every request verifies the token in the database, and succeeds
        for _ in range(2):
            with django_assert_num_queries(COLD_QUERIES):
                answer = client.get(usage_url(account))
            assert answer.status_code == 200
    assert authentication._verified == {}


class socket_free_port:
    """A local port nothing listens on, held bound (not listening) for the block."""

    def __enter__(self) -> int:
        import socket

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        return self.sock.getsockname()[1]

    def __exit__(self, *exc: object) -> None:
        self.sock.close()
