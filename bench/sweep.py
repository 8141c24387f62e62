"""The threshold sweep on 10,000 Enterprise accounts with limits (SPEC section 10).

Creates a fresh database ``bench_sweep``, migrates it, then stores 10,000 Enterprise
accounts (in 4 time zones), each with a warning and a blocked threshold on every metric,
a warning and a blocked recipient, and daily counters for every metric and every day of
the previous and the current month. 10 % of the accounts are past the warning threshold
of ``text_tokens``, 2 % past its blocked threshold too; the 8 % in between are projected
to reach it and get a forecast (SPEC 12.3) while the month is from 10 to 90 % gone. Each
account also has ten scoped limits of mixed shapes (``--lines``, the shapes of
``ingest.py``), with the day counters of their label subsets over both months and the hour
counters of the current hour; their thresholds are far above that usage.

Times ``notifications.services.thresholds_evaluate()`` (what the periodic sweep runs)
twice: the first run records the crossings and, Celery being eager here, also renders and
hands every e-mail to Django's locmem backend; the second finds nothing new. Target: the
sweep in < 3 s. Each step of the sweep is timed (``STEPS``), and what they leave out is
printed as "the rest", with the queries of each run. Runs inside Django (``django.setup()``, the environment set first):

    .venv/bin/python bench/sweep.py [--accounts N] [--lines N] [--strict] [--results FILE]
        [--profile FILE]
"""

from __future__ import annotations

import argparse
import calendar
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from ingest import SCOPED_LIMITS  # bench/ is the script's own folder
from machine import cpu_busy, python_speed
from results import Figure, load_average, results_write, versions

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
# Its own database, beside ingest.py's: ``$BENCH_DATABASE_sweep`` when that is set.
DB_NAME = (
    f"{os.environ['BENCH_DATABASE']}_sweep" if os.environ.get("BENCH_DATABASE") else "bench_sweep"
)
SERVER_DSN = f"postgresql://postgres@{HOST}:5432/postgres"
ZONES = ("UTC", "Europe/Paris", "America/New_York", "Asia/Tokyo")
TARGET_SECONDS = 3.0  # SPEC section 10
WARNING_SHARE = 10  # % of accounts past the warning threshold of text_tokens
BLOCKED_SHARE = 2  # % of accounts past the blocked threshold too
CHUNK = 5000  # rows per bulk_create

# Thresholds of every account, per metric: (warning, blocked).
THRESHOLDS = {
    "audio_transcribed_seconds": (36_000, 72_000),
    "audio_analyzed_seconds": (36_000, 72_000),
    "text_tokens": (800_000, 1_000_000),
}


def setup_django() -> None:
    """Create the database, point Django at it (eager Celery, locmem mail) and migrate."""
    with psycopg.connect(SERVER_DSN, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {DB_NAME} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {DB_NAME}")
    for name in [n for n in os.environ if n.startswith("CELERY_")]:
        del os.environ[name]  # no broker: tasks run eagerly, in this process
    os.environ.update(
        DJANGO_SETTINGS_MODULE="config.settings",
        DATABASE_URL=f"postgres://postgres@{HOST}:5432/{DB_NAME}",
        EMAIL_BACKEND="django.core.mail.backends.locmem.EmailBackend",
        DEBUG="0",
        SECRET_KEY="bench",
        LOG_LEVEL="WARNING",  # one INFO line per notification would be timed too
    )
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def month_days(today: date) -> list[date]:
    """Every day of the previous month, and of the current month up to ``today``."""
    first = today.replace(day=1)
    previous = (first - timedelta(days=1)).replace(day=1)
    return [previous + timedelta(days=n) for n in range((today - previous).days + 1)]


def usage_total(index: int, metric: str, today: date) -> int:
    """The period's usage of account ``index`` for ``metric``, in the metric's unit.

    Other accounts and metrics are on course to end the month at 30-69 % of the warning
    threshold (that share of it times the share of the month's days so far), so that no
    forecast is due for them (SPEC 12.3); those past the warning threshold of
    ``text_tokens`` are projected past the blocked one while the month is from 10 to 90 %
    gone, and get a forecast then.
    """
    warning, blocked = THRESHOLDS[metric]
    if metric == "text_tokens":
        if index % 100 < BLOCKED_SHARE:
            return blocked + blocked // 10
        if index % 100 < WARNING_SHARE:
            return (warning + blocked) // 2
    days = calendar.monthrange(today.year, today.month)[1]
    return warning * (30 + index % 40) * today.day // (100 * days)


def notifications_expected(accounts: int, now: datetime) -> int:
    """The notifications a first sweep creates: a warning per account past the warning
    threshold of ``text_tokens``, a blocked one more per account past the blocked one, and a
    forecast per account in between whose month, in its time zone, is from 10 to 90 % gone
    (used is 90 % of the blocked threshold, spread over the days so far; SPEC 12.3).

    Counted account by account (``usage_total`` decides by ``index % 100``), so that it
    holds for any number of accounts, below 100 included. On the first day of a month,
    accounts west of UTC are still in the previous period, whose counters hold more: the
    count then differs.
    """
    from zoneinfo import ZoneInfo

    count = 0
    for i in range(accounts):
        share_of_hundred = i % 100
        count += share_of_hundred < WARNING_SHARE
        count += share_of_hundred < BLOCKED_SHARE
        if not BLOCKED_SHARE <= share_of_hundred < WARNING_SHARE:
            continue
        zone = ZoneInfo(ZONES[i % len(ZONES)])
        local = now.astimezone(zone)
        start = local.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        end = (start + timedelta(days=32)).replace(day=1)
        share = (now - start.astimezone(UTC)) / (end.astimezone(UTC) - start.astimezone(UTC))
        count += 0.1 <= share < 0.9
    return count


# Scoped thresholds, in the metric's unit: far above what ``scoped_usage_milli`` stores.
SCOPED_HIGH = 10**12


def line_key(line: dict[str, Any]) -> str:
    """The canonical labels key of a scoped limit (``accounts.labels.labels_key``)."""
    labels = line["labels"]
    return ";".join(f"{key}={labels[key]}" for key in sorted(labels))


def scoped_counter_keys(lines: int) -> list[tuple[str, str]]:
    """(metric, labels key) of the labelled day counters the first ``lines`` scoped limits
    read, beyond the whole-metric ones every account already has; in a stable order."""
    keys = {(line["metric"], line_key(line)) for line in SCOPED_LIMITS[:lines]}
    return sorted(key for key in keys if key[1])


def scoped_usage_milli(index: int, metric: str, today: date) -> int:
    """A day's usage of a labelled subset: a small share of the metric's (never reached)."""
    return (usage_total(index, metric, today) * 1000) // 200


def data_create(accounts: int, today: date, lines: int) -> tuple[int, int]:
    """Store the accounts, limits, recipients and counters; returns (accounts, counters)."""
    from django.db import connection

    from accounts.models import Account, Language, Level, Limit, Plan, Recipient, ScopedLimit
    from usage.models import UsageCounter, UsageHourCounter

    rows = Account.objects.bulk_create(
        (
            Account(
                external_id=f"sweep-{i:05d}",
                name=f"Sweep {i}",
                plan=Plan.ENTERPRISE,
                language=Language.FR if i % 3 == 0 else Language.EN,
                timezone=ZONES[i % len(ZONES)],
            )
            for i in range(accounts)
        ),
        batch_size=CHUNK,
    )
    Limit.objects.bulk_create(
        (
            Limit(account=account, metric=metric, warning=warning, blocked=blocked)
            for account in rows
            for metric, (warning, blocked) in THRESHOLDS.items()
        ),
        batch_size=CHUNK,
    )
    Recipient.objects.bulk_create(
        (
            Recipient(
                account=account,
                level=level,
                email=f"{level}-{i}@example.com",
                language=account.language,
            )
            for i, account in enumerate(rows)
            for level in (Level.WARNING, Level.BLOCKED)
        ),
        batch_size=CHUNK,
    )
    ScopedLimit.objects.bulk_create(
        (
            ScopedLimit(
                account=account,
                metric=line["metric"],
                period=line["period"],
                window_days=line["window_days"],
                labels=line["labels"],
                labels_key=line_key(line),
                warning=SCOPED_HIGH // 2 if position % 2 else None,
                blocked=SCOPED_HIGH,
                position=position,
            )
            for account in rows
            for position, line in enumerate(SCOPED_LIMITS[:lines])
        ),
        batch_size=CHUNK,
    )

    # ~1.6 million counters: COPY, since bulk_create would take minutes for these alone.
    days = month_days(today)
    current = [day for day in days if day >= today.replace(day=1)]
    now = datetime.now(UTC)
    table = UsageCounter._meta.db_table
    columns = "account_id, metric, day, quantity_milli, updated_at"
    count = 0
    with (
        connection.cursor() as cursor,
        cursor.cursor.copy(f"COPY {table} ({columns}) FROM STDIN") as copy,
    ):
        for i, account in enumerate(rows):
            for metric in THRESHOLDS:
                total_milli = usage_total(i, metric, today) * 1000
                per_day, rest = divmod(total_milli, len(current))
                for day in days:
                    # The previous month: some usage; the current one adds up to the total.
                    if day < current[0]:
                        milli = per_day
                    else:
                        milli = per_day + (rest if day == current[-1] else 0)
                    copy.write_row((account.pk, metric, day, milli, now))
                    count += 1
    # The day counters of the scoped limits' label subsets, over the same days.
    labelled = scoped_counter_keys(lines)
    if labelled:
        with (
            connection.cursor() as cursor,
            cursor.cursor.copy(
                f"COPY {table} (account_id, metric, labels, day, quantity_milli, updated_at)"
                " FROM STDIN"
            ) as copy,
        ):
            for i, account in enumerate(rows):
                for metric, labels in labelled:
                    milli = scoped_usage_milli(i, metric, today)
                    for day in days:
                        copy.write_row((account.pk, metric, labels, day, milli, now))
                        count += 1
    # The counters of the current hour that the hour lines read.
    hour = now.replace(minute=0, second=0, microsecond=0)
    hour_keys = sorted(
        {
            (line["metric"], line_key(line))
            for line in SCOPED_LIMITS[:lines]
            if line["period"] == "hour"
        }
    )
    hour_table = UsageHourCounter._meta.db_table
    if hour_keys:
        with (
            connection.cursor() as cursor,
            cursor.cursor.copy(
                f"COPY {hour_table} (account_id, metric, labels, hour, day, quantity_milli,"
                " updated_at) FROM STDIN"
            ) as copy,
        ):
            for i, account in enumerate(rows):
                local_day = hour.astimezone(account.zone).date()
                for metric, labels in hour_keys:
                    milli = scoped_usage_milli(i, metric, today) // 24
                    copy.write_row((account.pk, metric, labels, hour, local_day, milli, now))
                    count += 1
    with connection.cursor() as cursor:
        analyzed = (Account, Limit, ScopedLimit, UsageCounter, UsageHourCounter)
        for name in (model._meta.db_table for model in analyzed):
            cursor.execute(f"VACUUM ANALYZE {name}")  # as autovacuum would have by now
    return len(rows), count


@dataclass
class Timer:
    """Seconds spent in the functions given to ``wrap``, by name."""

    seconds: dict[str, float] = field(default_factory=dict)

    def wrap(self, module: Any, name: str) -> Callable[[], None]:
        """Time ``module.name`` from now on; returns the function that puts it back."""
        original = getattr(module, name)

        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                elapsed = time.perf_counter() - started
                self.seconds[name] = self.seconds.get(name, 0.0) + elapsed

        setattr(module, name, timed)
        return lambda: setattr(module, name, original)


# Every step ``thresholds_evaluate`` runs, in its order, as (module, function): the read of
# every line, the crossings of the lines read, the forecasts, the month that just closed,
# the restored notices, then (Celery being eager) the e-mails, sent once the transaction
# commits. What the steps leave out of the whole run is printed too ("the rest").
STEPS = (
    ("notifications.services", "sweep_read"),
    ("notifications.services", "scoped_lines_reached"),
    ("notifications.services", "crossings_record"),
    ("notifications.services", "forecasts_of"),
    ("notifications.services", "forecasts_record"),
    ("notifications.services", "closed_crossings_record"),
    ("notifications.restored", "restored_notices_record"),
    ("notifications.services", "notifications_enqueue"),
)


@contextmanager
def breakdown(timer: Timer) -> Iterator[None]:
    """Time each of ``STEPS``."""
    import importlib

    restore = [timer.wrap(importlib.import_module(module), name) for module, name in STEPS]
    try:
        yield
    finally:
        for undo in restore:
            undo()


@dataclass(frozen=True)
class Run:
    seconds: float
    created: int
    emails: int
    steps: dict[str, float]
    queries: int
    longest: int  # characters of the longest SQL statement

    @property
    def sweep_seconds(self) -> float:
        """The sweep without the e-mails, which a worker sends when Celery is not eager."""
        return self.seconds - self.steps.get("notifications_enqueue", 0.0)

    @property
    def rest(self) -> float:
        """What no step of ``STEPS`` timed: the transaction, the callbacks' own overhead."""
        return self.seconds - sum(self.steps.values())


@dataclass
class QueryCount:
    """Counts the statements sent, and the longest, without keeping them (cheap enough to
    leave on while timing)."""

    count: int = 0
    longest: int = 0

    def __call__(self, execute: Callable[..., Any], sql: str, *args: Any) -> Any:
        self.count += 1
        self.longest = max(self.longest, len(sql))
        return execute(sql, *args)


def sweep_run() -> Run:
    """One timed ``thresholds_evaluate()``, with the time of each step and its queries."""
    from django.core import mail
    from django.db import connection

    from notifications.services import thresholds_evaluate

    mail.outbox = []
    timer = Timer()
    queries = QueryCount()
    with breakdown(timer), connection.execute_wrapper(queries):
        started = time.perf_counter()
        created = thresholds_evaluate()
        elapsed = time.perf_counter() - started
    return Run(
        elapsed,
        len(created),
        len(mail.outbox),
        dict(timer.seconds),
        queries.count,
        queries.longest,
    )


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def profiled_run(path: Path) -> None:
    """One more sweep under pyinstrument; its report goes to ``path`` (text) and the top of
    it to the standard output."""
    try:
        from pyinstrument import Profiler
    except ImportError:
        print("  --profile needs pyinstrument: .venv/bin/pip install pyinstrument")
        return
    from notifications.services import thresholds_evaluate

    profiler = Profiler(interval=0.001)
    profiler.start()
    thresholds_evaluate()
    profiler.stop()
    text = profiler.output_text(unicode=False, color=False, show_all=False)
    path.write_text(text)
    print(f"  profile of a third sweep (pyinstrument), whole in {path}:")
    print("\n".join(text.splitlines()[:60]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--accounts", type=int, default=10_000, help="default: 10,000")
    parser.add_argument(
        "--lines",
        type=int,
        choices=range(len(SCOPED_LIMITS) + 1),
        default=len(SCOPED_LIMITS),
        metavar="N",
        help=f"scoped limits per account (default and most {len(SCOPED_LIMITS)}; 0: the "
        "three monthly lines only)",
    )
    parser.add_argument("--strict", action="store_true", help="exit 1 when the target is missed")
    parser.add_argument(
        "--results", type=Path, metavar="FILE", help="also write the figures there, as JSON"
    )
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="FILE",
        help="profile a third sweep with pyinstrument (.venv/bin/pip install pyinstrument) "
        "and write its report to FILE",
    )
    args = parser.parse_args()
    busy = cpu_busy()
    load_at_start = load_average()
    speed = python_speed()
    print(
        f"bench/sweep.py: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} CPUs, "
        f"{busy:.0%} busy, load average {os.getloadavg()[0]:.2f}, Python loop {speed:.1f} M it/s"
    )

    started = time.perf_counter()
    setup_django()
    today = datetime.now(UTC).date()
    accounts, counters = data_create(args.accounts, today, args.lines)
    print(
        f"database {DB_NAME}: {accounts:,} accounts with limits, {args.lines} scoped limits "
        f"each, recipients, {counters:,} day and hour counters "
        f"({calendar.month_name[today.month]} and the month before), "
        f"in {time.perf_counter() - started:.0f} s"
    )
    expected = notifications_expected(accounts, datetime.now(UTC))

    first = sweep_run()
    second = sweep_run()

    for label, run in (("first run", first), ("second run", second)):
        steps = ", ".join(f"{name} {run.steps.get(name, 0.0):.2f} s" for _module, name in STEPS)
        print(
            f"{label}: {run.seconds:.2f} s in all, {run.created:,} notifications, "
            f"{run.emails:,} e-mails, {run.queries:,} queries\n  {steps}; the rest "
            f"{run.rest:.2f} s"
        )
    ok_first = first.sweep_seconds < TARGET_SECONDS
    ok_second = second.seconds < TARGET_SECONDS
    ok_count = first.created == expected and first.emails == expected and second.created == 0
    scope = f"{accounts:,} accounts, {args.lines} scoped limits each"
    figures = [
        Figure(
            f"sweep, first run ({scope}; crossings recorded)",
            f"{first.sweep_seconds:.2f} s",
            f"< {TARGET_SECONDS:.0f} s",
            ok_first,
        ),
        Figure(
            "   of which the read of every line (sweep_read)",
            f"{first.steps.get('sweep_read', 0.0):.2f} s",
        ),
        Figure(
            "   of which the restored notices (restored_notices_record)",
            f"{first.steps.get('restored_notices_record', 0.0):.2f} s",
        ),
        Figure("   + e-mails rendered and sent eagerly", f"{first.seconds:.2f} s"),
        Figure(
            "sweep, second run (nothing new)",
            f"{second.seconds:.2f} s",
            f"< {TARGET_SECONDS:.0f} s",
            ok_second,
        ),
        Figure(
            "notifications, first then second run",
            f"{first.created:,} then {second.created}",
            f"{expected:,} then 0",
            ok_count,
        ),
        Figure("queries per sweep (second run)", f"{second.queries:,}"),
    ]
    print("\nsummary:")
    for figure in figures:
        print(f"  {figure.name:<62} {figure.value:>14}  {figure.target:<12} {figure.verdict}")
    print(f"  the longest query: {second.longest / 1024:,.0f} KiB of SQL")
    if args.profile:
        profiled_run(args.profile)
    results_write(
        args.results,
        script="sweep.py",
        figures=figures,
        facts={
            "busy_at_start": f"{busy:.0%}",
            "load_average_at_start": load_at_start,
            "python_speed": f"{speed:.1f}",
            "load_average_at_end": load_average(),
            "versions": versions(f"postgresql://postgres@{HOST}:5432/{DB_NAME}"),
        },
    )
    failed = not (ok_first and ok_second and ok_count)
    return 1 if args.strict and failed else 0


if __name__ == "__main__":
    sys.exit(main())
