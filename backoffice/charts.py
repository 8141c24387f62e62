"""The usage chart of each limit line on the account page, drawn server-side as inline SVG.

Each line's current window is drawn left to right, one step per local day (or per local
hour for a ``day`` line, see ``usage.selectors.account_lines_steps``), with the usage
accumulated from the window's start up to the current step, against the line's warning
and blocked thresholds (the blocked one with the period's extensions). The page needs no
script and no external file: the SVG carries its own title and description, and the same
figures are written as text beside it and in a table per step.

Only geometry and wording live here; what is drawn is read by ``account_lines_steps``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from django.utils import formats
from django.utils.translation import gettext

from accounts.forms import UNIT_LABELS
from accounts.metrics import METRICS
from accounts.models import Account
from accounts.windows import PeriodKind, Window
from config.dates import date_text, datetime_text
from usage.models import MILLI
from usage.quantities import quantity_text, threshold_text
from usage.selectors import LineSteps, Status, account_lines_steps

# The drawing's frame, in SVG user units (it scales to the page's width).
WIDTH = 560
HEIGHT = 232
PLOT_LEFT = 84
PLOT_RIGHT = 548
PLOT_TOP = 16
PLOT_BOTTOM = 196
# The frame as the template reads it.
FRAME = {
    "width": WIDTH,
    "height": HEIGHT,
    "left": PLOT_LEFT,
    "right": PLOT_RIGHT,
    "top": PLOT_TOP,
    "bottom": PLOT_BOTTOM,
    "tick_end": PLOT_BOTTOM + 4,
    "y_labels": PLOT_LEFT - 8,
    "top_label": PLOT_TOP + 4,
    "unit_label": PLOT_TOP + 18,
    "zero_label": PLOT_BOTTOM + 4,
    "x_labels": PLOT_BOTTOM + 20,
    "threshold_labels": PLOT_RIGHT - 4,
}
# Beyond this many steps (a long rolling window), no tick per step: they would merge.
MAX_TICKS = 62


@dataclass(frozen=True)
class Threshold:
    level: str
    y: str
    label: str
    label_y: str


@dataclass(frozen=True)
class AxisLabel:
    x: str
    text: str
    anchor: str


@dataclass(frozen=True)
class StepRow:
    step: str
    used: str
    cumulative: str


@dataclass(frozen=True)
class Chart:
    """One line's chart, every value written for the template (``includes/usage_charts.html``)."""

    key: str
    line: str
    period: str
    unit: str
    status: str
    step_kind: str
    figures: str
    description: str
    steps_caption: str
    # The drawing; empty ``points`` and ``rows`` for a line shown as its current figure.
    points: str
    area: str
    last_x: str
    last_y: str
    thresholds: tuple[Threshold, ...]
    ticks: tuple[str, ...]
    x_labels: tuple[AxisLabel, ...]
    y_top: str
    rows: tuple[StepRow, ...]


def _nice_ceiling(value_milli: int) -> int:
    """The smallest 1, 2 or 5 times a power of ten, in whole units, at or above the value."""
    units = max(1, -(-value_milli // MILLI))
    power = 10 ** (len(str(units)) - 1)
    for factor in (1, 2, 5, 10):
        if factor * power >= units:
            return factor * power * MILLI
    raise AssertionError  # unreachable: 10 * power >= units


def _number(value: float) -> str:
    return f"{value:.1f}"


def _step_text(step: Window, show_offset: bool) -> str:
    local = step.local_start
    if step.kind == PeriodKind.DAY:
        return date_text(local.date())
    text = formats.time_format(local, "H:i")
    if not show_offset:
        return text
    offset = local.strftime("%z")  # "+0200": the hour of a day where the offset changes
    return f"{text} (UTC{offset[:3]}:{offset[3:]})"


def _period_text(steps: LineSteps) -> str:
    window = steps.line_usage.window
    kind = steps.line_usage.line.period_text()
    return gettext("%(kind)s from %(start)s to %(end)s (%(zone)s time)") % {
        "kind": kind,
        "start": datetime_text(window.local_start, window.zone.key, with_zone=False),
        "end": datetime_text(window.local_end, window.zone.key, with_zone=False),
        "zone": window.zone.key,
    }


def _figures(steps: LineSteps, unit: str) -> str:
    usage = steps.line_usage.usage
    metric = usage.metric
    parts = [
        gettext("Used: %(used)s %(unit)s.")
        % {"used": quantity_text(usage.used_milli, metric), "unit": unit}
    ]
    if usage.warning is not None:
        parts.append(
            gettext("Warning threshold: %(threshold)s %(unit)s.")
            % {"threshold": threshold_text(usage.warning, metric), "unit": unit}
        )
    if usage.blocked is not None:
        if usage.extension:
            parts.append(
                gettext(
                    "Blocked threshold: %(threshold)s %(unit)s "
                    "(%(blocked)s + extensions %(extension)s)."
                )
                % {
                    "threshold": threshold_text(usage.effective_blocked, metric),
                    "unit": unit,
                    "blocked": threshold_text(usage.blocked, metric),
                    "extension": threshold_text(usage.extension, metric),
                }
            )
        else:
            parts.append(
                gettext("Blocked threshold: %(threshold)s %(unit)s.")
                % {"threshold": threshold_text(usage.blocked, metric), "unit": unit}
            )
    if usage.warning is None and usage.blocked is None:
        parts.append(gettext("No threshold."))
    return " ".join(parts)


def line_chart(steps: LineSteps, *, key: str) -> Chart:
    """The chart of one line (``key`` tells its SVG's ids apart on the page)."""
    usage = steps.line_usage.usage
    metric = usage.metric
    spec = METRICS[metric]
    unit = str(UNIT_LABELS.get(spec.unit, spec.unit))
    figures = _figures(steps, unit)
    period = _period_text(steps)
    if steps.step_kind == PeriodKind.DAY:
        description = gettext(
            "Usage accumulated day by day, in %(unit)s, %(period)s, against the thresholds. %(figures)s"
        )
        caption = gettext("Usage per day")
    else:
        description = gettext(
            "Usage accumulated hour by hour, in %(unit)s, %(period)s, against the thresholds. %(figures)s"
        )
        caption = gettext("Usage per hour")
    description %= {"unit": unit, "period": period, "figures": figures}

    thresholds: list[tuple[str, int, str]] = []
    if usage.warning is not None:
        thresholds.append(
            (
                Status.WARNING,
                usage.warning * MILLI,
                gettext("Warning: %(threshold)s")
                % {"threshold": threshold_text(usage.warning, metric)},
            )
        )
    if usage.effective_blocked is not None:
        thresholds.append(
            (
                Status.BLOCKED,
                usage.effective_blocked * MILLI,
                gettext("Blocked: %(threshold)s")
                % {"threshold": threshold_text(usage.effective_blocked, metric)},
            )
        )
    count = len(steps.steps)
    highest = max([usage.used_milli, *(steps.used[-1:]), *(value for _l, value, _t in thresholds)])
    top = _nice_ceiling(highest)
    span = PLOT_BOTTOM - PLOT_TOP

    def y_of(value_milli: int) -> float:
        return PLOT_BOTTOM - span * value_milli / top

    def x_of(index: int) -> float:
        return PLOT_LEFT + (PLOT_RIGHT - PLOT_LEFT) * index / count if count else PLOT_LEFT

    coordinates = [(x_of(0), y_of(0))] + [
        (x_of(index + 1), y_of(value)) for index, value in enumerate(steps.used)
    ]
    points = " ".join(f"{_number(x)},{_number(y)}" for x, y in coordinates) if count else ""
    area = (
        f"{points} {_number(coordinates[-1][0])},{_number(PLOT_BOTTOM)}"
        if count and steps.used
        else ""
    )
    offsets = {step.local_start.utcoffset() for step in steps.steps}
    show_offset = len(offsets) > 1
    labels: list[AxisLabel] = []
    if count:
        labels = [
            AxisLabel(_number(PLOT_LEFT), _step_text(steps.steps[0], show_offset), "start"),
            AxisLabel(_number(PLOT_RIGHT), _step_text(steps.steps[-1], show_offset), "end"),
        ]
    # Threshold labels sit above their line, at the right end of the plot, or below it when
    # another label is too close or the line is at the top.
    placed: list[Threshold] = []
    for level, value, label in thresholds:
        y = y_of(value)
        label_y = y - 4
        if label_y < PLOT_TOP + 12 or (placed and abs(float(placed[-1].label_y) - label_y) < 14):
            label_y = y + 14
        placed.append(Threshold(level, _number(y), label, _number(label_y)))
    previous = 0
    rows = []
    for step, cumulative in zip(steps.steps, steps.used, strict=False):
        rows.append(
            StepRow(
                step=_step_text(step, show_offset),
                used=quantity_text(cumulative - previous, metric),
                cumulative=quantity_text(cumulative, metric),
            )
        )
        previous = cumulative
    return Chart(
        key=key,
        line=steps.line_usage.line.text(),
        period=period,
        unit=unit,
        status=usage.status,
        step_kind=steps.step_kind.value if steps.step_kind else "",
        figures=figures,
        description=description,
        steps_caption=caption,
        points=points,
        area=area,
        last_x=_number(coordinates[-1][0]),
        last_y=_number(coordinates[-1][1]),
        thresholds=tuple(placed),
        ticks=tuple(_number(x_of(index)) for index in range(1, count))
        if count <= MAX_TICKS
        else (),
        x_labels=tuple(labels),
        y_top=quantity_text(top, metric),
        rows=tuple(rows),
    )


def account_charts(*, account: Account, now: datetime | None = None) -> list[Chart]:
    """The chart of every limit line of ``account``, in the lines' order."""
    return [
        line_chart(steps, key=f"usage-chart-{index}")
        for index, steps in enumerate(account_lines_steps(account=account, now=now))
    ]
