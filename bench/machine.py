"""How busy and how fast this machine is, printed by every bench script to compare runs."""

from __future__ import annotations

import time
from pathlib import Path


def cpu_busy(seconds: float = 2.0) -> float:
    """The share of the machine's CPU time in use over ``seconds`` (from ``/proc/stat``)."""

    def sample() -> tuple[int, int]:
        ticks = [int(value) for value in Path("/proc/stat").read_text().split()[1:9]]
        return ticks[3] + ticks[4], sum(ticks)  # idle + iowait, all

    idle, total = sample()
    time.sleep(seconds)
    idle_after, total_after = sample()
    return 1 - (idle_after - idle) / max(1, total_after - total)


def python_speed() -> float:
    """Millions of iterations per second of a plain Python loop: to compare machines."""
    started = time.perf_counter()
    total = 0
    for i in range(3_000_000):
        total += i
    return 3 / (time.perf_counter() - started)
