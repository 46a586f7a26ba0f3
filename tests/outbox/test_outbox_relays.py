"""Several standalone relays (``manage.py csjd_relay --burst``) at once on one PostgreSQL outbox:
``SELECT ... FOR UPDATE SKIP LOCKED`` gives each batch to one relay, so every row is admitted
exactly once and no relay finds an id another one admitted."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable

import psycopg
import pytest
from outbox_support import Site, relay_counters

from csjd_core.testing import wait_until

from redis_server import RedisServerProcess

ROWS = 4_000  # eight of a relay's batches (500)


def relays_waiting_for_the_table(site: Site) -> int:
    """Relays whose claim waits for the lock the test holds on ``csjd_outbox``."""
    return int(
        site.query(
            "SELECT count(*) FROM pg_locks WHERE NOT granted AND relation = 'csjd_outbox'::regclass"
        )
    )


@pytest.mark.timeout(180)
# Four relays in the soak tier (the default run's time budget): two prove the sharing already.
@pytest.mark.parametrize("relays", [2, pytest.param(4, marks=pytest.mark.soak)])
def test_concurrent_relays_relay_every_row_exactly_once(
    sites: Callable[..., Site],
    redis_server_factory: Callable[..., RedisServerProcess],
    relays: int,
) -> None:
    server = redis_server_factory()
    site = sites(server.url)
    web = site.enqueue(ROWS)
    assert web.returncode == 0, web.proc.err()
    assert site.rows_left() == ROWS

    # Start them together: the test holds the table (EXCLUSIVE mode: a claim's row locks
    # wait for it) until every relay is waiting for it, then lets them all go at once.
    with psycopg.connect(site.database_url) as gate:
        gate.execute("LOCK TABLE csjd_outbox IN EXCLUSIVE MODE")
        procs = [site.start("csjd_relay", "--burst") for _ in range(relays)]
        wait_until(
            lambda: relays_waiting_for_the_table(site) == relays,
            timeout=60,
            interval=0.02,
            message=lambda: f"{relays} relays waiting; stderr: {[p.err() for p in procs]}",
        )
    released = time.monotonic()  # (the block committed: the lock is gone)
    codes = [proc.wait(60) for proc in procs]
    took = time.monotonic() - released
    counters = [relay_counters(proc.err()) for proc in procs]
    ids = site.stream_ids()
    repeated = {job_id: n for job_id, n in Counter(ids).items() if n > 1}
    print(
        f"\n{relays} relays on {ROWS} rows in {took:.2f} s: relayed "
        f"{[c.relayed for c in counters]} (sum {sum(c.relayed for c in counters)}), skipped "
        f"{[c.skipped for c in counters]}, batches {[c.batches for c in counters]}; stream "
        f"{len(ids)} entries, {len(set(ids))} distinct ids; outbox rows left {site.rows_left()}"
    )

    assert codes == [0] * relays, [p.err() for p in procs]
    assert len(ids) == ROWS and not repeated
    assert set(ids) == set(web.ids)
    assert site.rows_left() == 0
    assert sum(c.relayed for c in counters) == ROWS
    assert sum(c.skipped for c in counters) == 0  # no batch was admitted by two relays
    assert sum(c.postponed + c.set_aside + c.errors for c in counters) == 0
    # They did run at once: more than one relay took batches.
    assert sum(1 for c in counters if c.relayed) >= 2
