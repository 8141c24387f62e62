"""A real Celery worker on Redis and PostgreSQL, and a fake e-mail provider on 127.0.0.1.

The provider speaks Postmark's HTTP API (Anymail's Postmark backend is pointed at it), so
everything between the recorded usage and the provider's door is the production path.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import kombu.pools
import pytest
from django.conf import settings as django_settings
from django.db import connection
from django.utils import timezone
from knox.models import AuthToken
from rest_framework.test import APIClient

from accounts.metrics import METRICS
from backoffice.services import limits_replace
from config.celery_app import app as celery_app
from notifications.models import Delivery, Notification
from notifications.services import deliveries_recover
from notifications.tasks import deliver_notification, sweep_notifications
from tests.factories import AccountFactory
from usage.models import Reservation
from usage.tasks import expire_reservations

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.redis,
    pytest.mark.worker,
    pytest.mark.django_db(transaction=True, serialized_rollback=True),
]

ROOT = Path(__file__).resolve().parents[2]
WAIT = 30.0  # seconds: bound of every wait on the worker


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class FakeProvider:
    """Postmark's ``POST /email`` on 127.0.0.1: records messages, fails or stalls on demand.

    A stalled request (``hold_next``) waits until ``release`` is set, then is dropped
    unanswered: the provider never accepted that message.
    """

    def __init__(self) -> None:
        self.messages: list[dict] = []
        self.requests = 0
        self.fail_next = 0
        self.hold_next = 0
        self.held = threading.Event()  # a stalled request has arrived
        self.release = threading.Event()
        self.lock = threading.Lock()
        provider = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with provider.lock:
                    provider.requests += 1
                    holding = provider.hold_next > 0
                    failing = not holding and provider.fail_next > 0
                    if holding:
                        provider.hold_next -= 1
                    elif failing:
                        provider.fail_next -= 1
                    else:
                        provider.messages.append(body)
                        number = len(provider.messages)
                if holding:
                    provider.held.set()
                    provider.release.wait(timeout=2 * WAIT)
                    self.close_connection = True
                    return
                if failing:
                    self.send_response(503)
                    self.end_headers()
                    return
                answer = json.dumps(
                    {
                        "To": body["To"],
                        "MessageID": f"fake-{number}",
                        "ErrorCode": 0,
                        "Message": "OK",
                    }
                ).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait_for(self, count: int) -> list[dict]:
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.messages) >= count:
                    break
            time.sleep(0.1)
        time.sleep(1.0)  # long enough for a duplicate to show up, if there were one
        with self.lock:
            return list(self.messages)


@pytest.fixture
def provider(settings) -> Iterator[FakeProvider]:
    fake = FakeProvider()
    settings.EMAIL_BACKEND = "anymail.backends.postmark.EmailBackend"
    settings.ANYMAIL = {"POSTMARK_SERVER_TOKEN": "test-token", "POSTMARK_API_URL": fake.url}
    yield fake
    fake.server.shutdown()


def use_broker(url: str) -> None:
    """Point this process's Celery app at ``url``, dropping connections to the previous one."""
    # Celery reads CELERY_BROKER_URL from the environment before its own configuration.
    os.environ["CELERY_BROKER_URL"] = url
    celery_app.conf.broker_url = url
    kombu.pools.reset()  # kombu keeps connection and producer pools per broker, globally
    celery_app._pool = None
    celery_app.amqp._producer_pool = None


# Runs Celery with the clock moved to the instant given first, ticking (see ``celery_command``).
_CELERY_AT = (
    "import sys, time_machine; time_machine.travel(float(sys.argv.pop(1)), tick=True).start(); "
    "from celery.__main__ import main; sys.argv[0] = 'celery'; main()"
)


def celery_command() -> list[str]:
    """How to start Celery so that its clock agrees with this process's.

    With ``TEST_NOW`` this process runs with its clock moved (``tests/conftest.py``); a
    worker on the real clock would see leases and periods from another time, so it starts
    at this process's present, ticking, as hosts kept in time by NTP do.
    """
    if not os.environ.get("TEST_NOW", "").strip():
        return [sys.executable, "-m", "celery"]
    return [sys.executable, "-c", _CELERY_AT, repr(time.time())]


def start_worker(
    broker_url: str, provider: FakeProvider, *, env: dict[str, str] | None = None
) -> subprocess.Popen:
    """A worker process, in a process group of its own (see ``kill``), with ``env`` added."""
    database = connection.settings_dict
    env = {
        **os.environ,
        "DATABASE_URL": (
            f"postgres://{database['USER']}@{database['HOST']}:{database['PORT']}/"
            f"{database['NAME']}"
        ),
        "CELERY_BROKER_URL": broker_url,
        "CELERY_TASK_ALWAYS_EAGER": "0",
        "EMAIL_BACKEND": "anymail.backends.postmark.EmailBackend",
        "ANYMAIL_POSTMARK_SERVER_TOKEN": "test-token",
        "ANYMAIL_POSTMARK_API_URL": provider.url,
        "NOTIFICATIONS_RETRY_BASE_DELAY": "0.5",
        "CONN_MAX_AGE": "0",
        **(env or {}),
    }
    log = tempfile.NamedTemporaryFile(prefix="worker-", suffix=".log", delete=False)  # noqa: SIM115
    worker = subprocess.Popen(
        [
            *celery_command(),
            "-A",
            "config",
            "worker",
            "--loglevel=INFO",
            "--concurrency=2",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
        ],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    worker.log_path = log.name  # type: ignore[attr-defined]
    return worker


def kill(worker: subprocess.Popen) -> None:
    """SIGKILL a worker and its pool processes at once, as a host or container dying would."""
    os.killpg(worker.pid, signal.SIGKILL)
    worker.wait(timeout=WAIT)


def stop(process: subprocess.Popen) -> None:
    """Stop a process; a worker's log is printed, so a failing test shows what it did."""
    process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=5)
    log_path = getattr(process, "log_path", None)
    if log_path:
        print(Path(log_path).read_text()[-5000:])
        Path(log_path).unlink(missing_ok=True)


@pytest.fixture
def broker(settings) -> Iterator[str]:
    """The Redis broker of CI's run, emptied, used by the web side and the worker."""
    url = django_settings.CELERY_BROKER_URL
    import redis

    redis.Redis.from_url(url).flushdb()
    previous = celery_app.conf.broker_url
    use_broker(url)
    yield url
    use_broker(previous)


@pytest.fixture
def worker(broker: str, provider: FakeProvider) -> Iterator[subprocess.Popen]:
    process = start_worker(broker, provider)
    yield process
    stop(process)


def enterprise_account_with_limits():
    account = AccountFactory(name="Acme Speech")
    limits_replace(
        account=account,
        data={
            "limits": {"text_tokens": {"warning": 100, "blocked": 1000}},
            "recipients": {
                "warning": [
                    {"email": "pm@example.com", "language": "fr"},
                    {"email": "crm@example.com", "language": "en"},
                ]
            },
        },
    )
    return account


def token_for(service_user) -> str:
    return AuthToken.objects.create(user=service_user, expiry=None)[1]


def post_events(key: str, account, prefix: str, count: int, quantity: int):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    events = [
        {
            "event_id": f"{prefix}-{i}",
            "account": str(account.pk),
            "metric": "text_tokens",
            "quantity": quantity,
        }
        for i in range(count)
    ]
    return client.post("/api/v1/usage/events/", {"events": events}, format="json")


def test_four_concurrent_crossings_yield_one_notification_and_one_message_per_recipient(
    worker, provider, service_user
):
    # given
    account = enterprise_account_with_limits()
    key = token_for(service_user)
    start = threading.Barrier(4)
    statuses: list[int] = []

    def cross(name: str) -> None:
        start.wait()
        try:
            statuses.append(post_events(key, account, name, 5, 10).status_code)
        finally:
            connection.close()

    # when: four requests each bring usage from below to past the warning threshold
    threads = [threading.Thread(target=cross, args=(f"t{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=WAIT)
    # then
    assert statuses == [201] * 4
    messages = provider.wait_for(2)
    assert sorted(m["To"] for m in messages) == ["crm@example.com", "pm@example.com"]
    assert Notification.objects.count() == 1
    assert list(Delivery.objects.values_list("status", flat=True)) == ["sent", "sent"]
    french = next(m for m in messages if m["To"] == "pm@example.com")
    assert french["Subject"] == (
        "Avertissement : Acme Speech approche de sa limite « Jetons texte »"
    )
    headers = {h["Name"]: h["Value"] for h in french["Headers"]}
    assert (headers["X-Usage-Level"], headers["X-Usage-Threshold"]) == ("warning", "100")


def test_a_provider_failing_twice_then_succeeding_sends_one_message_after_three_attempts(
    worker, provider, service_user
):
    account = AccountFactory()
    limits_replace(
        account=account,
        data={
            "limits": {"text_tokens": {"warning": 10}},
            "recipients": {"warning": [{"email": "pm@example.com", "language": "en"}]},
        },
    )
    provider.fail_next = 2
    assert post_events(token_for(service_user), account, "e", 1, 10).status_code == 201
    messages = provider.wait_for(1)
    assert [m["To"] for m in messages] == ["pm@example.com"]
    assert provider.requests == 3
    delivery = Delivery.objects.get()
    deadline = time.monotonic() + WAIT
    while delivery.status != "sent" and time.monotonic() < deadline:
        time.sleep(0.1)
        delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts, delivery.esp_message_id) == ("sent", 3, "fake-1")


@pytest.fixture
def private_redis() -> Iterator[dict]:
    """A Redis server of the test's own, so that it can be stopped and started again."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is not installed", pytrace=False)
    port = free_port()
    command = [
        binary,
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
    ]
    server = {"command": command, "url": f"redis://127.0.0.1:{port}/0"}

    def start() -> None:
        server["process"] = subprocess.Popen(command, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    return
            time.sleep(0.05)
        raise RuntimeError("private redis did not start")

    server["start"] = start
    start()
    yield server
    stop(server["process"])


def test_a_request_creating_crossings_with_redis_down_does_not_wait_for_the_broker(
    settings, provider, private_redis, service_user, monkeypatch
):
    # given: four accounts capped on every metric, and the broker down (nothing listens)
    previous = celery_app.conf.broker_url
    use_broker(private_redis["url"])
    publishers: list[int] = []
    publish = deliver_notification.apply_async

    def recorded_publish(*args, **kwargs):
        publishers.append(threading.get_ident())
        return publish(*args, **kwargs)

    monkeypatch.setattr(deliver_notification, "apply_async", recorded_publish)
    try:
        accounts = [AccountFactory() for _ in range(4)]
        for account in accounts:
            limits_replace(
                account=account,
                data={
                    "limits": {metric: {"warning": 10, "blocked": 20} for metric in METRICS},
                    "recipients": {
                        "warning": [{"email": "pm@example.com", "language": "fr"}],
                        "blocked": [{"email": "ops@example.com", "language": "en"}],
                    },
                },
            )
        stop(private_redis["process"])
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Token {token_for(service_user)}")
        # when: one batch crosses 24 thresholds
        response = client.post(
            "/api/v1/usage/events/",
            {
                "events": [
                    {
                        "event_id": f"down-{account.pk}-{metric}",
                        "account": str(account.pk),
                        "metric": metric,
                        "quantity": 25,
                    }
                    for account in accounts
                    for metric in METRICS
                ]
            },
            format="json",
        )
        # then: the request succeeds without touching the broker (its tasks are handed to
        # the publisher thread, which finds the broker down), and the 24 notifications wait
        # in the ledger, not handed over
        assert response.status_code == 201
        deadline = time.monotonic() + WAIT
        while not publishers and time.monotonic() < deadline:
            time.sleep(0.05)
        assert publishers, "the publisher never tried the broker"
        assert threading.get_ident() not in publishers
        notifications = Notification.objects.filter(is_test=False)
        assert notifications.count() == 24
        assert not notifications.filter(published_at__isnull=False).exists()
        assert set(Delivery.objects.values_list("status", flat=True)) == {"queued"}
        assert provider.messages == []
        # when: Redis is back, a worker runs, and the sweep passes once (well before
        # NOTIFICATIONS_LOST_AFTER: what was never handed over goes at once)
        private_redis["start"]()
        worker = start_worker(private_redis["url"], provider)
        try:
            sweep_notifications()
            messages = provider.wait_for(24)
        finally:
            stop(worker)
        # then: each notification's recipient got its e-mail once
        assert sorted(m["To"] for m in messages) == sorted(
            ["pm@example.com"] * 12 + ["ops@example.com"] * 12
        )
        assert set(Delivery.objects.values_list("status", flat=True)) == {"sent"}
        assert not notifications.filter(published_at__isnull=True).exists()
    finally:
        use_broker(previous)


STUCK_AFTER = 3.0  # seconds: the stuck delay of the test below, in the workers and the sweep


@dataclass(frozen=True)
class Sweep:
    """One pass of the sweep's recovery: when, the lease it found, what it re-enqueued."""

    now: datetime
    status: str
    claimed_at: datetime
    enqueued: list[int]


def test_a_worker_killed_mid_send_is_replaced_by_the_first_sweep_past_its_lease_and_sent_once(
    settings, broker, provider, service_user, monkeypatch
):
    # given: a stuck delay of 3 s, a provider that stalls on the first message, and the
    # sweep's recovery watched: the lease it finds and what it hands over
    settings.NOTIFICATIONS_STUCK_AFTER = STUCK_AFTER
    stuck_after = {"NOTIFICATIONS_STUCK_AFTER": str(STUCK_AFTER)}
    sweeps: list[Sweep] = []

    def watched_recovery(*, now: datetime | None = None) -> list[int]:
        now = timezone.now()
        status, claimed_at = Delivery.objects.values_list("status", "claimed_at").get()
        enqueued = deliveries_recover(now=now)
        sweeps.append(Sweep(now, status, claimed_at, enqueued))
        return enqueued

    monkeypatch.setattr("notifications.tasks.deliveries_recover", watched_recovery)
    account = AccountFactory()
    limits_replace(
        account=account,
        data={
            "limits": {"text_tokens": {"warning": 10}},
            "recipients": {"warning": [{"email": "pm@example.com", "language": "en"}]},
        },
    )
    provider.hold_next = 1
    first = start_worker(broker, provider, env=stuck_after)
    try:
        assert post_events(token_for(service_user), account, "e", 1, 10).status_code == 201
        assert provider.held.wait(timeout=WAIT), "the worker never called the provider"
        # the worker is inside its call to the provider, which stalls for twice the stuck
        # delay: its lease holds, renewed, and the sweep (run here as beat would, every
        # half second) leaves the delivery alone
        claimed_first = Delivery.objects.get().claimed_at
        stalled_until = time.monotonic() + 2 * STUCK_AFTER
        while time.monotonic() < stalled_until:
            sweep_notifications()
            time.sleep(0.5)
        delivery = Delivery.objects.get()
        assert (delivery.status, delivery.attempts, provider.requests) == ("sending", 1, 1)
        assert delivery.claimed_at > claimed_first
        assert not any(sweep.enqueued for sweep in sweeps)
        # when: the worker and its pool get SIGKILL, with the provider still stalling
        kill(first)
        sweeps.clear()
    finally:
        stop(first)
        provider.release.set()
    second = start_worker(broker, provider, env=stuck_after)
    try:
        deadline = time.monotonic() + WAIT
        while not Delivery.objects.filter(status="sent").exists():
            assert time.monotonic() < deadline, "the delivery was never sent again"
            sweep_notifications()
            time.sleep(0.5)
        messages = provider.wait_for(1)
    finally:
        stop(second)
    # then: every sweep before the lease expired left the delivery alone, the first one
    # past it re-enqueued it, once, and the new worker sent it, once
    lease = timedelta(seconds=STUCK_AFTER)
    handed_over = [i for i, sweep in enumerate(sweeps) if sweep.enqueued]
    assert len(handed_over) == 1, sweeps
    takeover = sweeps[handed_over[0]]
    assert takeover.enqueued == [delivery.notification_id]
    assert (takeover.status, takeover.claimed_at + lease < takeover.now) == ("sending", True)
    assert all(
        sweep.status == "sending" and sweep.claimed_at + lease >= sweep.now
        for sweep in sweeps[: handed_over[0]]
    ), sweeps
    assert [m["To"] for m in messages] == ["pm@example.com"]
    assert provider.requests == 2
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts, delivery.esp_message_id) == ("sent", 2, "fake-1")


def test_one_event_is_followed_by_its_ids_from_the_request_to_the_providers_message_id(
    worker, provider, service_user
):
    # given
    account = enterprise_account_with_limits()
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {token_for(service_user)}")
    # when: a request with its ids crosses the warning threshold
    response = client.post(
        "/api/v1/usage/events/",
        {
            "event_id": "traced-1",
            "account": str(account.pk),
            "metric": "text_tokens",
            "quantity": 150,
        },
        format="json",
        HTTP_X_REQUEST_ID="req-traced-1",
        HTTP_X_CORRELATION_ID="corr-traced-1",
    )
    # then: the event and its notification carry the ids, and so do the worker's lines
    assert response.status_code == 201
    assert len(provider.wait_for(2)) == 2
    notification = Notification.objects.get()
    assert (notification.request_id, notification.correlation_id) == (
        "req-traced-1",
        "corr-traced-1",
    )
    deadline = time.monotonic() + WAIT
    expected = (
        "notifications.tasks [request_id=req-traced-1 correlation_id=corr-traced-1] "
        f"notification {notification.pk}: 2 sent, 0 failed, 0 to retry"
    )
    while expected not in Path(worker.log_path).read_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert expected in Path(worker.log_path).read_text()
    assert sorted(Delivery.objects.values_list("esp_message_id", flat=True)) == [
        "fake-1",
        "fake-2",
    ]


def test_racing_reservations_hold_exactly_what_is_left_and_the_worker_tidies_expired_ones(
    worker, provider, service_user
):
    # given: 300 of 1000 tokens used, and a reservation whose expiry has passed
    account = enterprise_account_with_limits()
    key = token_for(service_user)
    assert post_events(key, account, "used", 3, 100).status_code == 201
    now = timezone.now()
    stale = Reservation.objects.create(
        account=account,
        reservation_id="stale",
        metric="text_tokens",
        quantity_milli=500_000,
        created_at=now - timedelta(minutes=20),
        expires_at=now - timedelta(minutes=5),
    )
    start = threading.Barrier(20)
    statuses: list[int] = []

    def reserve(name: str) -> None:
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Token {key}")
        start.wait()
        try:
            response = client.post(
                f"/api/v1/accounts/{account.pk}/usage/reservations/",
                {"reservation_id": name, "metric": "text_tokens", "quantity": 100},
                format="json",
            )
            statuses.append(response.status_code)
        finally:
            connection.close()

    # when: 20 services race for 100 each; the stale reservation holds nothing
    threads = [threading.Thread(target=reserve, args=(f"job-{i}",)) for i in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=WAIT)
    # then: exactly the seven that fit are held
    assert sorted(statuses) == [201] * 7 + [409] * 13
    held = Reservation.objects.filter(account=account, status="active").exclude(pk=stale.pk)
    assert held.count() == 7
    # and the beat task, run by the worker, writes what every read already said
    expire_reservations.delay()
    deadline = time.monotonic() + WAIT
    while Reservation.objects.get(pk=stale.pk).status != "expired":
        assert time.monotonic() < deadline, "the worker did not tidy the expired reservation"
        time.sleep(0.1)
    assert held.count() == 7
