"""Ingestion and pre-flight checks are throttled per token; a dead cache never refuses usage."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import redis
from django.core.cache import caches
from django.core.cache.backends.base import BaseCache
from knox.models import AuthToken
from rest_framework.test import APIClient

from tests.factories import AccountFactory
from usage.models import UsageEvent

pytestmark = pytest.mark.django_db

EVENTS = "/api/v1/usage/events/"


def check_url(account) -> str:
    return f"/api/v1/accounts/{account.pk}/usage/check/"


def event(account, event_id: str) -> dict:
    return {
        "event_id": event_id,
        "account": str(account.pk),
        "metric": "text_tokens",
        "quantity": 10,
    }


def client_for(user) -> APIClient:
    _, key = AuthToken.objects.create(user=user, expiry=None)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    return client


@pytest.fixture
def rates(settings):
    """Two requests a minute per token and scope, in a cache of the test's own."""

    def set_rates(ingest: str = "2/min", check: str = "2/min") -> None:
        settings.REST_FRAMEWORK = {
            **settings.REST_FRAMEWORK,
            "DEFAULT_THROTTLE_RATES": {"ingest": ingest, "check": check},
        }

    settings.CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.locmem.LocMemCache",
            "LOCATION": "throttling-tests",
        }
    }
    from django.core.cache import cache

    cache.clear()
    set_rates()
    return set_rates


def test_ingestion_past_the_rate_answers_429_with_retry_after_and_records_nothing(
    rates, service_user
):
    # given
    account = AccountFactory()
    client = client_for(service_user)
    first = client.post(EVENTS, event(account, "e-1"), format="json")
    second = client.post(EVENTS, event(account, "e-2"), format="json")
    # when
    third = client.post(EVENTS, event(account, "e-3"), format="json")
    # then
    assert (first.status_code, second.status_code, third.status_code) == (201, 201, 429)
    wait = int(third["Retry-After"])
    assert 1 <= wait <= 60
    unit = "second" if wait == 1 else "seconds"
    assert third.json() == {
        "detail": f"Request was throttled. Expected available in {wait} {unit}."
    }
    assert sorted(UsageEvent.objects.values_list("event_id", flat=True)) == ["e-1", "e-2"]


def test_checks_past_the_rate_answer_429_and_do_not_use_the_ingestion_bucket(rates, service_user):
    account = AccountFactory()
    client = client_for(service_user)
    body = {"metric": "text_tokens", "quantity": 5}

    checks = [client.post(check_url(account), body, format="json") for _ in range(3)]
    ingestion = client.post(EVENTS, event(account, "e-1"), format="json")

    assert [r.status_code for r in checks] == [200, 200, 429]
    assert int(checks[2]["Retry-After"]) >= 1
    assert ingestion.status_code == 201


def test_two_tokens_of_one_user_have_separate_buckets(rates, service_user):
    # given: the first token has used its rate
    account = AccountFactory()
    first, second = client_for(service_user), client_for(service_user)
    for event_id in ("a-1", "a-2"):
        assert first.post(EVENTS, event(account, event_id), format="json").status_code == 201
    assert first.post(EVENTS, event(account, "a-3"), format="json").status_code == 429
    # when
    response = second.post(EVENTS, event(account, "b-1"), format="json")
    # then
    assert response.status_code == 201
    assert UsageEvent.objects.filter(event_id="b-1").exists()


def test_reading_usage_is_not_throttled(rates, service_user):
    account = AccountFactory()
    client = client_for(service_user)

    statuses = {client.get(f"/api/v1/accounts/{account.pk}/usage/").status_code for _ in range(4)}

    assert statuses == {200}


def test_an_empty_rate_turns_the_throttle_off(rates, service_user):
    rates(ingest=None)
    account = AccountFactory()
    client = client_for(service_user)

    statuses = [
        client.post(EVENTS, event(account, f"e-{i}"), format="json").status_code for i in range(4)
    ]

    assert statuses == [201] * 4


def unused_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class BrokenCache(BaseCache):
    """A cache whose every operation fails, as a cache server that went away."""

    def __init__(self, location: str, params: dict) -> None:
        super().__init__(params)

    def get(self, *args, **kwargs):
        raise ConnectionError("cache is down")

    def set(self, *args, **kwargs):
        raise ConnectionError("cache is down")

    def add(self, *args, **kwargs):
        raise ConnectionError("cache is down")

    def delete(self, *args, **kwargs):
        raise ConnectionError("cache is down")

    def clear(self):
        pass


@pytest.mark.parametrize(
    "cache",
    [
        {"BACKEND": "tests.usage.test_throttling.BrokenCache"},
        {
            # A Redis where nothing listens: the connection is refused at once.
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": f"redis://127.0.0.1:{unused_port()}/0",
            "OPTIONS": {"socket_connect_timeout": 1, "socket_timeout": 1},
        },
    ],
    ids=["raising", "redis-unreachable"],
)
def test_when_the_throttles_cache_is_down_usage_is_recorded_and_logged(
    rates, settings, service_user, caplog, cache
):
    # given: a rate of one a minute, and a cache that cannot count
    rates(ingest="1/min", check="1/min")
    settings.CACHES = {"default": cache}
    account = AccountFactory()
    client = client_for(service_user)
    # when
    with caplog.at_level(logging.WARNING, logger="config.throttling"):
        responses = [client.post(EVENTS, event(account, f"e-{i}"), format="json") for i in range(3)]
        check = client.post(check_url(account), {"metric": "text_tokens"}, format="json")
    # then
    assert [r.status_code for r in responses] == [201, 201, 201]
    assert check.status_code == 200
    assert UsageEvent.objects.filter(account=account).count() == 3
    warnings = [r for r in caplog.records if r.name == "config.throttling"]
    assert len(warnings) == 4
    assert warnings[0].levelno == logging.WARNING
    assert warnings[0].getMessage() == (
        "throttle cache unavailable, request let through (scope ingest)"
    )


def test_reservations_share_the_check_bucket_and_reading_one_is_not_throttled(rates, service_user):
    # given: two checks use the rate
    account = AccountFactory()
    client = client_for(service_user)
    for _ in range(2):
        body = {"metric": "text_tokens", "quantity": 5}
        assert client.post(check_url(account), body, format="json").status_code == 200
    # when
    url = f"/api/v1/accounts/{account.pk}/usage/reservations/"
    body = {"reservation_id": "job-1", "metric": "text_tokens", "quantity": 5}
    reserved = client.post(url, body, format="json")
    released = client.delete(f"{url}job-1/")
    # then: both refused, nothing held
    assert (reserved.status_code, released.status_code) == (429, 429)
    assert not account.reservations.exists()
    # and reading one is never throttled
    assert client.get(f"{url}job-1/").status_code == 404


# --- On Redis, as in production: one round trip per request, counts shared by processes ---

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def redis_rates(rates, settings):
    """The rates of ``rates``, counted in Redis under a prefix of the test's own."""
    settings.CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": settings.CELERY_BROKER_URL,
            "KEY_PREFIX": f"test-throttle-{uuid.uuid4().hex}",
        }
    }
    return rates


@pytest.fixture
def redis_commands(monkeypatch):
    """The Redis commands that got an answer, as (command, the keys and arguments named)."""
    sent: list[tuple[str, list[str]]] = []
    original = redis.Redis.execute_command

    def spy(self, *args, **options):
        answer = original(self, *args, **options)
        sent.append((str(args[0]).upper(), [str(arg) for arg in args[1:]]))
        return answer

    monkeypatch.setattr(redis.Redis, "execute_command", spy)
    return sent


@pytest.mark.redis
def test_on_redis_a_check_costs_one_round_trip_and_past_the_rate_answers_429(
    redis_rates, redis_commands, service_user
):
    # given: three checks a minute, and a token this process verified by a first check
    redis_rates(check="3/min")
    account = AccountFactory()
    client = client_for(service_user)
    body = {"metric": "text_tokens", "quantity": 5}
    first = client.post(check_url(account), body, format="json")
    # when
    checks, sent = [], []
    for _ in range(3):
        redis_commands.clear()
        checks.append(client.post(check_url(account), body, format="json"))
        sent.append(list(redis_commands))
    # then: two more answered, the fourth refused until the minute opened by the first ends
    assert [r.status_code for r in [first, *checks]] == [200, 200, 200, 429]
    wait = int(checks[2]["Retry-After"])
    assert 1 <= wait <= 60
    unit = "second" if wait == 1 else "seconds"
    assert checks[2].json() == {
        "detail": f"Request was throttled. Expected available in {wait} {unit}."
    }
    # and each sent one command, which read the token's and the account's generations and
    # counted the request in its bucket, once
    assert [[command for command, _names in commands] for commands in sent] in (
        [["EVALSHA"]] * 3,
        [["EVAL"], ["EVALSHA"], ["EVALSHA"]],  # the script sent once to this server
    )
    for _command, names in (commands[0] for commands in sent):
        assert any(name.endswith(":auth:tokens:generation") for name in names)
        assert any(f":lines:generation:{account.pk.hex}" in name for name in names)
    (key,) = {name for commands in sent for name in commands[0][1] if "throttle:check:" in name}
    server = caches["default"]._cache.get_client(key)
    assert int(server.get(key)) == 4
    assert 0 < server.pttl(key) <= 60_000


# Another process: the project's throttle, on the same Redis, for the same token and scope.
OTHER_PROCESS = """
import json, os, sys
import django
from django.conf import settings
settings.configure(
    CACHES=json.loads(os.environ["THROTTLE_CACHES"]),
    REST_FRAMEWORK={"DEFAULT_THROTTLE_RATES": {"check": "3/min"}},
)
django.setup()
from config.throttling import TokenRateThrottle

class Token:
    digest = os.environ["THROTTLE_DIGEST"]

class Request:
    auth = Token()

class View:
    throttle_scope = "check"

print(json.dumps([TokenRateThrottle().allow_request(Request(), View()) for _ in range(2)]))
"""


@pytest.mark.redis
def test_on_redis_every_process_counts_in_the_same_bucket(redis_rates, settings, service_user):
    # given: three checks a minute, two made by this process
    redis_rates(check="3/min")
    account = AccountFactory()
    token, key = AuthToken.objects.create(user=service_user, expiry=None)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    body = {"metric": "text_tokens", "quantity": 5}
    first = [client.post(check_url(account), body, format="json").status_code for _ in range(2)]
    # when: another process asks twice for the same token
    other = subprocess.run(
        [sys.executable, "-c", OTHER_PROCESS],
        cwd=ROOT,
        env={
            **{k: v for k, v in os.environ.items() if not k.startswith("DJANGO_")},
            "THROTTLE_CACHES": json.dumps(settings.CACHES),
            "THROTTLE_DIGEST": token.digest,
        },
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    last = client.post(check_url(account), body, format="json")
    # then: the other process had the third request and not a fourth; this one none left
    assert first == [200, 200]
    assert json.loads(other.stdout) == [True, False]
    assert last.status_code == 429
