"""A revocation in one process reaches the token cache of another at once.

The API is served by a real gunicorn process on the test database, with Redis as its
cache (``CACHE_URL``), as in production; this process revokes (deletes the token,
deactivates the user, removes its group) through the ORM, as the admin or a command
would. Before each revocation the test shows that the server answers from its memory:
with the token's key changed behind the ORM's back it still lets the token in.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.contrib.auth.models import Group
from django.db import connection
from knox.models import AuthToken

from accounts.roles import USAGE_SERVICES
from config import authentication
from tests.factories import AccountFactory, UserFactory

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.redis,
    pytest.mark.django_db(transaction=True, serialized_rollback=True),
]

ROOT = Path(__file__).resolve().parents[2]
WAIT = 30.0  # seconds: bound of the wait for the server

INVALID = {"detail": "Invalid token."}
INACTIVE = {"detail": "User inactive or deleted."}
FORBIDDEN = {"detail": "You do not have permission to perform this action."}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Server:
    """gunicorn serving the project on the test database and the shared cache."""

    def __init__(self, cache_url: str) -> None:
        database = connection.settings_dict
        self.port = free_port()
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("DJANGO_")},
            "DATABASE_URL": (
                f"postgres://{database['USER']}@{database['HOST']}:{database['PORT']}/"
                f"{database['NAME']}"
            ),
            "CACHE_URL": cache_url,
            "TOKEN_CACHE_SECONDS": "60",
            "CELERY_BROKER_URL": "",
            "DEBUG": "0",
            "ALLOWED_HOSTS": "127.0.0.1",
            "CONN_MAX_AGE": "0",
        }
        self.log = tempfile.NamedTemporaryFile(prefix="gunicorn-", suffix=".log", delete=False)  # noqa: SIM115
        command = [sys.executable, "-m", "gunicorn", "config.wsgi", "--workers", "1"]
        self.process = subprocess.Popen(
            [*command, "--bind", f"127.0.0.1:{self.port}"],
            cwd=ROOT,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def get(self, path: str, key: str) -> tuple[int, dict]:
        connection_ = http.client.HTTPConnection("127.0.0.1", self.port, timeout=WAIT)
        try:
            connection_.request("GET", path, headers={"Authorization": f"Token {key}"})
            response = connection_.getresponse()
            return response.status, json.loads(response.read())
        finally:
            connection_.close()

    def wait(self, path: str, key: str) -> None:
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            try:
                self.get(path, key)
                return
            except OSError:
                time.sleep(0.2)
        pytest.fail(f"gunicorn did not answer:\n{Path(self.log.name).read_text()[-5000:]}")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=5)
        self.log.close()
        print(Path(self.log.name).read_text()[-5000:])
        Path(self.log.name).unlink(missing_ok=True)


@pytest.fixture
def cache_url(settings) -> str:
    """The shared cache of both processes: CI's Redis, as ``CACHE_URL`` sets it."""
    url = settings.CELERY_BROKER_URL
    settings.CACHES = {
        "default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": url}
    }
    settings.TOKEN_CACHE_SECONDS = 60
    return url


@pytest.fixture
def service():
    """A service user in the "Usage services" group, its token, its key and a usage URL."""
    user = UserFactory(username="transcription")
    user.groups.add(Group.objects.get(name=USAGE_SERVICES))
    token, key = AuthToken.objects.create(user=user, expiry=None)
    return user, token, key, f"/api/v1/accounts/{AccountFactory().pk}/usage/"


@pytest.fixture
def server(cache_url, service) -> Iterator[Server]:
    _user, _token, key, path = service
    started = Server(cache_url)
    started.wait(path, key)
    yield started
    started.stop()
    authentication._verified.clear()


def assert_remembered(server: Server, token: AuthToken, key: str, path: str) -> None:
    """The server lets the token in from its memory: its key found in no row still works."""
    assert server.get(path, key)[0] == 200  # verified in the database, remembered
    AuthToken.objects.filter(pk=token.pk).update(token_key="x" * len(token.token_key))
    try:
        assert server.get(path, key)[0] == 200
    finally:
        AuthToken.objects.filter(pk=token.pk).update(token_key=token.token_key)


def test_a_deleted_token_stops_working_in_another_process_at_once(server, service):
    _user, token, key, path = service
    assert_remembered(server, token, key, path)
    token.delete()
    assert server.get(path, key) == (401, INVALID)


def test_a_deactivated_user_is_refused_in_another_process_at_once(server, service):
    user, token, key, path = service
    assert_remembered(server, token, key, path)
    user.is_active = False
    user.save()
    assert server.get(path, key) == (401, INACTIVE)


def test_a_removed_permission_is_refused_in_another_process_at_once(server, service):
    user, token, key, path = service
    assert_remembered(server, token, key, path)
    user.groups.remove(Group.objects.get(name=USAGE_SERVICES))
    assert server.get(path, key) == (403, FORBIDDEN)
