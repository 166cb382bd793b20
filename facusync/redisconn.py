"""Redis: one place that connects, names every key, and translates driver errors.

All keys share REDIS_PREFIX so several installations can share one Redis.
"""

from __future__ import annotations

from dataclasses import dataclass

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from facusync.config import Config
from facusync.errors import QueueError

GROUP = "facusync"


@dataclass(frozen=True, slots=True)
class Keys:
    """The Redis structures of one installation."""

    prefix: str

    @property
    def stream(self) -> str:
        """The change stream (the change queue of docs/DESIGN.md)."""
        return self.prefix + "changes"

    @property
    def dead(self) -> str:
        """Dead letters: entries that could not be written, with the reason."""
        return self.prefix + "dead"

    @property
    def dead_index(self) -> str:
        """Signatures of the dead letters, so one refused change is dead-lettered once."""
        return self.prefix + "dead:index"

    @property
    def suspects(self) -> str:
        """entry id -> times a consumer began writing it alone (MAX_DELIVERIES exceeded)."""
        return self.prefix + "suspects"

    @property
    def watermark(self) -> str:
        """The last enqueued version (the last sync timestamp of docs/DESIGN.md)."""
        return self.prefix + "watermark"

    @property
    def fingerprints(self) -> str:
        """key -> digest of the row last enqueued (the client cache of docs/DESIGN.md)."""
        return self.prefix + "fp"

    @property
    def source_lock(self) -> str:
        """Held by the producer's cycle and by reconcile, so they never interleave."""
        return self.prefix + "lock:source"

    @property
    def producer_stats(self) -> str:
        return self.prefix + "stats:producer"

    def consumer_stats(self, name: str) -> str:
        return self.prefix + "stats:consumer:" + name

    @property
    def consumer_stats_pattern(self) -> str:
        return self.prefix + "stats:consumer:*"

    @property
    def reconcile_stats(self) -> str:
        return self.prefix + "stats:reconcile"

    @property
    def batch_latencies(self) -> str:
        """Recent batch durations and sizes (a capped list) for status percentiles."""
        return self.prefix + "stats:batches"


def describe_redis_error(exc: Exception) -> str:
    """One line naming the likely cause, never the password."""
    text = str(exc)
    low = text.lower()
    if isinstance(exc, redis.AuthenticationError) or "auth" in low or "noperm" in low:
        return "authentication failed: check REDIS_PASSWORD"
    if isinstance(exc, redis.TimeoutError) or "timed out" in low:
        return "timed out: is REDIS_HOST/REDIS_PORT right and the server up?"
    if "refused" in low:
        return "connection refused: is redis-server running on REDIS_HOST:REDIS_PORT?"
    if "oom" in low or "maxmemory" in low:
        return "out of memory (maxmemory reached): the queue is full; check the consumer"
    if "name or service not known" in low or "nodename" in low:
        return "unknown host: check REDIS_HOST"
    return text


def connect_redis(cfg: Config, *, check: bool = True) -> redis.Redis:
    """A client with timeouts, so a dead server can never hang a loop.

    No retries inside the driver (newer redis-py retries a refused connection ten times with
    its own backoff, seconds in all): the loops retry with BACKOFF_MAX and log the outage
    once, so a server's return is noticed within one of their backoff steps.
    """
    client = redis.Redis(
        host=cfg.redis_host,
        port=cfg.redis_port,
        db=cfg.redis_db,
        password=cfg.redis_password.reveal() or None,
        socket_connect_timeout=cfg.redis_connect_timeout,
        socket_timeout=max(30.0, cfg.redis_connect_timeout),
        health_check_interval=30,
        retry=Retry(NoBackoff(), 0),
    )
    if check:
        try:
            client.ping()
        except (redis.RedisError, OSError) as exc:
            client.close()
            raise QueueError(describe_redis_error(exc)) from None
    return client
