"""Ingestion, reads and memory of the API under gunicorn on PostgreSQL (SPEC section 10).

Creates a fresh database ``bench_usage_limits`` (or ``$BENCH_DATABASE``), migrates it,
gives every account ten scoped limits of mixed shapes through the real service
(``--lines``), starts gunicorn (2 sync workers) on a free port of 127.0.0.1, then
measures and prints, with labels on the events:

a. batch ingestion through HTTP (batches of 1000, 2 client threads): events/s;
b. the ceiling: hand-written idempotent SQL writing the same rows (events, label sets, day
   and hour counters of each event's metric and of the label keys of the scoped limits its
   labels contain) through psycopg (2 connections), rows/s, and
   the ratio HTTP / SQL; a and b take turns in 3 rounds;
c. the floors (a plain Django view, and a DRF view behind the real token authentication
   and permissions doing nothing, served by ``bench/urls.py``) and the per-request paths
   (``GET .../usage/``, capacities, the pre-flight check with labels, single-event
   ``POST``), by the same client,
   interleaved in 3 rounds: the median requests/s with its spread, p50 and p99, and each
   path as a share of its floor;
d. usage read, capacities and pre-flight: p50 and p99 at 1,000 events of the account,
   then after loading the table to 1,000,000 events (100,000 with ``--quick``; or
   ``--table-events``), an account with many events against one with 1,000, side by side;
e. memory: peak RSS (``VmHWM``) of each gunicorn worker;
f. crossing to e-mail handed to the provider: gunicorn and a Celery worker on Redis, events
   through HTTP that each cross a threshold, from the request to ``Delivery.sent_at``;
   the worker's peak RSS;
g. with ``--compare-servers``, the floors and the main paths again under each gunicorn
   configuration (worker class and count).

Part c also posts reservations against the authenticated floor, and has 20 clients race
for the last capacity of one account (exact or not).

Every figure is printed next to its target with PASS or FAIL (and with ``--results``
written as JSON for ``performance.py``). The database is left in place for inspection
and dropped by the next run. Run from the project root:

    .venv/bin/python bench/ingest.py [--quick] [--strict] [--parts abcdef] [--threads N]
        [--profile DIR]
        [--cache-url URL] [--token-cache-seconds N] [--lines-memory-seconds N]
        [--lines N] [--table-events N]
        [--server KIND] [--compare-servers LIST] [--compare-threads N] [--crossings N]
        [--broker-url URL] [--results FILE]
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
from machine import cpu_busy, python_speed  # bench/ is the script's own folder
from results import Figure, load_average, results_write, versions

ROOT = Path(__file__).resolve().parent.parent
PYTHON = ROOT / ".venv" / "bin" / "python"
GUNICORN = ROOT / ".venv" / "bin" / "gunicorn"
PY_SPY = ROOT / ".venv" / "bin" / "py-spy"
HOST = "127.0.0.1"
DB_NAME = os.environ.get("BENCH_DATABASE", "bench_usage_limits")
SERVER_DSN = f"postgresql://postgres@{HOST}:5432/postgres"
DATABASE_URL = f"postgres://postgres@{HOST}:5432/{DB_NAME}"
BATCH = 1000
METRICS = ("audio_transcribed_seconds", "audio_analyzed_seconds", "text_tokens")
ZONES = ("UTC", "Europe/Paris", "America/New_York", "Asia/Tokyo")
SOURCE = "bench"
METADATA = {"model": "large"}
# Labels as clients send them (SPEC 11.1): a few values per key, and one event in seven
# without any. Each event adds to the day and hour counters of its metric and of the label
# keys of the account's scoped limits that its labels contain (0 to 2 here).
LABEL_CHOICES = (
    {},
    {"technology": "llm", "vendor": "acme", "operation": "chat"},
    {"technology": "llm", "vendor": "zeta", "operation": "chat"},
    {"technology": "llm", "vendor": "acme", "operation": "embed"},
    {"technology": "asr", "vendor": "acme"},
    {"technology": "asr", "vendor": "nova", "operation": "transcribe"},
    {"technology": "llm", "vendor": "nova"},
)
# The scoped limits of every account (SPEC 11.2), in mixed shapes: calendar periods from the
# minute to the month, rolling windows, with and without labels. Thresholds are far above
# what the bench records, so no line is ever reached and no notification is sent.
HIGH = 10**12
SCOPED_LIMITS: tuple[dict[str, Any], ...] = (
    {"metric": "text_tokens", "period": "day", "window_days": None, "labels": {}},
    {"metric": "text_tokens", "period": "week", "window_days": None, "labels": {}},
    {"metric": "text_tokens", "period": "hour", "window_days": None, "labels": {}},
    {"metric": "text_tokens", "period": "rolling", "window_days": 7, "labels": {}},
    {"metric": "text_tokens", "period": "month", "window_days": None, "labels": {"vendor": "acme"}},
    {
        "metric": "text_tokens",
        "period": "day",
        "window_days": None,
        "labels": {"technology": "llm", "operation": "chat"},
    },
    {"metric": "text_tokens", "period": "minute", "window_days": None, "labels": {}},
    {
        "metric": "text_tokens",
        "period": "rolling",
        "window_days": 30,
        "labels": {"technology": "llm"},
    },
    {
        "metric": "audio_transcribed_seconds",
        "period": "day",
        "window_days": None,
        "labels": {"technology": "asr"},
    },
    {
        "metric": "audio_analyzed_seconds",
        "period": "week",
        "window_days": None,
        "labels": {"vendor": "nova"},
    },
)
# The pre-flight's body: labels to which 8 of the 10 lines above apply, with the monthly
# whole-metric line.
CHECK_BODY = {
    "metric": "text_tokens",
    "quantity": 1000,
    "labels": {"technology": "llm", "vendor": "acme", "operation": "chat"},
}
LOAD_SPREAD = timedelta(days=40)  # the probes' events and the table's load: every window full
WORKERS = 2  # gunicorn workers (sync unless --server says otherwise)
STREAMS = 2  # concurrent clients (part a) and connections (part b)
ROUNDS = 3  # parts a and b take turns this many times

CACHE_URL = "redis://127.0.0.1:6379/14"  # the throttle's counts and the token cache
BROKER_URL = "redis://127.0.0.1:6379/15"  # part f's Celery broker

# SPEC section 10.
TARGET_BATCH_EVENTS_S = 15_000
TARGET_BATCH_RATIO = 0.60
TARGET_SINGLE_SHARE = 0.60  # of the authenticated floor's requests/s
TARGET_SINGLE_P99_MS = 25
TARGET_CHECK_SHARE = 0.75
TARGET_CHECK_P99_FLOOR = 2  # p99 at most twice the authenticated floor's
TARGET_READ_SHARE = 0.65
TARGET_READ_RATIO = 1.2  # p99 at the large table over p99 at the small one
TARGET_RESERVE_SHARE = 0.60  # of the authenticated floor's POST requests/s
TARGET_CROSSING_P50_MS = 500  # from the request to the e-mail handed to the provider
TARGET_CROSSING_P99_MS = 2000
TARGET_RSS_MB = 150

# The race of part c: ``RACERS`` clients at once each reserve ``RACE_QUANTITY`` on one account
# whose blocked threshold leaves room for ``RACE_FITS`` of them.
RACERS = 20
RACE_BLOCKED = 10_000
RACE_USED = 5_500
RACE_QUANTITY = 1_000
RACE_FITS = (RACE_BLOCKED - RACE_USED) // RACE_QUANTITY


@dataclass(frozen=True)
class Sizes:
    """How much work each part does."""

    accounts: int  # accounts posting in parts a-c; two more are the probes of parts c, d
    batches: int  # batches of 1000 for part a, and as many for part b
    floor_requests: int  # per path and round of part c
    threads: int  # client threads of part c
    read_requests: int  # per path, probe, round and table size (part d)
    table_events: int  # events stored when part d reads the second time
    lines: int = len(SCOPED_LIMITS)  # scoped limits per account


FULL = Sizes(
    accounts=50,
    batches=150,
    floor_requests=1000,
    threads=2,
    read_requests=500,
    table_events=1_000_000,
)
QUICK = Sizes(
    accounts=50,
    batches=40,
    floor_requests=300,
    threads=2,
    read_requests=150,
    table_events=100_000,
)


@dataclass(frozen=True)
class Account:
    id: uuid.UUID
    zone: ZoneInfo


@dataclass(frozen=True)
class Event:
    """One usage event, with what both paths need: the JSON fields and the local day."""

    account: Account
    event_id: str
    metric: str
    quantity_milli: int
    occurred_at: datetime
    labels: dict[str, str] = field(default_factory=dict)

    @property
    def day(self) -> date:
        return self.occurred_at.astimezone(self.account.zone).date()

    @property
    def hour(self) -> datetime:
        """The start of the event's local hour, in UTC (the bench's zones are on whole hours)."""
        return self.occurred_at.astimezone(UTC).replace(minute=0, second=0, microsecond=0)

    @property
    def labels_key(self) -> str:
        return ";".join(f"{key}={self.labels[key]}" for key in sorted(self.labels))

    def as_json(self) -> dict[str, Any]:
        quantity: int | float = self.quantity_milli // 1000
        if self.metric != "text_tokens":
            quantity = self.quantity_milli / 1000  # at most 3 decimals once printed
        return {
            "event_id": self.event_id,
            "account": str(self.account.id),
            "metric": self.metric,
            "quantity": quantity,
            "occurred_at": self.occurred_at.astimezone(self.account.zone).isoformat(),
            "source": SOURCE,
            "metadata": METADATA,
            "labels": self.labels,
        }


@dataclass
class Result:
    """One figure, its target and whether it was met."""

    name: str
    value: str
    target: str
    ok: bool | None  # None: informative only


@dataclass
class Report:
    results: list[Result] = field(default_factory=list)
    tables: dict[str, list[list[str]]] = field(default_factory=dict)  # for the doc

    def add(self, name: str, value: str, target: str = "", ok: bool | None = None) -> None:
        self.results.append(Result(name, value, target, ok))
        verdict = "" if ok is None else ("PASS" if ok else "FAIL")
        print(f"  {name:<44} {value:>14}  {target:<16} {verdict}", flush=True)

    def summary(self) -> str:
        lines = [f"{'figure':<44} {'measured':>14}  {'target':<16} verdict"]
        for r in self.results:
            verdict = "" if r.ok is None else ("PASS" if r.ok else "FAIL")
            lines.append(f"{r.name:<44} {r.value:>14}  {r.target:<16} {verdict}")
        return "\n".join(lines)

    @property
    def failed(self) -> bool:
        return any(r.ok is False for r in self.results)


# --- Database, Django and gunicorn ----------------------------------------------------


def server_env(**extra: str) -> dict[str, str]:
    """The environment of ``manage.py`` and gunicorn: PostgreSQL, eager Celery, no debug."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CELERY_", "DJANGO_"))}
    env.update(
        DATABASE_URL=DATABASE_URL,
        DEBUG="0",
        ALLOWED_HOSTS=HOST,
        SECRET_KEY="bench",
        CONN_MAX_AGE="600",
        EMAIL_BACKEND="django.core.mail.backends.locmem.EmailBackend",
        # One token sends everything: rates far above what it can reach keep the throttle's
        # work in the measured path without ever refusing a request.
        API_THROTTLE_INGEST="100000000/min",
        API_THROTTLE_CHECK="100000000/min",
    )
    env.update(extra)
    return env


def database_create() -> None:
    """Drop ``bench_usage_limits`` if it exists, create it empty, and migrate it."""
    with psycopg.connect(SERVER_DSN, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {DB_NAME} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {DB_NAME}")
    manage("migrate", "--noinput", "-v", "0")


def manage(*args: str) -> str:
    """Run ``manage.py`` with the bench environment; returns its standard output."""
    done = subprocess.run(
        [str(PYTHON), "manage.py", *args],
        cwd=ROOT,
        env=server_env(),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if done.returncode != 0:
        sys.exit(f"manage.py {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
    return done.stdout


def accounts_create(count: int, prefix: str = "bench") -> list[Account]:
    """Create ``count`` Enterprise accounts without limits, in a few time zones, their
    external ids starting with ``prefix``."""
    code = (
        "from accounts.models import Account\n"
        f"Account.objects.bulk_create([Account(external_id=f'{prefix}-{{i:04d}}', "
        f"name=f'{prefix} {{i}}', timezone={ZONES!r}[i % {len(ZONES)}]) for i in range({count})])\n"
    )
    manage("shell", "-c", code)
    with sql_connect() as conn:
        rows = conn.execute(
            "SELECT id, timezone FROM accounts_account WHERE external_id LIKE %s "
            "ORDER BY external_id",
            [f"{prefix}-%"],
        ).fetchall()
    return [Account(id=row[0], zone=ZoneInfo(row[1])) for row in rows]


def limits_set(accounts: list[Account], document: dict[str, Any]) -> None:
    """Give each of ``accounts`` the limits ``document``, through the service the API calls."""
    ids = [str(account.id) for account in accounts]
    code = (
        "from accounts.models import Account\n"
        "from backoffice.services import limits_replace\n"
        f"for account in Account.objects.filter(pk__in={ids!r}):\n"
        f"    limits_replace(account=account, data={document!r}, reason='bench')\n"
    )
    manage("shell", "-c", code)


def scoped_limits_set(count: int) -> int:
    """Give every bench account the first ``count`` of ``SCOPED_LIMITS``, through the service.

    ``backoffice.services.limits_replace`` validates and writes them as the API, the admin
    and ``set_limits`` do (history included). Returns how many scoped limits are stored.
    """
    if count == 0:
        return 0
    lines = [
        {**line, "warning": HIGH // 2 if i % 2 else None, "blocked": HIGH}
        for i, line in enumerate(SCOPED_LIMITS[:count])
    ]
    document = {
        "recipients": {"warning": [{"email": "bench@example.com", "language": "en"}]},
        "scoped_limits": lines,
    }
    code = (
        "from accounts.models import Account\n"
        "from backoffice.services import limits_replace\n"
        "for account in Account.objects.filter(external_id__startswith='bench-'):\n"
        f"    limits_replace(account=account, data={document!r}, reason='bench')\n"
    )
    manage("shell", "-c", code)
    with sql_connect() as conn:
        row = conn.execute("SELECT count(*) FROM accounts_scopedlimit").fetchone()
    assert row is not None
    return int(row[0])


def token_create() -> str:
    """A service token for the "Usage services" group; the key is alone on the last line."""
    return manage("create_service_token", "bench").strip().splitlines()[-1].strip()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


@dataclass(frozen=True)
class Server:
    """A gunicorn configuration: worker class, workers, threads per worker (gthread)."""

    worker_class: str = "sync"
    workers: int = WORKERS
    threads: int = 1

    @classmethod
    def parse(cls, text: str) -> Server:
        """``sync:2``, ``sync:4`` or ``gthread:2x4`` (2 workers of 4 threads)."""
        kind, _colon, count = text.partition(":")
        if kind not in ("sync", "gthread") or not count:
            raise ValueError(f"{text!r}: expected sync:N or gthread:NxT")
        workers, _x, threads = count.partition("x")
        if kind == "sync" and threads:
            raise ValueError(f"{text!r}: sync workers have one thread each")
        server = cls(kind, int(workers), int(threads or (4 if kind == "gthread" else 1)))
        if not (1 <= server.workers <= 16 and 1 <= server.threads <= 32):
            raise ValueError(f"{text!r}: 1 to 16 workers, 1 to 32 threads")
        return server

    def __str__(self) -> str:
        if self.worker_class == "sync":
            return f"sync:{self.workers}"
        return f"gthread:{self.workers}x{self.threads}"

    def arguments(self) -> list[str]:
        found = ["--workers", str(self.workers), "--worker-class", self.worker_class]
        if self.worker_class == "gthread":
            found += ["--threads", str(self.threads)]
        return found


@contextmanager
def gunicorn(
    port: int, token: str, env: dict[str, str], server: Server | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """Serve the project with ``server`` (``WORKERS`` sync workers by default) until the
    block ends (even on error).

    ``env`` is added to the server's environment. The server's output goes to a temporary
    log, removed unless something failed.
    """
    server = server or Server()
    log = tempfile.NamedTemporaryFile(prefix="bench-gunicorn-", suffix=".log", delete=False)  # noqa: SIM115
    command = [str(GUNICORN), "config.wsgi", *server.arguments(), "--bind", f"{HOST}:{port}"]
    process = subprocess.Popen(
        command, cwd=ROOT, env=server_env(**env), stdout=log, stderr=subprocess.STDOUT
    )
    failed = True
    try:
        client = Client(port, token)
        for _attempt in range(150):  # up to ~30 s
            if process.poll() is not None:
                raise RuntimeError(f"gunicorn exited with {process.returncode}; see {log.name}")
            try:
                if client.request("GET", "/api/v1/accounts/?page_size=1")[0] == 200:
                    break
            except (http.client.HTTPException, OSError):
                pass
            time.sleep(0.2)
        else:
            raise RuntimeError(f"gunicorn did not answer in time; see {log.name}")
        client.close()
        yield process
        failed = False
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)
        log.close()
        if failed:
            print(f"gunicorn's log: {log.name}", file=sys.stderr)
        else:
            Path(log.name).unlink()


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def process_stat(pid: int) -> tuple[str, int, float] | None:
    """A process's command name, parent's id and CPU seconds so far (user and system), from
    ``/proc/<pid>/stat``; ``None`` once it has exited."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name is in parentheses and may hold spaces; after it, state is field 3
    # of the line, the parent 4, utime 14 and stime 15.
    head, _, tail = stat.rpartition(")")
    fields = tail.split()
    return head.partition("(")[2], int(fields[1]), (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def processes() -> Iterator[tuple[int, str, int, float]]:
    """Every process: its id, then what ``process_stat`` reads of it, in one pass."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (found := process_stat(int(entry.name))) is not None:
            yield int(entry.name), *found


def worker_pids(master: int) -> list[int]:
    """The processes whose parent is ``master`` (gunicorn's workers)."""
    return sorted(pid for pid, _name, parent, _seconds in processes() if parent == master)


def memory_kb(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


# --- CPU per request, per process kind ---------------------------------------------------

# Where a request's CPU goes, in the order of the printed table.
CPU_KINDS = ("client", "web workers", "PostgreSQL", "Redis")
# The kind of a process by its command name (gunicorn's workers: by their parent).
CPU_KIND_OF_COMMAND = {"postgres": "PostgreSQL", "redis-server": "Redis"}


@dataclass
class CpuMeter:
    """CPU time spent, during a block, by the client (this process: its threads send the
    requests), gunicorn's workers, PostgreSQL's processes and Redis: what each request
    costs each of them. On a machine whose cores the run keeps busy, requests/s is about
    the cores divided by the sum, so the difference between a path and its floor is where
    the path's share goes."""

    master: int

    def snapshot(self) -> dict[str, dict[int, float]]:
        """CPU seconds so far of every process of each kind, by process id."""
        taken: dict[str, dict[int, float]] = {kind: {} for kind in CPU_KINDS}
        for pid, name, parent, seconds in processes():
            kind = "web workers" if parent == self.master else CPU_KIND_OF_COMMAND.get(name)
            if kind is not None:
                taken[kind][pid] = seconds
        taken["client"] = {os.getpid(): time.process_time()}
        return taken

    @staticmethod
    def per_request(
        before: dict[str, dict[int, float]], after: dict[str, dict[int, float]], requests: int
    ) -> dict[str, float]:
        """Milliseconds of CPU per request of each kind between two snapshots; a process
        started in between counts from zero, one that exited is left out."""
        spent = {}
        for kind in CPU_KINDS:
            then = before.get(kind, {})
            used = sum(now - then.get(pid, 0.0) for pid, now in after.get(kind, {}).items())
            spent[kind] = max(used, 0.0) * 1000 / requests
        return spent

    @contextmanager
    def adding_to(self, spent: dict[str, float]) -> Iterator[None]:
        """Add to ``spent`` (milliseconds by kind) what each kind spends during the block."""
        before = self.snapshot()
        yield
        for kind, used in self.per_request(before, self.snapshot(), 1).items():
            spent[kind] = spent.get(kind, 0.0) + used


# --- Profiling (optional) ---------------------------------------------------------------


@contextmanager
def profiled(directory: Path | None, part: str, master: int) -> Iterator[None]:
    """Sample every gunicorn worker with py-spy during the block, then print where time went.

    Does nothing when ``directory`` is ``None``. The raw samples (collapsed stacks, one
    file per worker) are kept in ``directory``.
    """
    if directory is None:
        yield
        return
    directory.mkdir(parents=True, exist_ok=True)
    spies = []
    for pid in worker_pids(master):
        output = directory / f"{part}-{pid}.txt"
        command = [str(PY_SPY), "record", "--pid", str(pid), "--format", "raw"]
        command += ["--rate", "200", "--nonblocking", "--output", str(output)]
        spy = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        spies.append((spy, output))
    time.sleep(1)  # py-spy attaches
    try:
        yield
    finally:
        for spy, _output in spies:
            spy.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
        for spy, _output in spies:
            try:
                spy.wait(timeout=30)
            except subprocess.TimeoutExpired:
                spy.kill()
        print(profile_summary([output for _spy, output in spies if output.exists()]))


def profile_summary(files: list[Path], top: int = 30) -> str:
    """The functions holding the most samples (inclusive), leaving out the server's plumbing.

    The plumbing: frames present in more than 90 % of the samples (gunicorn, middleware).
    """
    total = 0
    inclusive: defaultdict[str, int] = defaultdict(int)
    for path in files:
        for line in path.read_text().splitlines():
            stack, _space, count = line.rpartition(" ")
            total += int(count)
            # A frame is "function (file:line)": drop the line to add up whole functions.
            for frame in {frame.rsplit(":", 1)[0] + ")" for frame in stack.split(";")}:
                inclusive[frame] += int(count)
    if not total:
        return "  (no samples)"
    lines = [f"  where the workers spent their time ({total} samples, inclusive):"]
    ranked = sorted(inclusive.items(), key=lambda item: -item[1])
    shown = [(frame, n) for frame, n in ranked if n / total < 0.9][:top]
    lines += [f"  {n / total:6.1%}  {frame}" for frame, n in shown]
    return "\n".join(lines)


# --- HTTP client ------------------------------------------------------------------------


class Client:
    """A keep-alive HTTP client for the API.

    gunicorn's sync workers close the connection after each response; ``http.client``
    then opens a new one for the next request, as a production client would.
    """

    def __init__(self, port: int, token: str) -> None:
        self.connection = http.client.HTTPConnection(HOST, port, timeout=30)
        self.headers = {"Authorization": f"Token {token}", "Content-Type": "application/json"}

    def request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        for attempt in range(2):
            try:
                self.connection.request(method, path, body=body, headers=self.headers)
                response = self.connection.getresponse()
                return response.status, response.read()
            except (http.client.HTTPException, OSError) as error:
                self.connection.close()  # the next request opens a new connection
                closed = isinstance(error, http.client.RemoteDisconnected | ConnectionResetError)
                # The server closed an idle connection: every request here is idempotent.
                if attempt or not closed:
                    raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        self.connection.close()


def percentile(samples: list[float], p: float) -> float:
    """The nearest-rank percentile ``p`` (0-100) of ``samples``."""
    ordered = sorted(samples)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def run_threads(threads: int, work: Callable[[int], None]) -> float:
    """Run ``work(index)`` in ``threads`` threads; returns the wall time in seconds."""
    errors: list[BaseException] = []

    def guarded(index: int) -> None:
        try:
            work(index)
        except BaseException as error:
            errors.append(error)

    pool = [threading.Thread(target=guarded, args=(i,)) for i in range(threads)]
    started = time.perf_counter()
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    elapsed = time.perf_counter() - started
    if errors:
        raise errors[0]
    return elapsed


# --- Events ---------------------------------------------------------------------------


def events_make(
    accounts: list[Account], prefix: str, count: int, now: datetime, spread: timedelta
) -> list[Event]:
    """``count`` new events with unique ids, over ``accounts`` and the 3 metrics."""
    rng = random.Random(prefix)
    seconds = int(spread.total_seconds())
    events = []
    for i in range(count):
        metric = METRICS[i % len(METRICS)]
        if metric == "text_tokens":
            quantity_milli = rng.randint(1, 5000) * 1000
        else:
            quantity_milli = rng.randint(1, 600_000)  # 0.001 s to 10 min
        events.append(
            Event(
                account=accounts[rng.randrange(len(accounts))],
                event_id=f"{prefix}-{i:08d}",
                metric=metric,
                quantity_milli=quantity_milli,
                occurred_at=now - timedelta(seconds=rng.randrange(seconds)),
                labels=LABEL_CHOICES[i % len(LABEL_CHOICES)],
            )
        )
    return events


def batches_of(events: list[Event]) -> list[list[Event]]:
    return [events[i : i + BATCH] for i in range(0, len(events), BATCH)]


# --- The ceiling: hand-written idempotent SQL through psycopg --------------------------

# Parameters are bound server-side and in binary (``%b``): quoting the 7,000 values of a
# batch into the SQL text, as Django's default client-side binding does, costs about 25 ms
# of client CPU per batch on the reference machine, and PostgreSQL parses text arrays
# (JSON text above all) more slowly than binary ones.

EVENTS_SQL = (
    "INSERT INTO usage_usageevent (account_id, event_id, metric, quantity_milli, occurred_at,"
    " received_at, source, metadata, labels) "
    "SELECT a, e, m, q, o, %b, s, md::jsonb, l::jsonb FROM unnest("
    "%b::uuid[], %b::text[], %b::text[], %b::bigint[], %b::timestamptz[], %b::text[], %b::text[],"
    " %b::text[]) AS t(a, e, m, q, o, s, md, l) "
    "ON CONFLICT (account_id, event_id) DO NOTHING RETURNING account_id, event_id"
)
# The label sets seen per account, metric and day, for the bound: the new ones are returned,
# and counted against the day's only when there are any (as the service does).
LABEL_SETS_SQL = (
    "INSERT INTO usage_usagelabelset (account_id, metric, day, labels) "
    "SELECT * FROM unnest(%b::uuid[], %b::text[], %b::date[], %b::text[]) "
    "ON CONFLICT (account_id, metric, day, labels) DO NOTHING RETURNING account_id, metric, day"
)
LABEL_SETS_COUNT_SQL = (
    "SELECT account_id, metric, day, count(*) FROM usage_usagelabelset "
    "WHERE (account_id, metric, day) IN (SELECT * FROM unnest(%b::uuid[], %b::text[], %b::date[]))"
    " GROUP BY 1, 2, 3"
)
# Day and hour counters of each event's metric and counted label keys, in one statement.
COUNTERS_SQL = (
    "WITH h AS (INSERT INTO usage_usagehourcounter"
    " (account_id, metric, labels, hour, day, quantity_milli, updated_at)"
    " SELECT a, m, l, h, d, q, %b FROM unnest(%b::uuid[], %b::text[], %b::text[],"
    " %b::timestamptz[], %b::date[], %b::bigint[]) AS t(a, m, l, h, d, q)"
    " ON CONFLICT (account_id, metric, labels, hour) DO UPDATE SET"
    " quantity_milli = usage_usagehourcounter.quantity_milli + excluded.quantity_milli,"
    " updated_at = excluded.updated_at) "
    "INSERT INTO usage_usagecounter (account_id, metric, labels, day, quantity_milli, updated_at) "
    "SELECT a, m, l, d, q, %b FROM unnest(%b::uuid[], %b::text[], %b::text[], %b::date[],"
    " %b::bigint[]) AS t(a, m, l, d, q) "
    "ON CONFLICT (account_id, metric, labels, day) DO UPDATE SET "
    "quantity_milli = usage_usagecounter.quantity_milli + excluded.quantity_milli, "
    "updated_at = excluded.updated_at"
)


def counted_keys(lines: int) -> dict[str, tuple[str, ...]]:
    """Per metric, the label keys whose counters the service keeps for the first ``lines``
    scoped limits (``usage.models.UsageCounterKey``): those of the lines with labels, but
    ``minute`` lines, which read their events."""
    found: dict[str, set[str]] = defaultdict(set)
    for line in SCOPED_LIMITS[:lines]:
        if line["labels"] and line["period"] != "minute":
            labels = line["labels"]
            found[line["metric"]].add(";".join(f"{k}={labels[k]}" for k in sorted(labels)))
    return {metric: tuple(sorted(keys)) for metric, keys in found.items()}


def counters_of(labels: str, counted: tuple[str, ...]) -> tuple[str, ...]:
    """The counters an event adds to: ``""``, and each counted key its labels contain."""
    pairs = set(labels.split(";")) if labels else set()
    return ("", *(key for key in counted if pairs.issuperset(key.split(";"))))


@dataclass(frozen=True)
class SqlBatch:
    """A batch as the SQL path takes it: column arrays, and each event's counter key."""

    columns: list[list[Any]]
    by_key: dict[tuple[uuid.UUID, str], tuple[str, date, datetime, str, int]]

    @classmethod
    def of(cls, events: list[Event]) -> SqlBatch:
        metadata = json.dumps(METADATA, separators=(",", ":"))
        ordered = sorted(events, key=lambda e: (e.account.id, e.event_id))
        return cls(
            columns=[
                [e.account.id for e in ordered],
                [e.event_id for e in ordered],
                [e.metric for e in ordered],
                [e.quantity_milli for e in ordered],
                [e.occurred_at for e in ordered],
                [SOURCE] * len(ordered),
                [metadata] * len(ordered),
                [json.dumps(e.labels, sort_keys=True) for e in ordered],
            ],
            by_key={
                (e.account.id, e.event_id): (
                    e.metric,
                    e.day,
                    e.hour,
                    e.labels_key,
                    e.quantity_milli,
                )
                for e in events
            },
        )


def sql_connect(*, autocommit: bool = False) -> psycopg.Connection[Any]:
    return psycopg.connect(f"dbname={DB_NAME} host={HOST} user=postgres", autocommit=autocommit)


# Per metric, the label keys counted for every bench account (``main`` sets it from --lines).
COUNTED: dict[str, tuple[str, ...]] = counted_keys(len(SCOPED_LIMITS))


def sql_ingest(conn: psycopg.Connection[Any], batch: SqlBatch) -> int:
    """One transaction: insert the new events, add them to their counters; returns how many.

    The same rows as the service writes: the events, their label sets, and the day and hour
    counters of each event's metric and of the counted label keys its labels contain.
    """
    now = datetime.now(UTC)
    with conn.cursor() as cursor:
        cursor.execute(EVENTS_SQL, [now, *batch.columns])
        inserted = cursor.fetchall()
        groups: dict[tuple[uuid.UUID, str, str, date, datetime], int] = defaultdict(int)
        sets: set[tuple[uuid.UUID, str, date, str]] = set()
        for account_id, event_id in inserted:
            metric, day, hour, labels, quantity_milli = batch.by_key[(account_id, event_id)]
            groups[(account_id, metric, labels, day, hour)] += quantity_milli
            if labels:
                sets.add((account_id, metric, day, labels))
        if sets:
            ordered = sorted(sets)
            cursor.execute(LABEL_SETS_SQL, [[k[i] for k in ordered] for i in range(4)])
            new = sorted(set(cursor.fetchall()))
            if new:
                cursor.execute(LABEL_SETS_COUNT_SQL, [[k[i] for k in new] for i in range(3)])
                cursor.fetchall()
        days: dict[tuple[uuid.UUID, str, str, date], int] = defaultdict(int)
        hours: dict[tuple[uuid.UUID, str, str, datetime, date], int] = defaultdict(int)
        for (account_id, metric, labels, day, hour), quantity_milli in groups.items():
            for key in counters_of(labels, COUNTED.get(metric, ())):
                days[(account_id, metric, key, day)] += quantity_milli
                hours[(account_id, metric, key, hour, day)] += quantity_milli
        day_keys, hour_keys = sorted(days), sorted(hours)  # a stable order: never deadlocks
        if day_keys:
            cursor.execute(
                COUNTERS_SQL,
                [
                    now,
                    *([k[i] for k in hour_keys] for i in range(5)),
                    [hours[k] for k in hour_keys],
                    now,
                    *([k[i] for k in day_keys] for i in range(4)),
                    [days[k] for k in day_keys],
                ],
            )
    conn.commit()
    return len(inserted)


def sql_run(
    batches: Callable[[int], Iterator[SqlBatch]],
    connections: int,
    measured: AbstractContextManager[None] | None = None,
) -> tuple[float, int]:
    """Ingest what ``batches(i)`` yields on connection ``i``, all concurrently.

    Returns the wall time in seconds and the number of rows inserted. ``measured`` (a
    ``CpuMeter.adding_to``) is entered around the work, before the connections close,
    while their backends are there to be read.
    """
    conns = [sql_connect() for _ in range(connections)]
    inserted = [0] * connections

    def worker(index: int) -> None:
        for batch in batches(index):
            inserted[index] += sql_ingest(conns[index], batch)

    try:
        with measured or nullcontext():
            elapsed = run_threads(connections, worker)
    finally:
        for conn in conns:
            conn.close()
    return elapsed, sum(inserted)


def shares(items: list[Any], parts: int) -> Callable[[int], Iterator[Any]]:
    """Split ``items`` round-robin into ``parts``, one per worker."""
    return lambda index: iter(items[index::parts])


def events_count(account: Account | None = None) -> int:
    with sql_connect() as conn:
        if account is None:
            row = conn.execute("SELECT count(*) FROM usage_usageevent").fetchone()
        else:
            row = conn.execute(
                "SELECT count(*) FROM usage_usageevent WHERE account_id = %s", [account.id]
            ).fetchone()
    assert row is not None
    return int(row[0])


def counters_mismatches() -> tuple[int, int]:
    """Counters that differ from what they should hold; and how many counters were compared.

    Each day counter, of the whole metric or of a label key, against the sum of its events
    (by local day; for a key, the events whose labels contain its pairs), each day counter
    against the sum of its hour counters, and no counter of a key that no scoped limit of
    the account reads: both paths, HTTP and SQL, must have written the same rows.
    """
    with sql_connect() as conn:
        row = conn.execute(
            "WITH keys AS ("
            " SELECT account_id, metric, labels,"
            " jsonb_object_agg(split_part(pair, '=', 1), split_part(pair, '=', 2)) AS pairs"
            " FROM usage_usagecounterkey, unnest(string_to_array(labels, ';')) AS pair"
            " GROUP BY 1, 2, 3"
            " UNION ALL SELECT DISTINCT account_id, metric, '', '{}'::jsonb"
            " FROM usage_usageevent),"
            " sums AS ("
            " SELECT e.account_id, e.metric, k.labels,"
            " (e.occurred_at AT TIME ZONE a.timezone)::date AS day, sum(e.quantity_milli) AS total"
            " FROM usage_usageevent e JOIN accounts_account a ON a.id = e.account_id"
            " JOIN keys k ON k.account_id = e.account_id AND k.metric = e.metric"
            "  AND e.labels @> k.pairs"
            " GROUP BY 1, 2, 3, 4)"
            " SELECT count(*) FILTER (WHERE s.total IS DISTINCT FROM c.quantity_milli), count(*)"
            " FROM sums s FULL JOIN usage_usagecounter c USING (account_id, metric, labels, day)"
        ).fetchone()
        hours = conn.execute(
            "WITH sums AS (SELECT account_id, metric, labels, day, sum(quantity_milli) AS total"
            " FROM usage_usagehourcounter GROUP BY 1, 2, 3, 4)"
            " SELECT count(*) FILTER (WHERE s.total IS DISTINCT FROM c.quantity_milli), count(*)"
            " FROM sums s FULL JOIN usage_usagecounter c USING (account_id, metric, labels, day)"
        ).fetchone()
    assert row is not None and hours is not None
    return int(row[0]) + int(hours[0]), int(row[1]) + int(hours[1])


def settle() -> None:
    """Vacuum, analyze and checkpoint, then wait for autovacuum: reads are measured at rest.

    Right after a bulk load, autovacuum and a checkpoint would compete for the 2 cores with
    the requests measured; a table of 1,000,000 events in production is not being loaded.
    """
    with sql_connect(autocommit=True) as conn:
        conn.execute("VACUUM (ANALYZE) usage_usageevent, usage_usagecounter")
        conn.execute("CHECKPOINT")
        for _attempt in range(120):  # up to ~60 s
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE backend_type = 'autovacuum worker' AND datname = %s",
                [DB_NAME],
            ).fetchone()
            if row is None or row[0] == 0:
                return
            time.sleep(0.5)


# --- The parts ----------------------------------------------------------------------------


def http_bodies(accounts: list[Account], prefix: str, batches: int, now: datetime) -> list[bytes]:
    """``batches`` JSON bodies of 1000 new events each, ready to post."""
    events = events_make(accounts, prefix, batches * BATCH, now, timedelta(hours=48))
    return [
        json.dumps({"events": [e.as_json() for e in batch]}).encode()
        for batch in batches_of(events)
    ]


def sql_batches(
    accounts: list[Account], prefix: str, batches: int, now: datetime
) -> list[SqlBatch]:
    """``batches`` batches of 1000 new events each, as the SQL path takes them."""
    events = events_make(accounts, prefix, batches * BATCH, now, timedelta(hours=48))
    return [SqlBatch.of(batch) for batch in batches_of(events)]


def http_post_batches(port: int, token: str, bodies: list[bytes]) -> tuple[float, list[float]]:
    """Post ``bodies`` from ``STREAMS`` threads; returns the wall time and each latency (s)."""
    latencies: list[list[float]] = [[] for _ in range(STREAMS)]

    def post_all(index: int) -> None:
        client = Client(port, token)
        try:
            for body in bodies[index::STREAMS]:
                started = time.perf_counter()
                status, answer = client.request("POST", "/api/v1/usage/events/", body)
                latencies[index].append(time.perf_counter() - started)
                if status != 201 or json.loads(answer)["accepted"] != BATCH:
                    raise RuntimeError(f"a batch answered {status}: {answer[:500]!r}")
        finally:
            client.close()

    elapsed = run_threads(STREAMS, post_all)
    return elapsed, [s for per_thread in latencies for s in per_thread]


def part_batches(
    report: Report,
    port: int,
    token: str,
    accounts: list[Account],
    sizes: Sizes,
    now: datetime,
    master: int | None = None,
) -> None:
    """a. and b. Batches of 1000 through HTTP, then through the hand-written SQL ceiling.

    Both paths get ``STREAMS`` concurrent streams and take turns in ``ROUNDS`` rounds, so
    that a noisy neighbour slows both alike; each rate is its rows over its summed time.
    With ``master`` (gunicorn's), the CPU a batch costs each kind of process on each path.
    """
    meter = CpuMeter(master) if master is not None else None
    http_cpu: dict[str, float] = {}
    sql_cpu: dict[str, float] = {}
    per_round = max(1, sizes.batches // ROUNDS)
    bodies = http_bodies(accounts, "http", per_round * ROUNDS, now)
    prepared = sql_batches(accounts, "sql", per_round * ROUNDS, now)
    print(
        f"  {len(bodies)} batches of {BATCH} per path ({len(bodies[0]) // 1024} KiB of JSON "
        f"each), {STREAMS} streams each, {ROUNDS} rounds"
    )
    http_post_batches(port, token, http_bodies(accounts, "http-warm", 2 * STREAMS, now))
    sql_run(shares(sql_batches(accounts, "sql-warm", 2 * STREAMS, now), STREAMS), STREAMS)

    http_seconds = sql_seconds = 0.0
    latencies: list[float] = []
    rounds = []
    for number in range(ROUNDS):
        chunk = slice(number * per_round, (number + 1) * per_round)
        with meter.adding_to(http_cpu) if meter else nullcontext():
            elapsed, samples = http_post_batches(port, token, bodies[chunk])
        http_seconds += elapsed
        latencies += samples
        measured = meter.adding_to(sql_cpu) if meter else None
        sql_elapsed, inserted = sql_run(shares(prepared[chunk], STREAMS), STREAMS, measured)
        if inserted != per_round * BATCH:
            raise RuntimeError(f"{inserted} rows inserted out of {per_round * BATCH}")
        sql_seconds += sql_elapsed
        rounds.append(
            f"{per_round * BATCH / elapsed:,.0f} / {per_round * BATCH / sql_elapsed:,.0f}"
        )
    print(f"  rounds, HTTP / SQL rows/s: {'; '.join(rounds)}")

    http_rate = len(bodies) * BATCH / http_seconds
    sql_rate = len(prepared) * BATCH / sql_seconds
    ratio = http_rate / sql_rate
    report.add(
        "a. batch ingestion, HTTP",
        f"{http_rate:,.0f} ev/s",
        f">= {TARGET_BATCH_EVENTS_S:,}",
        http_rate >= TARGET_BATCH_EVENTS_S,
    )
    p50, p99 = percentile(latencies, 50) * 1000, percentile(latencies, 99) * 1000
    report.add("   batch latency p50 / p99", f"{p50:.0f} / {p99:.0f} ms")
    report.add("b. ceiling, hand-written SQL (psycopg)", f"{sql_rate:,.0f} rows/s")
    report.add(
        "   ratio HTTP / SQL",
        f"{ratio:.0%}",
        f">= {TARGET_BATCH_RATIO:.0%}",
        ratio >= TARGET_BATCH_RATIO,
    )
    if meter is not None:
        report.tables["a-cpu"] = table = batch_cpu_table(
            {"HTTP": http_cpu, "hand-written SQL": sql_cpu}, len(bodies)
        )
        print("  CPU per batch of 1,000 (ms):")
        for row in table:
            print("  " + " | ".join(row))


def batch_cpu_table(spent: dict[str, dict[str, float]], batches: int) -> list[list[str]]:
    """CPU per batch of each kind of process, for each path (``spent``: milliseconds by path
    and kind over ``batches`` batches), then the ceiling's sum over each path's: the ratio
    CPU alone allows when the run keeps the cores busy."""
    table = [["path", *(f"{kind} ms" for kind in CPU_KINDS), "total ms", "SQL total / total"]]
    totals = {
        path: {kind: kinds.get(kind, 0.0) / batches for kind in CPU_KINDS}
        for path, kinds in spent.items()
    }
    ceiling = sum(totals.get("hand-written SQL", {}).values())
    for path, cpu in totals.items():
        total = sum(cpu.values())
        bound = f"{ceiling / total:.2f}" if total and ceiling else ""
        table.append([path, *(f"{cpu[kind]:.1f}" for kind in CPU_KINDS), f"{total:.1f}", bound])
    return table


UNCACHED_FLOOR = "auth. floor GET, token from the DB"
ACCOUNT_FLOOR = "auth. floor GET + the account read"


@dataclass(frozen=True)
class Endpoint:
    """One path measured in part c, and the floor it is measured against."""

    name: str
    method: str
    path: str
    bodies: Callable[[str, int], list[bytes | None]]  # (prefix, count) -> a body a request
    floor: str | None  # the name of the floor endpoint; None for the plain floor itself
    status: int = 200
    share_target: float | None = None  # of the floor's requests/s (SPEC section 10)
    p99_floor_target: float | None = None  # at most this many times the floor's p99
    p99_ms_target: float | None = None


@dataclass
class Round:
    rate: float
    p50: float  # ms
    p99: float  # ms
    cpu: dict[str, float] = field(default_factory=dict)  # ms per request, by CPU_KINDS


def reservation_bodies(prefix: str, count: int) -> list[bytes | None]:
    """``count`` new reservations (unique ids) of the pre-flight's metric and labels, held a
    minute: they fit in any line of the bench's (thresholds far above), and expire soon."""
    return [
        json.dumps(
            {
                "reservation_id": f"{prefix}-{uuid.uuid4()}"[-128:],
                **CHECK_BODY,
                "quantity": 1,
                "ttl_seconds": 60,
            }
        ).encode()
        for _ in range(count)
    ]


def endpoints(
    accounts: list[Account], probe: Account, reserve: Account, now: datetime
) -> list[Endpoint]:
    """The floors, then the real per-request paths, in the order of the printed table.

    Reservations go to ``reserve``, an account of their own, so that the capacity they hold
    is not read by the probe's pre-flight and capacities.
    """
    check = json.dumps(CHECK_BODY).encode()

    def same(body: bytes | None) -> Callable[[str, int], list[bytes | None]]:
        return lambda _prefix, count: [body] * count

    def events(prefix: str, count: int) -> list[bytes | None]:
        made = events_make(accounts, prefix, count, now, timedelta(hours=1))
        return [json.dumps(e.as_json()).encode() for e in made]

    plain, auth_get, auth_post = (
        "plain floor",
        "authenticated floor GET",
        "authenticated floor POST",
    )
    return [
        Endpoint(plain, "GET", "/bench/floor/plain/", same(None), None),
        Endpoint(auth_get, "GET", "/bench/floor/authenticated/", same(None), plain),
        Endpoint(auth_post, "POST", "/bench/floor/authenticated/", same(check), plain),
        Endpoint(
            UNCACHED_FLOOR,
            "GET",
            "/bench/floor/authenticated-uncached/",
            same(None),
            plain,
        ),
        Endpoint(
            ACCOUNT_FLOOR,
            "GET",
            f"/bench/floor/account/{probe.id}/",
            same(None),
            auth_get,
        ),
        Endpoint(
            "GET .../usage/",
            "GET",
            f"/api/v1/accounts/{probe.id}/usage/",
            same(None),
            auth_get,
            share_target=TARGET_READ_SHARE,
        ),
        Endpoint(
            "GET .../capacities/",
            "GET",
            f"/api/v1/accounts/{probe.id}/capacities/",
            same(None),
            auth_get,
            share_target=TARGET_CHECK_SHARE,
            p99_floor_target=TARGET_CHECK_P99_FLOOR,
        ),
        Endpoint(
            "pre-flight POST .../usage/check/",
            "POST",
            f"/api/v1/accounts/{probe.id}/usage/check/",
            same(check),
            auth_post,
            share_target=TARGET_CHECK_SHARE,
            p99_floor_target=TARGET_CHECK_P99_FLOOR,
        ),
        Endpoint(
            "single-event POST /usage/events/",
            "POST",
            "/api/v1/usage/events/",
            events,
            auth_post,
            status=201,
            share_target=TARGET_SINGLE_SHARE,
            p99_ms_target=TARGET_SINGLE_P99_MS,
        ),
        Endpoint(
            "reservation POST .../usage/reservations/",
            "POST",
            f"/api/v1/accounts/{reserve.id}/usage/reservations/",
            reservation_bodies,
            auth_post,
            status=201,
            share_target=TARGET_RESERVE_SHARE,
        ),
    ]


def load(
    port: int,
    token: str,
    endpoint: Endpoint,
    bodies: list[bytes | None],
    threads: int,
    cpu: CpuMeter | None = None,
) -> Round:
    """Send ``bodies`` to ``endpoint`` from ``threads`` clients; requests/s and latencies,
    and with ``cpu`` the CPU each request cost each kind of process."""
    latencies: list[list[float]] = [[] for _ in range(threads)]

    def send(index: int) -> None:
        client = Client(port, token)
        try:
            for body in bodies[index::threads]:
                started = time.perf_counter()
                status, answer = client.request(endpoint.method, endpoint.path, body)
                latencies[index].append(time.perf_counter() - started)
                if status != endpoint.status:
                    raise RuntimeError(f"{endpoint.name} answered {status}: {answer[:500]!r}")
        finally:
            client.close()

    before = cpu.snapshot() if cpu else {}
    elapsed = run_threads(threads, send)
    spent = CpuMeter.per_request(before, cpu.snapshot(), len(bodies)) if cpu else {}
    every = [s for per_thread in latencies for s in per_thread]
    return Round(
        len(bodies) / elapsed, percentile(every, 50) * 1000, percentile(every, 99) * 1000, spent
    )


def median(values: list[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def floors_measure(
    port: int,
    token: str,
    paths: list[Endpoint],
    sizes: Sizes,
    tag: str,
    cpu: CpuMeter | None = None,
) -> tuple[dict[str, Round], dict[str, list[Round]]]:
    """Measure ``paths`` by the same client, interleaved in ``ROUNDS`` rounds.

    Each round sends ``sizes.floor_requests`` requests to each path from ``sizes.threads``
    threads, the paths in a rotated order. Returns the medians of the rounds per path (CPU
    per request included, with ``cpu``), and every round. ``tag`` starts the ids of new
    events, unique to each call.
    """
    for endpoint in paths:  # warm-up: connections, caches, the token's verification
        load(port, token, endpoint, endpoint.bodies(f"{tag}-warm", 50), sizes.threads)
    rounds: dict[str, list[Round]] = {e.name: [] for e in paths}
    for number in range(ROUNDS):
        order = paths[number % len(paths) :] + paths[: number % len(paths)]
        for endpoint in order:
            bodies = endpoint.bodies(f"{tag}-round{number}", sizes.floor_requests)
            rounds[endpoint.name].append(load(port, token, endpoint, bodies, sizes.threads, cpu))
    figures = {
        name: Round(
            median([r.rate for r in measured]),
            median([r.p50 for r in measured]),
            median([r.p99 for r in measured]),
            {
                kind: median([r.cpu[kind] for r in measured])
                for kind in CPU_KINDS
                if all(kind in r.cpu for r in measured)
            },
        )
        for name, measured in rounds.items()
    }
    return figures, rounds


def cpu_table(paths: list[Endpoint], figures: dict[str, Round]) -> list[list[str]]:
    """CPU per request of each kind of process, each path beside its floor: a header, then
    a row per path with the milliseconds of each kind, their sum, what the sum is over the
    floor's, and the share of the floor's requests/s that CPU alone would allow (the floor's
    sum over the path's), which the measured share is near when the cores are busy."""
    table = [["path", *(f"{kind} ms" for kind in CPU_KINDS), "total ms", "over its floor ms"]]
    table[0].append("floor total / total")
    for endpoint in paths:
        cpu = figures[endpoint.name].cpu
        if not cpu:
            continue
        total = sum(cpu.values())
        over = bound = ""
        if endpoint.floor is not None and figures[endpoint.floor].cpu:
            floor_total = sum(figures[endpoint.floor].cpu.values())
            over = f"{total - floor_total:+.2f}"
            bound = f"{floor_total / total:.2f}" if total else ""
        row = [endpoint.name, *(f"{cpu[kind]:.2f}" for kind in CPU_KINDS)]
        table.append([*row, f"{total:.2f}", over, bound])
    return table


def floors_table(
    paths: list[Endpoint], figures: dict[str, Round], rounds: dict[str, list[Round]]
) -> list[list[str]]:
    """Part c as a table: a header, then per path its rate, spread, p50, p99 and ratios."""
    table = [["path", "req/s", "spread", "p50 ms", "p99 ms", "share of its floor", "p99 / floor's"]]
    for endpoint in paths:
        got = figures[endpoint.name]
        rates = [r.rate for r in rounds[endpoint.name]]
        share = p99_ratio = ""
        if endpoint.floor is not None:
            floor = figures[endpoint.floor]
            share = f"{got.rate / floor.rate:.2f}"
            p99_ratio = f"{got.p99 / floor.p99:.2f}"
        table.append(
            [
                endpoint.name,
                f"{got.rate:,.0f}",
                f"{min(rates):,.0f}-{max(rates):,.0f}",
                f"{got.p50:.1f}",
                f"{got.p99:.1f}",
                share,
                p99_ratio,
            ]
        )
    return table


def part_floors(
    report: Report,
    port: int,
    token: str,
    accounts: list[Account],
    probe: Account,
    reserve: Account,
    sizes: Sizes,
    now: datetime,
    master: int | None = None,
) -> None:
    """c. The floors and the per-request paths, by the same client, interleaved in rounds.

    Each figure is the median of the rounds, each rate shown with its spread
    (lowest-highest); with ``master`` (gunicorn's), the CPU each request cost the client,
    the workers, PostgreSQL and Redis (``CpuMeter``).
    """
    paths = endpoints(accounts, probe, reserve, now)
    meter = CpuMeter(master) if master is not None else None
    figures, rounds = floors_measure(port, token, paths, sizes, "c", meter)
    print(
        f"  {sizes.floor_requests} requests per path and round, {sizes.threads} threads, "
        f"{ROUNDS} rounds; median (spread of the rate)"
    )
    table = floors_table(paths, figures, rounds)
    report.tables["c"] = table
    for row in table:
        print(
            f"  {row[0]:<42} {row[1]:>7} {row[2]:>13} {row[3]:>7} {row[4]:>7} {row[5]:>6} {row[6]:>6}"
        )
    if meter is not None:
        report.tables["c-cpu"] = cpu = cpu_table(paths, figures)
        print("  CPU per request (ms), medians of the rounds:")
        for row in cpu:
            print("  " + " | ".join(row))
    cached, uncached = figures["authenticated floor GET"], figures[UNCACHED_FLOOR]
    report.add(
        "c. token cache: floor GET req/s, cached / DB",
        f"{cached.rate / uncached.rate:.2f}",
    )
    for endpoint in paths:
        got = figures[endpoint.name]
        if endpoint.floor is None:
            report.add(f"c. {endpoint.name}", f"{got.rate:,.0f} req/s")
            continue
        floor = figures[endpoint.floor]
        share = got.rate / floor.rate
        target = "" if endpoint.share_target is None else f">= {endpoint.share_target:.2f}"
        ok = None if endpoint.share_target is None else share >= endpoint.share_target
        report.add(f"c. {endpoint.name}", f"{got.rate:,.0f} req/s")
        report.add("   share of its floor's req/s", f"{share:.2f}", target, ok)
        p99_ratio = got.p99 / floor.p99
        target, ok = "", None
        if endpoint.p99_floor_target is not None:
            target = f"<= {endpoint.p99_floor_target:.0f}x"
            ok = p99_ratio <= endpoint.p99_floor_target
        report.add("   p50 / p99", f"{got.p50:.1f} / {got.p99:.1f} ms")
        report.add("   p99 / its floor's p99", f"{p99_ratio:.2f}", target, ok)
        if endpoint.p99_ms_target is not None:
            report.add(
                "   p99",
                f"{got.p99:.1f} ms",
                f"< {endpoint.p99_ms_target:.0f} ms",
                got.p99 < endpoint.p99_ms_target,
            )


@dataclass(frozen=True)
class RaceOutcome:
    """What ``RACERS`` concurrent reservations for more than was left came to."""

    statuses: list[int]
    used_milli: int
    reserved_milli: int  # held by the active reservations afterwards
    blocked_milli: int
    fits: int  # how many reservations fit in what was left

    @property
    def granted(self) -> int:
        return self.statuses.count(201)

    @property
    def exact(self) -> bool:
        """Exactly those that fit got 201, the others 409, and the cap holds."""
        return (
            self.granted == self.fits
            and self.statuses.count(409) == len(self.statuses) - self.fits
            and self.used_milli + self.reserved_milli <= self.blocked_milli
        )


def race_reservations(port: int, token: str, account: Account) -> RaceOutcome:
    """``RACERS`` clients each reserve ``RACE_QUANTITY`` on ``account`` at the same instant
    (a barrier), then the stored usage and reservations are read from the database."""
    barrier = threading.Barrier(RACERS)
    statuses: list[int] = [0] * RACERS
    path = f"/api/v1/accounts/{account.id}/usage/reservations/"

    def reserve(index: int) -> None:
        client = Client(port, token)
        body = json.dumps(
            {
                "reservation_id": f"race-{index:02d}",
                "metric": "text_tokens",
                "quantity": RACE_QUANTITY,
                "ttl_seconds": 900,
            }
        ).encode()
        try:
            barrier.wait(timeout=30)
            statuses[index] = client.request("POST", path, body)[0]
        finally:
            client.close()

    run_threads(RACERS, reserve)
    with sql_connect() as conn:
        used = conn.execute(
            "SELECT coalesce(sum(quantity_milli), 0) FROM usage_usageevent "
            "WHERE account_id = %s AND metric = 'text_tokens'",
            [account.id],
        ).fetchone()
        reserved = conn.execute(
            "SELECT coalesce(sum(quantity_milli), 0) FROM usage_reservation "
            "WHERE account_id = %s AND status = 'active' AND expires_at > now()",
            [account.id],
        ).fetchone()
    assert used is not None and reserved is not None
    return RaceOutcome(
        statuses=statuses,
        used_milli=int(used[0]),
        reserved_milli=int(reserved[0]),
        blocked_milli=RACE_BLOCKED * 1000,
        fits=RACE_FITS,
    )


def race_prepare(port: int, token: str, account: Account) -> None:
    """Record ``RACE_USED`` on the race account through the API (its cap is set before)."""
    client = Client(port, token)
    body = {
        "event_id": "race-used",
        "account": str(account.id),
        "metric": "text_tokens",
        "quantity": RACE_USED,
        "occurred_at": datetime.now(UTC).isoformat(),
    }
    try:
        status, answer = client.request("POST", "/api/v1/usage/events/", json.dumps(body).encode())
    finally:
        client.close()
    if status != 201:
        raise RuntimeError(f"the race account's usage answered {status}: {answer[:500]!r}")


def part_race(report: Report, port: int, token: str, account: Account) -> None:
    """c'. ``RACERS`` clients racing to reserve more than is left on one account."""
    race_prepare(port, token, account)
    outcome = race_reservations(port, token, account)
    print(
        f"  {RACERS} clients reserve {RACE_QUANTITY:,} tokens each at once, "
        f"{RACE_BLOCKED - RACE_USED:,} left under the blocked threshold: "
        f"{outcome.granted} got 201, {outcome.statuses.count(409)} got 409, "
        f"others {sorted(s for s in outcome.statuses if s not in (201, 409))}; "
        f"used + reserved {(outcome.used_milli + outcome.reserved_milli) // 1000:,} "
        f"of {RACE_BLOCKED:,}"
    )
    report.add(
        f"c. reservations racing ({RACERS} clients), 201s",
        f"{outcome.granted} of {RACERS}",
        f"= {outcome.fits}, cap holds",
        outcome.exact,
    )


READS = ("usage read", "capacities", "pre-flight")


def reads_latency(
    port: int, token: str, probes: list[Account], requests: int
) -> dict[tuple[str, int], list[Round]]:
    """p50 and p99 of the usage read, capacities and the pre-flight of each of ``probes``.

    One client, one request at a time, ``ROUNDS`` rounds of ``requests`` requests per path
    and probe. The paths and probes take turns request by request, so that a disturbance of
    the machine hits all of them alike. Keyed by (path name, index in ``probes``).
    """
    client = Client(port, token)
    check_body = json.dumps(CHECK_BODY).encode()
    paths = {
        "usage read": ("GET", "/api/v1/accounts/{}/usage/", None),
        "capacities": ("GET", "/api/v1/accounts/{}/capacities/", None),
        "pre-flight": ("POST", "/api/v1/accounts/{}/usage/check/", check_body),
    }

    def timed(name: str, probe: Account) -> float:
        method, path, body = paths[name]
        started = time.perf_counter()
        status, answer = client.request(method, path.format(probe.id), body)
        elapsed = time.perf_counter() - started
        if status != 200:
            raise RuntimeError(f"{method} {path} answered {status}: {answer[:500]!r}")
        return elapsed

    found: dict[tuple[str, int], list[Round]] = defaultdict(list)
    try:
        for _ in range(50):  # warm-up
            for name in READS:
                for probe in probes:
                    timed(name, probe)
        for _round in range(ROUNDS):
            samples: dict[tuple[str, int], list[float]] = defaultdict(list)
            for _ in range(requests):
                for name in READS:
                    for index, probe in enumerate(probes):
                        samples[(name, index)].append(timed(name, probe))
            for key, latencies in samples.items():
                rate = len(latencies) / sum(latencies)
                p50, p99 = percentile(latencies, 50), percentile(latencies, 99)
                found[key].append(Round(rate, p50 * 1000, p99 * 1000))
        return found
    finally:
        client.close()


def table_load(accounts: list[Account], probe: Account, target: int, now: datetime) -> None:
    """Fill the events table up to ``target`` rows through the SQL path (counters included).

    Half of the new events go to ``probe``, the rest over ``accounts``, over the last
    ``LOAD_SPREAD``.
    """
    missing = max(0, target - events_count())
    count = math.ceil(missing / BATCH)
    weighted = [probe] * len(accounts) + accounts
    connections = 2

    def batches(index: int) -> Iterator[SqlBatch]:
        for number in range(index, count, connections):
            size = min(BATCH, missing - number * BATCH)
            events = events_make(weighted, f"load-{number}", size, now, LOAD_SPREAD)
            yield SqlBatch.of(events)

    elapsed, inserted = sql_run(batches, connections)
    print(
        f"  loaded {inserted:,} events in {elapsed:.1f} s ({inserted / elapsed:,.0f} rows/s, generation included)"
    )


def probes_fill(probes: tuple[Account, Account], now: datetime) -> None:
    """1,000 events on each probe account, through the SQL path, before parts c and d."""
    for index, probe in enumerate(probes):
        events = events_make([probe], f"probe{index}", 1000, now, LOAD_SPREAD)
        sql_run(shares([SqlBatch.of(events)], 1), 1)


def part_reads(
    report: Report,
    port: int,
    token: str,
    accounts: list[Account],
    probes: tuple[Account, Account],
    sizes: Sizes,
    now: datetime,
    spy: Callable[[str], AbstractContextManager[None]],
) -> None:
    """d. Usage read, capacities and pre-flight, at ~1,000 events of the account, then after
    loading the table with half of it on ``probes[0]``. Each probe starts with 1,000 events
    (``probes_fill``).

    After the load both probes are read in turns: ``probes[1]`` still has its 1,000 events,
    ``probes[0]`` has many; the p99 ratio of the two, measured side by side, is the figure
    of SPEC section 10 (the same at 1,000 and at many stored events).
    """
    heavy, light = probes
    measured: dict[str, dict[tuple[str, int], list[Round]]] = {}
    for size in ("small", "large"):
        if size == "large":
            table_load(accounts, heavy, sizes.table_events, now)
        settle()
        print(
            f"  {size}: {events_count(heavy):,} and {events_count(light):,} events of the "
            f"two probes, {events_count():,} in the table; {sizes.read_requests} requests per "
            f"path, probe and round, {ROUNDS} rounds, medians"
        )
        with spy(f"d-{size}"):
            measured[size] = reads_latency(port, token, [heavy, light], sizes.read_requests)
    figures = {
        (size, name, index): Round(
            median([r.rate for r in rounds]),
            median([r.p50 for r in rounds]),
            median([r.p99 for r in rounds]),
        )
        for size, found in measured.items()
        for (name, index), rounds in found.items()
    }
    heavy_events = events_count(heavy)
    for name in READS:
        before = figures[("small", name, 0)]
        few, many = figures[("large", name, 1)], figures[("large", name, 0)]
        p99s = [f"{r.p99:.1f}" for r in measured["large"][(name, 0)]]
        report.add(
            f"d. {name} p50 / p99, 1,000 events, small table",
            f"{before.p50:.1f} / {before.p99:.1f} ms",
        )
        report.add(
            f"   1,000 events, {events_count():,} in the table",
            f"{few.p50:.1f} / {few.p99:.1f} ms",
        )
        report.add(
            f"   {heavy_events:,} events of the account",
            f"{many.p50:.1f} / {many.p99:.1f} ms",
        )
        report.add("   its p99 in each round (ms)", " / ".join(p99s))
        ratio = many.p99 / few.p99
        report.add(
            f"   p99 {heavy_events:,} / 1,000 events",
            f"{ratio:.2f}",
            f"< {TARGET_READ_RATIO}",
            ratio < TARGET_READ_RATIO,
        )
        report.add("   p99 large table / small table", f"{many.p99 / before.p99:.2f}")


@contextmanager
def celery_worker(env: dict[str, str]) -> Iterator[subprocess.Popen[bytes]]:
    """A Celery worker (prefork, 2 processes, as on a 2-core host) until the block ends."""
    log = tempfile.NamedTemporaryFile(prefix="bench-celery-", suffix=".log", delete=False)  # noqa: SIM115
    command = [str(PYTHON), "-m", "celery", "-A", "config", "worker", "--loglevel=WARNING"]
    command += ["--concurrency=2", "--without-gossip", "--without-mingle", "--without-heartbeat"]
    process = subprocess.Popen(
        command, cwd=ROOT, env=server_env(**env), stdout=log, stderr=subprocess.STDOUT
    )
    failed = True
    try:
        yield process
        failed = False
    finally:
        process.terminate()  # a warm shutdown: the pool finishes its tasks
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)
        log.close()
        if failed:
            print(f"celery's log: {log.name}", file=sys.stderr)
        else:
            Path(log.name).unlink()


CROSSING_WARNING = 1_000  # text_tokens; each crossing event records 1,500


def crossing_accounts_prepare(count: int) -> list[Account]:
    """``count + 1`` accounts (the first to warm up) with a warning threshold that one event
    passes, and a warning recipient: each event crosses it once, one e-mail each."""
    accounts = accounts_create(count + 1, prefix="cross")
    limits_set(
        accounts,
        {
            "limits": {"text_tokens": {"warning": CROSSING_WARNING, "blocked": 10**9}},
            "recipients": {"warning": [{"email": "ops@example.com", "language": "en"}]},
        },
    )
    return accounts


def sent_at(account_ids: list[uuid.UUID]) -> dict[uuid.UUID, datetime]:
    """When each account's e-mail was handed to the provider (``Delivery.sent_at``, written
    by the worker when the e-mail backend returned), for those already sent."""
    with sql_connect() as conn:
        rows = conn.execute(
            "SELECT n.account_id, min(d.sent_at) FROM notifications_delivery d"
            " JOIN notifications_notification n ON n.id = d.notification_id"
            " WHERE n.account_id = ANY(%s) AND d.sent_at IS NOT NULL GROUP BY 1",
            [account_ids],
        ).fetchall()
    return {row[0]: row[1] for row in rows}


def crossing_wait(account_ids: list[uuid.UUID], timeout: float) -> dict[uuid.UUID, datetime]:
    """Poll until every account's e-mail was sent, or ``timeout`` seconds went by."""
    deadline = time.monotonic() + timeout
    while True:
        found = sent_at(account_ids)
        if len(found) == len(account_ids) or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


def crossing_post(client: Client, account: Account, index: int) -> float:
    """Post one event that crosses the account's warning threshold; returns when it was
    sent (wall clock, as ``sent_at`` is)."""
    body = {
        "event_id": f"cross-{index}",
        "account": str(account.id),
        "metric": "text_tokens",
        "quantity": CROSSING_WARNING * 3 // 2,
        "occurred_at": datetime.now(UTC).isoformat(),
    }
    started = time.time()
    status, answer = client.request("POST", "/api/v1/usage/events/", json.dumps(body).encode())
    if status != 201:
        raise RuntimeError(f"a crossing event answered {status}: {answer[:500]!r}")
    return started


def crossing_latencies(
    posted: dict[uuid.UUID, float], sent: dict[uuid.UUID, datetime]
) -> list[float]:
    """Milliseconds from each request to its e-mail handed over; the missing left out."""
    return sorted(
        (sent[account_id].timestamp() - started) * 1000
        for account_id, started in posted.items()
        if account_id in sent
    )


def part_crossing(
    report: Report, token: str, accounts: list[Account], env: dict[str, str], spacing: float
) -> None:
    """f. Crossing to e-mail handed to the provider, with a running worker on Redis.

    gunicorn (2 sync workers) and a Celery worker share the broker; each request records a
    crossing, the web process hands its notification to the broker after the commit, and
    the worker renders and sends the e-mail (Django's locmem backend: handing it over costs
    nothing, so what is measured is the path up to the provider). One event every
    ``spacing`` seconds, each on its own account.
    """
    warm, measured = accounts[0], accounts[1:]
    port = free_port()
    with celery_worker(env) as worker, gunicorn(port, token, env):
        client = Client(port, token)
        try:
            crossing_post(client, warm, 0)
            if not crossing_wait([warm.id], 60):
                raise RuntimeError("the worker sent no e-mail within 60 s")
            posted = {}
            for index, account in enumerate(measured, start=1):
                posted[account.id] = crossing_post(client, account, index)
                time.sleep(spacing)
        finally:
            client.close()
        sent = crossing_wait(list(posted), 60)
        pool = worker_pids(worker.pid)
        peaks = {pid: memory_kb(pid, "VmHWM") / 1024 for pid in [worker.pid, *pool]}
    latencies = crossing_latencies(posted, sent)
    print(
        f"  {len(measured)} events through HTTP, one every {spacing * 1000:.0f} ms, each "
        f"crossing a warning threshold of its own account; {len(sent)} e-mails sent"
    )
    report.add(
        "f. crossings whose e-mail was sent",
        f"{len(sent)} of {len(measured)}",
        f"{len(measured)}",
        len(sent) == len(measured),
    )
    if latencies:
        p50, p99 = percentile(latencies, 50), percentile(latencies, 99)
        report.add(
            "   request to e-mail handed over, p50",
            f"{p50:.0f} ms",
            f"< {TARGET_CROSSING_P50_MS} ms",
            p50 < TARGET_CROSSING_P50_MS,
        )
        report.add(
            "   the same, p99",
            f"{p99:.0f} ms",
            f"< {TARGET_CROSSING_P99_MS} ms",
            p99 < TARGET_CROSSING_P99_MS,
        )
        report.add("   the same, fastest / slowest", f"{latencies[0]:.0f} / {latencies[-1]:.0f} ms")
    for pid, peak in peaks.items():
        role = "celery main process" if pid == worker.pid else "celery pool process"
        report.add(
            f"f. peak RSS, {role} {pid}",
            f"{peak:.0f} MB",
            f"< {TARGET_RSS_MB} MB",
            peak < TARGET_RSS_MB,
        )


def part_memory(report: Report, master: int) -> None:
    """e. Peak resident memory (``VmHWM``) of each gunicorn worker."""
    for pid in worker_pids(master):
        peak = memory_kb(pid, "VmHWM") / 1024
        report.add(
            f"e. peak RSS, worker {pid}",
            f"{peak:.0f} MB",
            f"< {TARGET_RSS_MB} MB",
            peak < TARGET_RSS_MB,
        )
    report.add("   peak RSS, gunicorn master", f"{memory_kb(master, 'VmHWM') / 1024:.0f} MB")


COMPARED = (
    "plain floor",
    "authenticated floor GET",
    "authenticated floor POST",
    "GET .../usage/",
    "pre-flight POST .../usage/check/",
    "single-event POST /usage/events/",
    "reservation POST .../usage/reservations/",
)


def part_servers(
    report: Report,
    token: str,
    env: dict[str, str],
    servers: list[Server],
    accounts: list[Account],
    probe: Account,
    reserve: Account,
    sizes: Sizes,
    now: datetime,
) -> None:
    """g. The same paths served by each of ``servers`` in turn (worker class and count), by
    the same client (``sizes.threads`` threads): which configuration to run."""
    paths = [e for e in endpoints(accounts, probe, reserve, now) if e.name in COMPARED]
    table = [["server", *(f"{name} req/s (p99 ms)" for name in COMPARED), "peak RSS per worker"]]
    for server in servers:
        port = free_port()
        try:
            with gunicorn(port, token, env, server) as master:
                figures, _rounds = floors_measure(port, token, paths, sizes, f"g-{server}")
                peaks = [memory_kb(pid, "VmHWM") / 1024 for pid in worker_pids(master.pid)]
        except (RuntimeError, OSError, http.client.HTTPException) as error:
            print(f"  {server}: {error}")
            report.add(f"g. {server}", "failed", "answers", False)
            continue
        row = [str(server)]
        row += [f"{figures[name].rate:,.0f} ({figures[name].p99:.0f})" for name in COMPARED]
        row.append(f"{max(peaks):.0f} MB")
        table.append(row)
        print(f"  {' | '.join(row)}")
    report.tables["g"] = table


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="smaller sizes (3 to 4 min on an idle machine)"
    )
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    parser.add_argument(
        "--parts",
        default="abcdef",
        metavar="PARTS",
        help="the parts to run, e.g. 'ab' for batch ingestion and its ceiling alone "
        "(default abcdef: all; g runs with --compare-servers)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        choices=range(1, 9),
        metavar="N",
        help="client threads of part c (default 2, as many as gunicorn workers)",
    )
    parser.add_argument(
        "--cache-url",
        default=CACHE_URL,
        metavar="URL",
        help=f"the server's CACHE_URL (default {CACHE_URL}; 'locmemcache://' for none: "
        "throttle counts per process and no token cache)",
    )
    parser.add_argument(
        "--token-cache-seconds",
        type=int,
        metavar="N",
        help="the server's TOKEN_CACHE_SECONDS (default: the setting's, 60; 0 turns the "
        "token cache off, to measure the floor without it)",
    )
    parser.add_argument(
        "--lines-memory-seconds",
        type=int,
        metavar="N",
        help="the server's LINES_MEMORY_SECONDS (default: the setting's, 60; 0 turns the "
        "memory of lines off: every read of capacities, the pre-flight and the usage reads "
        "the database, as right after a write to the account)",
    )
    parser.add_argument(
        "--lines",
        type=int,
        choices=range(len(SCOPED_LIMITS) + 1),
        default=len(SCOPED_LIMITS),
        metavar="N",
        help=f"scoped limits per account, of mixed shapes (default and most "
        f"{len(SCOPED_LIMITS)}; 0: only the three monthly lines)",
    )
    parser.add_argument(
        "--table-events",
        type=int,
        metavar="N",
        help="events in the table when part d reads the second time (default 1,000,000; "
        "100,000 with --quick)",
    )
    parser.add_argument(
        "--server",
        type=Server.parse,
        default=Server(),
        metavar="KIND",
        help="gunicorn's workers for parts a to f: sync:N or gthread:NxT (default sync:2)",
    )
    parser.add_argument(
        "--compare-servers",
        type=lambda text: [Server.parse(item) for item in text.split(",") if item],
        default=[],
        metavar="LIST",
        help="g: measure the floors and the main paths again under each of these gunicorn "
        "configurations, e.g. sync:2,sync:4,gthread:2x4",
    )
    parser.add_argument(
        "--compare-threads",
        type=int,
        default=4,
        metavar="N",
        help="client threads of part g (default 4, enough to keep 4 workers busy)",
    )
    parser.add_argument(
        "--crossings",
        type=int,
        metavar="N",
        help="f: events crossing a threshold, each on its own account (default 100, 50 with "
        "--quick; 0 skips part f)",
    )
    parser.add_argument(
        "--broker-url",
        default=BROKER_URL,
        metavar="URL",
        help=f"part f's Celery broker (default {BROKER_URL}); flushed at the start",
    )
    parser.add_argument(
        "--results", type=Path, metavar="FILE", help="also write the figures there, as JSON"
    )
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="sample the workers with py-spy (.venv/bin/py-spy) during parts a, c and d, "
        "print where time went and keep the samples in DIR; the figures of such a run are "
        "not the reference ones",
    )
    args = parser.parse_args()
    if args.profile and not PY_SPY.exists():
        parser.error(f"--profile needs {PY_SPY}: .venv/bin/pip install py-spy")
    sizes = QUICK if args.quick else FULL
    if args.threads:
        sizes = replace(sizes, threads=args.threads)
    if args.table_events:
        sizes = replace(sizes, table_events=args.table_events)
    sizes = replace(sizes, lines=args.lines)
    COUNTED.clear()
    COUNTED.update(counted_keys(args.lines))
    crossings = args.crossings if args.crossings is not None else (50 if args.quick else 100)
    if "f" not in args.parts:
        crossings = 0
    served = {"DJANGO_SETTINGS_MODULE": "bench.settings", "CACHE_URL": args.cache_url}
    if args.token_cache_seconds is not None:
        served["TOKEN_CACHE_SECONDS"] = str(args.token_cache_seconds)
    if args.lines_memory_seconds is not None:
        served["LINES_MEMORY_SECONDS"] = str(args.lines_memory_seconds)
    report = Report()
    begun = time.perf_counter()
    busy = cpu_busy()
    load_at_start = load_average()
    print(
        f"bench/ingest.py{' --quick' if args.quick else ''}: "
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} CPUs, {busy:.0%} busy, "
        f"load average {load_at_start}"
    )
    if busy > 0.1:
        print("  warning: something else is using the CPUs; the figures will be lower")
    speed_at_start = python_speed()
    report.add("machine speed (Python loop), at the start", f"{speed_at_start:.1f} M it/s")

    print(f"database {DB_NAME}: create, migrate, {sizes.accounts + 3} accounts, a service token")
    database_create()
    accounts = accounts_create(sizes.accounts + 3)
    probes, reserve, posting = (accounts[0], accounts[1]), accounts[2], accounts[3:]
    token = token_create()
    scoped = scoped_limits_set(sizes.lines)
    print(
        f"  {scoped:,} scoped limits ({sizes.lines} per account) set through "
        "backoffice.services.limits_replace"
    )
    race = accounts_create(1, prefix="race")[0]
    limits_set(
        [race],
        {
            "limits": {"text_tokens": {"warning": None, "blocked": RACE_BLOCKED}},
            "recipients": {"blocked": [{"email": "ops@example.com", "language": "en"}]},
        },
    )
    crossing_accounts = crossing_accounts_prepare(crossings) if crossings else []
    now = datetime.now(UTC)
    probes_fill(probes, now)
    port = free_port()
    print(
        f"gunicorn: {args.server} on {HOST}:{port}, CACHE_URL={args.cache_url}, "
        f"TOKEN_CACHE_SECONDS={served.get('TOKEN_CACHE_SECONDS', 'default')}, "
        f"LINES_MEMORY_SECONDS={served.get('LINES_MEMORY_SECONDS', 'default')}"
    )
    with gunicorn(port, token, served, args.server) as server:

        def spy(part: str) -> AbstractContextManager[None]:
            return profiled(args.profile, part, server.pid)

        if "a" in args.parts or "b" in args.parts:
            print("a. batch ingestion through HTTP, b. the ceiling: hand-written SQL, in turns")
            with spy("a"):
                part_batches(report, port, token, posting, sizes, now, server.pid)
        if "c" in args.parts:
            print("c. the floors and the per-request paths, interleaved")
            with spy("c"):
                part_floors(
                    report, port, token, posting, probes[0], reserve, sizes, now, server.pid
                )
            print(f"c. reservations: {RACERS} clients racing for the last capacity of one account")
            part_race(report, port, token, race)
        if "d" in args.parts:
            print("d. usage read, capacities and pre-flight at 1,000 and at many events")
            part_reads(report, port, token, posting, probes, sizes, now, spy)
        if "e" in args.parts:
            print("e. memory")
            part_memory(report, server.pid)

    if crossing_accounts:
        print(f"f. crossing to e-mail handed to the provider, a Celery worker on {args.broker_url}")
        import redis

        redis.Redis.from_url(args.broker_url).flushdb()
        part_crossing(
            report,
            token,
            crossing_accounts,
            {**served, "CELERY_BROKER_URL": args.broker_url},
            spacing=0.1,
        )
    if args.compare_servers:
        print(
            f"g. gunicorn configurations compared, {args.compare_threads} client threads: "
            + ", ".join(str(server) for server in args.compare_servers)
        )
        part_servers(
            report,
            token,
            served,
            args.compare_servers,
            posting,
            probes[1],
            reserve,
            replace(sizes, threads=args.compare_threads),
            now,
        )

    mismatches, counters = counters_mismatches()
    report.add(
        "counters that differ from their events",
        f"{mismatches} of {counters:,}",
        "0",
        mismatches == 0,
    )
    speed_at_end = python_speed()
    report.add("machine speed (Python loop), at the end", f"{speed_at_end:.1f} M it/s")
    elapsed = time.perf_counter() - begun
    print(f"\nsummary ({elapsed:.0f} s in all):\n{report.summary()}")
    results_write(
        args.results,
        script="ingest.py" + (" --quick" if args.quick else ""),
        figures=[Figure(r.name, r.value, r.target, r.ok) for r in report.results],
        facts={
            "busy_at_start": f"{busy:.0%}",
            "load_average_at_start": load_at_start,
            "load_average_at_end": load_average(),
            "python_speed": f"{speed_at_start:.1f} to {speed_at_end:.1f}",
            "seconds": round(elapsed),
            "server": str(args.server),
            "versions": versions(SERVER_DSN, args.cache_url),
            "sizes": {
                "floor_requests": sizes.floor_requests,
                "threads": sizes.threads,
                "batches": sizes.batches,
                "read_requests": sizes.read_requests,
                "table_events": sizes.table_events,
                "lines": sizes.lines,
                "crossings": crossings,
            },
        },
        tables=report.tables,
    )
    return 1 if args.strict and report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
