"""CSJD in distributed mode, as its README shows; workers run with ``csjd worker``.

``max_pending_jobs`` is raised past the largest preload: it is an admission cap (the peers have
none), not a speed setting. Everything else is the default (8 worker threads per process).
"""

from __future__ import annotations

from apps import probe
from csjd_core import App
from csjd_core.config import DistributedConfig, RedisConfig

app = App(
    mode="redis",
    redis=RedisConfig.from_url(probe.URL),
    distributed=DistributedConfig(max_pending_jobs=1_000_000),
)


@app.job("peers.noop")
def noop(ts: float) -> None:
    """No-op."""
    probe.noop(ts)


@app.job("peers.incr")
def incr(ts: float) -> None:
    """One Redis INCR."""
    probe.incr(ts)


@app.job("peers.latency")
def latency(ts: float) -> None:
    """Records enqueue-to-start latency."""
    probe.latency(ts)
