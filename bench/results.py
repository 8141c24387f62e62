"""The figures a bench script measured, kept as JSON for ``performance.py`` to write the doc.

Each script prints its figures as it goes; with ``--results FILE`` it also writes them, with
the facts of the machine they were measured on, so that ``make bench`` can put the latest
run in docs/performance.md without anyone copying numbers by hand.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Figure:
    """One measured figure, its target and whether it was met (``None``: for information)."""

    name: str
    value: str
    target: str = ""
    ok: bool | None = None

    @property
    def verdict(self) -> str:
        return "" if self.ok is None else ("PASS" if self.ok else "FAIL")


def load_average() -> str:
    """The 1, 5 and 15 minute load averages, as ``uptime`` prints them."""
    return ", ".join(f"{value:.2f}" for value in os.getloadavg())


def versions(dsn: str | None = None, redis_url: str | None = None) -> dict[str, str]:
    """Python, Django, PostgreSQL and Redis versions (the ones that could be read)."""
    found = {"Python": platform.python_version()}
    try:
        import django

        found["Django"] = django.get_version()
    except ImportError:  # pragma: no cover - the project's virtual environment has it
        pass
    if dsn:
        try:
            import psycopg

            with psycopg.connect(dsn) as conn:
                row = conn.execute("SHOW server_version").fetchone()
            if row:
                found["PostgreSQL"] = str(row[0]).split()[0]
        except Exception:  # a fact for the doc, never a reason to fail
            pass
    if redis_url:
        try:
            import redis

            found["Redis"] = str(redis.Redis.from_url(redis_url).info("server")["redis_version"])
        except Exception:  # the same
            pass
    return found


def cpu_model() -> str:
    """The CPU model name from ``/proc/cpuinfo``, or the platform's processor string."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def memory_gb() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 1024 / 1024
    except OSError:
        pass
    return 0.0


def git_commit() -> str:
    try:
        done = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=False,
            timeout=10,
        )
    except OSError:
        return ""
    return done.stdout.strip()


def results_write(
    path: Path | None,
    *,
    script: str,
    figures: list[Figure],
    facts: dict[str, Any],
    tables: dict[str, list[list[str]]] | None = None,
) -> None:
    """Write ``figures`` with ``facts`` (machine, load, speed...) to ``path`` as JSON.

    ``tables`` are extra tables for the doc, each a header row then rows. Nothing is
    written when ``path`` is ``None``.
    """
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "script": script,
        "finished": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "facts": {
            "cpus": os.cpu_count(),
            "cpu": cpu_model(),
            "memory_gb": round(memory_gb(), 1),
            "commit": git_commit(),
            **facts,
        },
        "figures": [asdict(figure) for figure in figures],
        "tables": tables or {},
    }
    path.write_text(json.dumps(document, indent=2) + "\n")


def results_read(path: Path) -> dict[str, Any]:
    """A results document, its figures as ``Figure`` objects."""
    document = json.loads(path.read_text())
    document["figures"] = [Figure(**figure) for figure in document["figures"]]
    return document
