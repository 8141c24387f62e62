"""CPU per request of the read paths, measured in process: no server, no client, no network.

Sends ``--requests`` requests of each path through Django's test client (the whole
middleware stack, DRF, the token authentication and the throttle) to a PostgreSQL
database of its own and a Redis cache, as the bench's server has them, and prints the
process CPU time per request of each, and its share of the authenticated floor's. The
account is the bench's: the three monthly lines and its ten scoped limits, events with
its labels. ``--profile DIR`` also writes a cProfile of each path (CPU time) (``DIR/<path>.prof``)
and prints its top functions.

    .venv/bin/python bench/reads_cpu.py --requests 500
    .venv/bin/python bench/reads_cpu.py --requests 300 --profile /tmp/reads-prof

The figures are CPU of this process only (PostgreSQL and Redis work in their own), so they
are what the Python of each path costs; compare each with the floors of the same run.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DATABASE = os.environ.get("BENCH_DATABASE", "bench_reads_cpu")
DSN = "postgres://postgres@127.0.0.1:5432"


def setup(cache_url: str) -> None:
    os.environ.update(
        DJANGO_SETTINGS_MODULE="bench.settings",
        DATABASE_URL=f"{DSN}/{DATABASE}",
        CACHE_URL=cache_url,
        DEBUG="0",
        ALLOWED_HOSTS="testserver",
        SECRET_KEY="bench",
        CONN_MAX_AGE="600",
        API_THROTTLE_INGEST="100000000/min",
        API_THROTTLE_CHECK="100000000/min",
        CELERY_TASK_ALWAYS_EAGER="1",
        EMAIL_BACKEND="django.core.mail.backends.locmem.EmailBackend",
    )
    for name in list(os.environ):
        if name.startswith("CELERY_BROKER"):
            del os.environ[name]
    sys.path.insert(0, str(ROOT))
    import psycopg

    with psycopg.connect(f"{DSN}/postgres", autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {DATABASE}")
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", "--noinput", verbosity=0)


def account_and_token() -> tuple[str, str]:
    """The bench's account (Europe/Paris, three monthly limits, ten scoped limits) with
    events over the last 40 days, and a service token's key."""
    from django.core.management import call_command
    from django.db import connection

    from accounts.models import Account
    from backoffice.services import limits_replace, usage_events_record
    from bench.ingest import HIGH, LABEL_CHOICES, SCOPED_LIMITS

    account = Account.objects.create(
        external_id="cpu-probe", name="CPU probe", timezone="Europe/Paris"
    )
    document = {
        "limits": {
            "text_tokens": {"warning": HIGH // 2, "blocked": HIGH},
            "audio_transcribed_seconds": {"warning": None, "blocked": HIGH},
            "audio_analyzed_seconds": {"warning": None, "blocked": None},
        },
        "recipients": {
            "warning": [{"email": "bench@example.com", "language": "en"}],
            "blocked": [{"email": "bench@example.com", "language": "en"}],
        },
        "scoped_limits": [
            {**line, "warning": HIGH // 2 if i % 2 else None, "blocked": HIGH}
            for i, line in enumerate(SCOPED_LIMITS)
        ],
    }
    limits_replace(account=account, data=document, reason="bench")
    now = datetime.now(UTC)
    metrics = ("text_tokens", "audio_transcribed_seconds", "audio_analyzed_seconds")
    events = [
        {
            "event_id": f"cpu-{i}",
            "account": str(account.pk),
            "metric": metrics[i % 3],
            "quantity": 10 + i % 7,
            "occurred_at": (now - timedelta(minutes=i * 7)).isoformat(),
            "labels": LABEL_CHOICES[i % len(LABEL_CHOICES)],
        }
        for i in range(1000)
    ]
    for start in range(0, len(events), 500):
        usage_events_record(payload={"events": events[start : start + 500]}, account_id=None)
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")  # plans as on a database in use
    out = io.StringIO()
    call_command("create_service_token", "cpu", stdout=out)
    return str(account.pk), out.getvalue().strip().splitlines()[-1].strip()


def paths(account_id: str) -> dict[str, tuple[str, str, bytes | None]]:
    from bench.ingest import CHECK_BODY

    check = json.dumps(CHECK_BODY).encode()
    url = f"/api/v1/accounts/{account_id}/"
    return {
        "floor-get": ("GET", "/bench/floor/authenticated/", None),
        "floor-post": ("POST", "/bench/floor/authenticated/", check),
        "usage": ("GET", url + "usage/", None),
        "capacities": ("GET", url + "capacities/", None),
        "check": ("POST", url + "usage/check/", check),
    }


def _calls(send: Any, method: str, url: str, body: bytes | None, requests: int = 50) -> float:
    """Python function calls per request: unlike CPU time, the same on a busy machine."""
    profile = cProfile.Profile()
    profile.enable()
    for _ in range(requests):
        send(method, url, body)
    profile.disable()
    return pstats.Stats(profile).total_calls / requests


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200, help="per path and round")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--cache-url", default="redis://127.0.0.1:6379/9")
    parser.add_argument("--profile", type=Path, help="write a cProfile of each path here")
    parser.add_argument("--top", type=int, default=25)
    options = parser.parse_args()
    setup(options.cache_url)

    from django.core.cache import cache
    from django.test import Client

    cache.clear()
    account_id, key = account_and_token()
    client = Client(HTTP_AUTHORIZATION=f"Token {key}")
    targets = paths(account_id)

    def send(method: str, url: str, body: bytes | None) -> None:
        if method == "GET":
            response = client.get(url)
        else:
            response = client.post(url, body, content_type="application/json")
        assert response.status_code == 200, (url, response.status_code, response.content)

    for method, url, body in targets.values():  # warm: token remembered, lines read
        for _ in range(20):
            send(method, url, body)
    from django.db import connection

    from bench.ingest import process_stat

    def cpu_seconds(pid: int) -> float:
        found = process_stat(pid)
        return 0.0 if found is None else found[2]

    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        backend = cursor.fetchone()[0]
    rounds: list[dict[str, float]] = []
    database: list[dict[str, float]] = []  # PostgreSQL's CPU per request, its backend's
    for _ in range(options.rounds):
        spent: dict[str, float] = {}
        served: dict[str, float] = {}
        for name, (method, url, body) in targets.items():
            started, backend_started = time.process_time(), cpu_seconds(backend)
            for _ in range(options.requests):
                send(method, url, body)
            spent[name] = (time.process_time() - started) / options.requests * 1000
            served[name] = (cpu_seconds(backend) - backend_started) / options.requests * 1000
        rounds.append(spent)
        database.append(served)
    print(
        f"CPU per request in ms over {options.rounds} interleaved rounds of {options.requests}: "
        "the least (the round least disturbed by other work on the machine) and the median, "
        "and the floor's least over the path's; the PostgreSQL backend's CPU per request "
        "(median); Python function calls per request:"
    )
    calls = {name: _calls(send, *target) for name, target in targets.items()}
    for name, (method, _url, _body) in targets.items():
        floor = "floor-post" if method == "POST" else "floor-get"
        least = min(spent[name] for spent in rounds)
        middle = statistics.median(spent[name] for spent in rounds)
        share = min(spent[floor] for spent in rounds) / least
        pg = statistics.median(served[name] for served in database)
        print(
            f"  {name:<12} {least:6.3f} ms (median {middle:6.3f})  floor / path {share:5.2f}"
            f"  PostgreSQL {pg:5.3f} ms"
            f"  {calls[name]:6,.0f} Python calls ({calls[floor] / calls[name]:.2f} of the floor's)"
        )
    if options.profile:
        options.profile.mkdir(parents=True, exist_ok=True)
        for name, (method, url, body) in targets.items():
            profile = cProfile.Profile(time.process_time)
            profile.enable()
            for _ in range(options.requests):
                send(method, url, body)
            profile.disable()
            target = options.profile / f"{name}.prof"
            profile.dump_stats(target)
            out = io.StringIO()
            pstats.Stats(profile, stream=out).sort_stats("tottime").print_stats(options.top)
            print(f"\n=== {name}: top functions by own time ({target})")
            print(out.getvalue().split("\n", 6)[-1])


if __name__ == "__main__":
    main()
