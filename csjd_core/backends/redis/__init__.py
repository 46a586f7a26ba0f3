"""The Redis Streams backend, one module per concern (docs/architecture.md):

- `keys`: every key of a queue (one Cluster hash tag per queue);
- `connection`: the connection pools and the Lua scripts of ``lua/``;
- `codec`: the wire format (entries, job records, dead letters, settle ops);
- `holdings`: what one consumer holds in this process;
- `reader`: the reader thread (reads, starts, hands over, hands back);
- `settle`: fenced, group-committed outcomes;
- `maintenance`: promotion, heartbeats and lease renewal, reclaiming, consumer GC;
- `admin`: status, counts, typed stats, dead letters;
- `backend`: `RedisStreamsBackend`, the `Backend` seam assembled from them.
"""

from csjd_core.backends.redis.backend import RedisStreamsBackend
from csjd_core.backends.redis.keys import QueueKeys
from csjd_core.stats import DeadLetter

__all__ = ["DeadLetter", "QueueKeys", "RedisStreamsBackend"]
