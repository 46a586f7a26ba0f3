"""``python fast_clock.py SECONDS csjd-args...``: run the ``csjd`` command line in a process
whose host clock (``time.time``, ``time.time_ns``) is SECONDS ahead, patched before csjd_core is
imported (so every ``time.time`` and ``from time import time`` in it sees the fast clock)."""

from __future__ import annotations

import sys
import time

OFFSET = float(sys.argv.pop(1))
_real_time, _real_time_ns = time.time, time.time_ns
time.time = lambda: _real_time() + OFFSET
time.time_ns = lambda: _real_time_ns() + int(OFFSET * 1e9)

from csjd_core.cli import main  # noqa: E402 - the clock is patched first

if __name__ == "__main__":
    sys.argv[0] = "csjd"
    main()
