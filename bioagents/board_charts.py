"""The board's history charts (SPEC §7): a queue's last 24 h turned into the geometry of two
inline SVG charts that `templates/_charts.html` draws. No chart library and no script: paths
in a 1440 x 100 box (a unit per minute) that CSS stretches to any width, with the axis labels
in HTML beside them so they stay readable on a phone.

- Jobs per minute: completed (area) and failed (line; timed out and cancelled count as failed,
  as the board lists them), on a linear scale from 0 to a round maximum.
- Wait and run time, p50 and p95 per quarter hour, from the history's fixed buckets, on a
  logarithmic scale of whole decades.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence

from .history import MINUTES, Outcome, QueueDay, quantile

WIDTH, HEIGHT = MINUTES, 100
BIN_MINUTES = 15  # one time quantile per quarter hour: enough jobs per point to mean something
FAILED = (Outcome.FAILED.value, Outcome.TIMED_OUT.value, Outcome.CANCELLED.value)
X_LABELS = ("24 h ago", "18 h", "12 h", "6 h", "now")
SHORTEST, LONGEST = 0.001, 10_000.0  # seconds: the time scale never goes beyond these


@dataclasses.dataclass
class Series:
    key: str  # what tests and CSS find it by: "completed", "wait-p50", …
    label: str
    path: str  # SVG path data in the WIDTH x HEIGHT box
    area: bool = False  # filled down to the axis


@dataclasses.dataclass
class Chart:
    key: str
    title: str
    series: list[Series]
    y_labels: list[str]  # top to bottom, evenly spaced like `gridlines`
    gridlines: list[float]  # y of each label's line

    @property
    def x_labels(self) -> tuple[str, ...]:
        return X_LABELS


@dataclasses.dataclass
class QueueCharts:
    queue: str
    completed: int  # last 24 h
    failed: int
    timed_out: int
    cancelled: int
    last_hour_completed: int
    last_hour_failed: int
    wait_p50: float | None  # seconds, over the 24 h
    wait_p95: float | None
    run_p50: float | None
    run_p95: float | None
    throughput: Chart
    times: Chart


def _number(y: float) -> str:
    return f"{y:.2f}".rstrip("0").rstrip(".")


def step_path(
    values: Sequence[float | None],
    to_y: Callable[[float], float],
    width_per_value: float,
    area: bool,
) -> str:
    """A step line over `values` (None: a gap), one step of `width_per_value` each."""
    parts: list[str] = []
    drawing = False
    k = 0
    while k < len(values):
        value = values[k]
        end = k
        while end < len(values) and values[end] == value:
            end += 1
        x0, x1 = _number(k * width_per_value), _number(end * width_per_value)
        if value is None:
            drawing = False
        else:
            y = _number(to_y(value))
            parts.append(f"V{y}H{x1}" if drawing else f"M{x0} {y}H{x1}")
            drawing = True
        k = end
    if area and parts:
        return (
            f"M0 {HEIGHT}"
            + "".join(p if p[0] != "M" else "L" + p[1:] for p in parts)
            + (f"V{HEIGHT}Z")
        )
    return "".join(parts)


def nice_ceiling(value: float) -> int:
    """The smallest of 1, 2, 5 x 10^k that is >= value, at least 2 (so the middle label is a
    whole job)."""
    if value <= 2:
        return 2
    magnitude = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 5, 10):
        if step * magnitude >= value:
            return int(step * magnitude)
    return int(10 * magnitude)


def throughput_chart(day: QueueDay) -> Chart:
    completed = day.outcome_series(Outcome.COMPLETED.value)
    failed = day.outcome_series(*FAILED)
    top = nice_ceiling(max([*completed, *failed, 0]))

    def to_y(value: float) -> float:
        return HEIGHT - HEIGHT * value / top

    return Chart(
        key="throughput",
        title="Jobs finished per minute",
        series=[
            Series("completed", "completed", step_path(completed, to_y, 1, area=True), area=True),
            Series("failed", "failed", step_path(failed, to_y, 1, area=False)),
        ],
        y_labels=[f"{top:,}", f"{top / 2:,.4g}", "0"],
        gridlines=[0.0, HEIGHT / 2, float(HEIGHT)],
    )


def seconds_label(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1000:g} ms"
    if seconds < 100:
        return f"{seconds:g} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.2g} min"
    return f"{seconds / 3600:.2g} h"


def times_chart(day: QueueDay) -> Chart:
    bins = range(0, len(day.minutes), BIN_MINUTES)
    lines: dict[str, list[float | None]] = {}
    for kind, name in (("w", "wait"), ("r", "run")):
        buckets = [day.buckets(kind, start, start + BIN_MINUTES) for start in bins]
        lines[f"{name}-p50"] = [quantile(b, 0.5) for b in buckets]
        lines[f"{name}-p95"] = [quantile(b, 0.95) for b in buckets]
    seen = [v for values in lines.values() for v in values if v]
    low = max(SHORTEST, 10 ** math.floor(math.log10(min(seen)))) if seen else 0.01
    high = min(LONGEST, 10 ** math.ceil(math.log10(max(seen)))) if seen else 10.0
    if high <= low:
        high = low * 10
    decades = round(math.log10(high / low))

    def to_y(value: float) -> float:
        clamped = min(max(value, low), high)
        return HEIGHT - HEIGHT * math.log10(clamped / low) / decades

    labels = {"wait-p50": "wait p50", "wait-p95": "wait p95", "run-p50": "run p50"}
    labels["run-p95"] = "run p95"
    return Chart(
        key="times",
        title="Wait and run time (p50, p95 per 15 min)",
        series=[
            Series(key, labels[key], step_path(values, to_y, BIN_MINUTES, area=False))
            for key, values in lines.items()
        ],
        y_labels=[seconds_label(high / 10**i) for i in range(decades + 1)],
        gridlines=[HEIGHT * i / decades for i in range(decades + 1)],
    )


def queue_charts(day: QueueDay) -> QueueCharts:
    last_hour = slice(len(day.minutes) - 60, None)
    completed = day.outcome_series(Outcome.COMPLETED.value)
    failed = day.outcome_series(*FAILED)
    wait, run = day.buckets("w"), day.buckets("r")
    return QueueCharts(
        queue=day.queue,
        completed=sum(completed),
        failed=sum(failed),
        timed_out=day.total(Outcome.TIMED_OUT.value),
        cancelled=day.total(Outcome.CANCELLED.value),
        last_hour_completed=sum(completed[last_hour]),
        last_hour_failed=sum(failed[last_hour]),
        wait_p50=quantile(wait, 0.5),
        wait_p95=quantile(wait, 0.95),
        run_p50=quantile(run, 0.5),
        run_p95=quantile(run, 0.95),
        throughput=throughput_chart(day),
        times=times_chart(day),
    )
