"""The dashboards' throughput chart: counter samples kept in memory, drawn as inline SVG.

One chart for every front end (the Django admin page and the Flask blueprint, through
`csjd_core.dashboard`); it uses the standard library only.

CSJD's counters are cumulative (attempts finished since a dispatcher was created, or — in Redis
mode — since the queue's stats hash was created). A rate needs two readings, so every dashboard
view records one sample of the counters (at most one per `ThroughputSamples.min_interval`
seconds) in a small ring buffer of this web process, and the chart draws the rate between
consecutive samples. Samples are taken only when the page is viewed: the chart is as fine as the
page is refreshed (the page's auto-refresh option samples regularly), it starts empty after a
restart, and each web process keeps its own.
"""

from __future__ import annotations

import itertools
import math
import threading
from collections import OrderedDict, deque
from dataclasses import dataclass

__all__ = ["SVG", "Rate", "Sample", "ThroughputSamples", "throughput_svg"]


@dataclass(frozen=True, slots=True)
class Sample:
    """Cumulative counters read at ``at`` (seconds since the epoch)."""

    at: float
    processed: int
    failed: int


@dataclass(frozen=True, slots=True)
class Rate:
    """Attempts finished (and jobs failed) per second between two samples, ending at ``at``."""

    at: float
    processed: float
    failed: float


class ThroughputSamples:
    """A bounded, thread-safe ring buffer of samples per source (a mode and where it points).

    Args:
        size: samples kept per source.
        min_interval: seconds; a sample closer than this to the previous one is not recorded.
        max_sources: sources kept (the least recently recorded is forgotten first).
    """

    def __init__(self, size: int = 120, min_interval: float = 1.0, max_sources: int = 8) -> None:
        self.size = size
        self.min_interval = min_interval
        self.max_sources = max_sources
        self._lock = threading.Lock()
        self._series: OrderedDict[str, deque[Sample]] = OrderedDict()

    def record(self, source: str, sample: Sample) -> None:
        """Add a sample of ``source`` unless the previous one is too recent."""
        with self._lock:
            series = self._series.get(source)
            if series is None:
                series = self._series[source] = deque(maxlen=self.size)
                while len(self._series) > self.max_sources:
                    self._series.popitem(last=False)
            self._series.move_to_end(source)
            if series and sample.at - series[-1].at < self.min_interval:
                return
            series.append(sample)

    def samples(self, source: str) -> list[Sample]:
        """The samples of ``source``, oldest first."""
        with self._lock:
            return list(self._series.get(source, ()))

    def rates(self, source: str) -> list[Rate]:
        """Per-second rates between consecutive samples of ``source``.

        A counter that went down was reset (a new dispatcher, a flushed Redis): its new value is
        taken as the increase since the reset, as Prometheus' ``rate()`` does.
        """
        samples = self.samples(source)
        rates = []
        for before, after in itertools.pairwise(samples):
            elapsed = after.at - before.at
            if elapsed <= 0:
                continue
            processed = _increase(before.processed, after.processed)
            failed = _increase(before.failed, after.failed)
            rates.append(Rate(after.at, processed / elapsed, failed / elapsed))
        return rates

    def clear(self) -> None:
        """Forget every sample."""
        with self._lock:
            self._series.clear()


def _increase(before: int, after: int) -> int:
    return after - before if after >= before else after


# -- drawing -------------------------------------------------------------------------------
WIDTH, HEIGHT = 640, 180
LEFT, RIGHT, TOP, BOTTOM = 56, 12, 12, 28  # margins for the axis labels


class SVG(str):
    """Markup built here from numbers only: templates insert it as is.

    Django's and Jinja's autoescaping both honour ``__html__`` (the protocol of Django's
    `SafeString` and MarkupSafe's `Markup`), so neither framework marks anything safe.
    """

    __slots__ = ()

    def __html__(self) -> str:
        return str(self)


def throughput_svg(rates: list[Rate], *, now: float) -> SVG:
    """An inline SVG line chart of ``rates`` (attempts/s in blue, failures/s in red).

    Every value placed in the markup is a number formatted here (or a fixed label), so nothing
    from a job can reach it.
    """
    if len(rates) < 2:
        return SVG(
            f'<svg class="csjd-throughput" role="img" width="{WIDTH}" height="{HEIGHT}" '
            f'viewBox="0 0 {WIDTH} {HEIGHT}" xmlns="http://www.w3.org/2000/svg">'
            "<title>Throughput: not enough samples yet</title>"
            f'<rect x="0.5" y="0.5" width="{WIDTH - 1}" height="{HEIGHT - 1}" fill="none" '
            'stroke="#ccc"/>'
            f'<text x="{WIDTH // 2}" y="{HEIGHT // 2}" text-anchor="middle" fill="#666" '
            'font-size="13">'
            "Not enough samples yet: reload the page, or turn on auto-refresh.</text></svg>"
        )
    start = rates[0].at
    span = max(now - start, rates[-1].at - start, 1e-9)
    peak = max(max(r.processed, r.failed) for r in rates)
    top = _nice_ceiling(peak)
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def point(at: float, value: float) -> str:
        x = LEFT + (at - start) / span * plot_w
        y = TOP + plot_h - (value / top) * plot_h
        return f"{x:.1f},{y:.1f}"

    processed = " ".join(point(r.at, r.processed) for r in rates)
    failed = " ".join(point(r.at, r.failed) for r in rates)
    label = _format_span(span)
    right, base, label_y = WIDTH - RIGHT, TOP + plot_h, HEIGHT - 8
    legend_x, legend_x2, legend_tx = right - 150, right - 130, right - 124
    return SVG(
        f'<svg class="csjd-throughput" role="img" width="{WIDTH}" height="{HEIGHT}" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" xmlns="http://www.w3.org/2000/svg">'
        f"<title>Attempts finished per second over the last {label}</title>"
        f"{_grid(top, plot_h)}"
        f'<line x1="{LEFT}" y1="{base}" x2="{right}" y2="{base}" stroke="#999"/>'
        f'<polyline fill="none" stroke="#417690" stroke-width="2" points="{processed}"/>'
        f'<polyline fill="none" stroke="#ba2121" stroke-width="1.5" points="{failed}"/>'
        f'<text x="{LEFT}" y="{label_y}" fill="#666" font-size="11">-{label}</text>'
        f'<text x="{right}" y="{label_y}" text-anchor="end" fill="#666" font-size="11">now</text>'
        f'<line x1="{legend_x}" y1="20" x2="{legend_x2}" y2="20" stroke="#417690" '
        'stroke-width="2"/>'
        f'<text x="{legend_tx}" y="24" fill="#333" font-size="11">attempts finished/s</text>'
        f'<line x1="{legend_x}" y1="36" x2="{legend_x2}" y2="36" stroke="#ba2121" '
        'stroke-width="1.5"/>'
        f'<text x="{legend_tx}" y="40" fill="#333" font-size="11">jobs failed/s</text>'
        "</svg>"
    )


def _grid(top: float, plot_h: int) -> str:
    """Five horizontal grid lines labelled with their rate."""
    lines = []
    for i in range(5):
        y = f"{TOP + plot_h - plot_h * i / 4:.1f}"
        lines.append(
            f'<line x1="{LEFT}" y1="{y}" x2="{WIDTH - RIGHT}" y2="{y}" stroke="#eee"/>'
            f'<text x="{LEFT - 6}" y="{y}" dy="4" text-anchor="end" fill="#666" '
            f'font-size="11">{_format_rate(top * i / 4)}</text>'
        )
    return "".join(lines)


def _nice_ceiling(value: float) -> float:
    """The smallest of 1, 2, 5 x 10^n at or above ``value`` (1 for an idle chart)."""
    if value <= 0:
        return 1.0
    scale = 10.0 ** math.floor(math.log10(value))
    return next(step * scale for step in (1, 2, 5, 10) if step * scale >= value)


def _format_rate(value: float) -> str:
    if value == 0:
        return "0/s"
    if value >= 10:
        return f"{value:.0f}/s"
    return f"{value:.2g}/s"


def _format_span(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
