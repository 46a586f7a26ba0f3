#!/usr/bin/env bash
# Regenerates every figure docs/performance.md publishes, in one go (about 40 minutes on 2 cores):
#   benchmarks/results/redis.json, inprocess.json  CSJD beside its limits (bench_redis, bench_inprocess)
#   benchmarks/peers/results.json                  CSJD beside seven peers (peers/run.py)
#   docs/img/*.png, docs/img/peers/*.png           their plots
# CSJD's own benchmarks run with the `python` of the environment you develop in (pip install -e
# ".[dev]"); the peers and matplotlib live in a benchmarks-only virtualenv (.venv-peers), made on
# first use. Run it on a quiet machine: absolute figures vary 2x with load.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [[ ! -x .venv-peers/bin/python ]]; then
  python3 -m venv .venv-peers
  .venv-peers/bin/pip install -q -e . -r benchmarks/peers/requirements.txt
fi
py=.venv-peers/bin/python
mkdir -p benchmarks/results
python benchmarks/bench_redis.py --repeat 5 --json benchmarks/results/redis.json
python benchmarks/bench_inprocess.py --repeat 5 --json benchmarks/results/inprocess.json
# A peer's run that fails (a timeout, a job run twice) is recorded as failed and makes run.py
# exit 1: the other figures are still published.
$py benchmarks/peers/run.py --repeat 3 || echo "publish: some peer runs failed (see results.json)"
$py benchmarks/plot.py
$py benchmarks/peers/plot.py
