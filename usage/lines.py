"""Reads of limit lines: each line's current window, usage and status (SPEC 11.3 and 11.4).

An account's lines are the three whole-metric monthly lines (``accounts.selectors
.limit_lines``, always, limited or not) and its scoped limits. Each is read over its own
current window in the account's time zone (``accounts.windows``), from counters only
(``usage.selectors.lines_used_milli``), so a read costs the same at a thousand and at ten
million stored events. Status, remaining and the pre-flight answer follow the one rule of
section 4, ``MetricUsage``: a line is a ``MetricUsage`` over its window.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from django.utils import timezone

from accounts.labels import labels_match
from accounts.models import Account
from accounts.selectors import LimitLine, limit_lines
from accounts.windows import PeriodKind, Window, window_containing

from .selectors import MetricUsage, Status, account_usage, lines_used_milli

_SEVERITY = {Status.OK: 0, Status.WARNING: 1, Status.BLOCKED: 2}


@dataclass(frozen=True)
class LineUsage:
    """Where one limit line stands over its current window."""

    line: LimitLine
    window: Window
    usage: MetricUsage

    @property
    def is_whole_metric_month(self) -> bool:
        return self.line.scoped_limit_id is None

    @property
    def is_extended(self) -> bool:
        """An extension raises the line's blocked threshold in the current window."""
        return self.usage.blocked is not None and self.usage.extension > 0


def worst_status(statuses: list[str]) -> str:
    """The most severe of ``statuses`` (``ok`` when there are none)."""
    return max(statuses, key=_SEVERITY.__getitem__, default=Status.OK)


def account_lines_usage(
    *,
    account: Account,
    metric: str | None = None,
    labels: Mapping[str, str] | None = None,
    now: datetime | None = None,
) -> list[LineUsage]:
    """The account's lines in their order (SPEC 11.3), each over its current window.

    ``metric`` keeps the lines of that metric; ``labels`` keeps those that apply to usage
    carrying these labels (SPEC 11.4: the line's labels are contained in them). Stored
    thresholds of an account that is not Enterprise are kept but not in force, as for the
    monthly limits.
    """
    now = now or timezone.now()
    lines = [
        line
        for line in limit_lines(account=account)
        if (metric is None or line.metric == metric)
        and (labels is None or labels_match(line=line.labels, event=labels))
    ]
    monthly = {usage.metric: usage for usage in account_usage(account=account)}
    scoped = [line for line in lines if line.scoped_limit_id is not None]
    windows = {
        id(line): window_containing(
            kind=line.period, instant=now, zone=account.zone, days=line.window_days
        )
        for line in lines
    }
    used = dict(
        zip(
            map(id, scoped),
            lines_used_milli(account=account, lines=scoped, now=now) if scoped else [],
            strict=True,
        )
    )
    result = []
    for line in lines:
        if line.scoped_limit_id is None:
            usage = monthly[line.metric]
        else:
            in_force = account.is_enterprise
            usage = MetricUsage(
                account_id=account.pk,
                metric=line.metric,
                used_milli=used[id(line)],
                warning=line.warning if in_force else None,
                blocked=line.blocked if in_force else None,
                extension=0,
            )
        result.append(LineUsage(line=line, window=windows[id(line)], usage=usage))
    return result


def line_period_data(line: LineUsage, account: Account) -> dict[str, object]:
    """The ``current_period`` object of SPEC 11.3: kind, days, start and end, local offsets."""
    zone = account.zone
    return {
        "period": PeriodKind(line.line.period).value,
        "window_days": line.line.window_days,
        "start_time": line.window.start.astimezone(zone).isoformat(),
        "end_time": line.window.end.astimezone(zone).isoformat(),
    }
