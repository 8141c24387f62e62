"""Shared fixtures.

Tests that need a real service carry ``@pytest.mark.postgres`` or ``@pytest.mark.redis``.
Without the service they skip with the reason; with ``REQUIRE_SERVICES=1`` (as in CI's
second run) they fail instead, so a missing service can never pass unnoticed.
"""

from __future__ import annotations

import os

import pytest
from django.conf import settings
from django.contrib.auth.models import Group
from rest_framework.test import APIClient

from accounts.roles import ACCOUNT_MANAGERS, USAGE_SERVICES

REQUIRE_SERVICES = os.environ.get("REQUIRE_SERVICES") == "1"


def _missing(reason: str) -> None:
    if REQUIRE_SERVICES:
        pytest.fail(f"REQUIRE_SERVICES=1 but {reason}", pytrace=False)
    pytest.skip(reason)


def _redis_answers() -> bool:
    url = settings.CELERY_BROKER_URL
    if not url.startswith("redis"):
        return False
    import redis

    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=1).ping())
    except redis.RedisError:
        return False


@pytest.fixture(autouse=True)
def _services(request: pytest.FixtureRequest) -> None:
    engine = settings.DATABASES["default"]["ENGINE"]
    if request.node.get_closest_marker("postgres") and engine != "django.db.backends.postgresql":
        _missing("needs PostgreSQL: set DATABASE_URL=postgres://...")
    if request.node.get_closest_marker("redis") and not _redis_answers():
        _missing("needs Redis: set CELERY_BROKER_URL=redis://... to a running server")


@pytest.fixture(autouse=True)
def _eager_celery(request: pytest.FixtureRequest):
    """Unit tests run tasks in-process even when a broker is configured (CI's second run);
    tests marked ``worker`` talk to a real broker and worker instead."""
    from config.celery_app import app

    eager = not request.node.get_closest_marker("worker")
    previous = app.conf.task_always_eager
    app.conf.task_always_eager = eager
    yield
    app.conf.task_always_eager = previous


@pytest.fixture(autouse=True)
def _english_and_fast_passwords(settings) -> None:
    settings.LANGUAGE_CODE = "en"
    # Password hashing at production strength is most of a user factory's cost.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def api_client() -> APIClient:
    return APIClient()


def _token_client(user) -> APIClient:
    from knox.models import AuthToken

    _, key = AuthToken.objects.create(user=user, expiry=None)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    return client


@pytest.fixture
def manager(db):
    from tests.factories import UserFactory

    user = UserFactory(username="manager")
    user.groups.add(Group.objects.get(name=ACCOUNT_MANAGERS))
    return user


@pytest.fixture
def service_user(db):
    from tests.factories import UserFactory

    user = UserFactory(username="transcription")
    user.groups.add(Group.objects.get(name=USAGE_SERVICES))
    return user


@pytest.fixture
def manager_client(manager) -> APIClient:
    return _token_client(manager)


@pytest.fixture
def service_client(service_user) -> APIClient:
    return _token_client(service_user)


@pytest.fixture
def nobody_client(db) -> APIClient:
    """Authenticated, but in no group."""
    from tests.factories import UserFactory

    return _token_client(UserFactory(username="nobody"))
