"""One small module per job queue, each defining the same three jobs (no-op, INCR, latency).

Every job takes one argument, ``ts`` (the producer's ``time.time()``), and reports to `probe`.
Each module reads the Redis URL from ``PEERS_REDIS_URL`` at import.
"""
