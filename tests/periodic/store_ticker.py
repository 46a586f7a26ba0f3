"""``python store_ticker.py STORE RUNS READY``: an in-process app whose jobs live in the
`FileJobStore` at STORE, ticking ``every(seconds=1)`` (``catch_up="latest"``) once started
with ``app.start()``; run as a script by the file-store schedule test, which SIGKILLs it.

Each run appends ``job_id pid`` to RUNS (one ``O_APPEND`` write: a SIGKILL never tears a
line); READY is created once the app has started (the store is open, its jobs recovered).
The ticker's INFO lines ("schedule enqueued ...") go to standard error.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from pathlib import Path

from csjd_core import App, Config, FileJobStore, JobContext, every

store_path, runs_path, ready_path = sys.argv[1:4]
logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
app = App(mode="inprocess", name="store-ticker", config=Config(store=FileJobStore(store_path)))


@app.job("tick", takes_context=True, schedule=every(seconds=1), max_running=None)
def tick(ctx: JobContext) -> None:
    fd = os.open(runs_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{ctx.job_id} {os.getpid()}\n".encode())
    finally:
        os.close(fd)


app.start()
Path(ready_path).write_text(f"{os.getpid()}\n")
threading.Event().wait()  # until killed
