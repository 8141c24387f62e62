"""Shared fixtures.

Tests that need a real service carry ``@pytest.mark.postgres`` or ``@pytest.mark.redis``.
Without the service they skip with the reason; with ``REQUIRE_SERVICES=1`` (as in CI's
second run) they fail instead, so a missing service can never pass unnoticed.

With ``TEST_NOW`` set to an ISO 8601 instant with its offset (``2027-03-28T00:59:00Z``),
the whole session, database setup and fixtures included, runs with the clock moved there
and ticking: every test must hold at any instant, and this is how to show it at the hard
ones (month ends across time zones, DST changes, 29 February, year end).
"""

from __future__ import annotations

import os
from datetime import UTC, datetime

import pytest
import time_machine
from django.conf import settings
from django.contrib.auth.models import Group
from rest_framework.test import APIClient

from accounts.roles import ACCOUNT_MANAGERS, USAGE_SERVICES

REQUIRE_SERVICES = os.environ.get("REQUIRE_SERVICES") == "1"

_TRAVEL = pytest.StashKey[time_machine.travel]()


def _test_now() -> datetime | None:
    raw = os.environ.get("TEST_NOW", "").strip()
    if not raw:
        return None
    try:
        instant = datetime.fromisoformat(raw)
    except ValueError:
        instant = None
    if instant is None or instant.tzinfo is None:
        raise pytest.UsageError(
            f"TEST_NOW={raw!r} is not an ISO 8601 instant with an offset, "
            "e.g. 2027-03-28T00:59:00Z or 2027-03-01T00:00:30+14:00"
        )
    return instant


def pytest_configure(config: pytest.Config) -> None:
    instant = _test_now()
    if instant is None:
        return
    # A Unix timestamp moves the clock (time.time(), datetime.now(), hence
    # django.utils.timezone.now()) without touching the process's time zone; monotonic
    # and perf_counter clocks are left alone, so hypothesis's deadlines still work.
    traveller = time_machine.travel(instant.timestamp(), tick=True)
    traveller.start()
    config.stash[_TRAVEL] = traveller


def pytest_unconfigure(config: pytest.Config) -> None:
    traveller = config.stash.get(_TRAVEL, None)
    if traveller is not None:
        traveller.stop()


def pytest_report_header(config: pytest.Config) -> str | None:
    instant = _test_now()
    if instant is None:
        return None
    return f"TEST_NOW: the clock starts at {instant.astimezone(UTC).isoformat()}"


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
    # The embedded default's cache (process memory) whatever CACHE_URL the shell sets: what
    # a test counts (queries, throttled requests) must not depend on it. The tests of the
    # shared cache put Redis back themselves (test_token_cache, test_throttling...).
    settings.CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}


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
