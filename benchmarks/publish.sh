#!/usr/bin/env bash
# Regenerates every figure docs/performance.md publishes, in one go (about 40 minutes on 2 cores):
#   benchmarks/results/redis.json, inprocess.json  CSJD beside its limits (bench_redis, bench_inprocess)
#   benchmarks/results/outbox.json                 the outbox on PostgreSQL (bench_outbox)
#   benchmarks/results/memory.json                 Redis memory per queued job (bench_memory)
#   benchmarks/results/cluster.json, fleet.json, failover.json  docs/scaling.md's figures
#   benchmarks/peers/results.json                  CSJD beside seven peers (peers/run.py)
#   docs/img/*.png, docs/img/peers/*.png           their plots
# CSJD's own benchmarks run with `python` of the activated virtualenv you develop in (python3 -m
# venv .venv && . .venv/bin/activate && pip install -e ".[dev]"); the peers and matplotlib live in
# a benchmarks-only virtualenv (.venv-peers), made on first use (delete it after changing
# benchmarks/peers/requirements.txt). Run it on a quiet machine: absolute figures vary 2x with
# load. The tables of docs/performance.md are copied from the JSON it writes.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if ! python -c "import csjd_core" 2>/dev/null; then
  echo 'publish: activate the virtualenv with CSJD installed first (pip install -e ".[dev]")' >&2
  exit 2
fi
if [[ ! -x .venv-peers/bin/python ]]; then
  python3 -m venv .venv-peers
  .venv-peers/bin/pip install -q -e . -r benchmarks/peers/requirements.txt
fi
py=.venv-peers/bin/python
mkdir -p benchmarks/results
python benchmarks/bench_redis.py --repeat 5 --json benchmarks/results/redis.json
python benchmarks/bench_inprocess.py --repeat 5 --json benchmarks/results/inprocess.json
python benchmarks/bench_outbox.py --repeat 3 --json benchmarks/results/outbox.json
# Memory per queued job, beside 0.1.0's records (the package of f7b9f15, from the git history).
old_package=$(mktemp -d)
git archive f7b9f15505cba723cb13fcb818884602e526aece csjd_core | tar -x -C "$old_package"
python benchmarks/bench_memory.py --against "0.1.0=$old_package" --label compact \
  --json benchmarks/results/memory.json
rm -rf "$old_package"
# docs/scaling.md: one Redis beside a 3-master cluster, fleet maintenance, failover.
python benchmarks/bench_cluster.py --jobs 50000 --repeat 3
python benchmarks/bench_fleet.py --record after
python benchmarks/bench_failover.py --repeat 5 --json benchmarks/results/failover.json
# docs/performance.md, "Watching": metrics, logs and traces against none.
python benchmarks/bench_metrics.py --jobs 20000 --repeat 5 --json benchmarks/results/metrics.json
python benchmarks/bench_tracing.py --jobs 10000 --repeat 3 --json benchmarks/results/tracing.json
# A peer's run that fails (a timeout, a job run twice) is recorded as failed and makes run.py
# exit 3: the other figures are still published. Any other failure stops here.
status=0
$py benchmarks/peers/run.py --repeat 3 || status=$?
if ((status == 3)); then
  echo "publish: some peer runs failed; recorded as failed in benchmarks/peers/results.json"
elif ((status != 0)); then
  exit "$status"
fi
$py benchmarks/plot.py
$py benchmarks/peers/plot.py
