"""Resync: move the producer's watermark back so its next cycle re-reads the view.

An operation of its own because it is done in two steps with a person in between: plan()
looks at what is there and says what would change, apply() changes it once the operator
agreed. apply() takes the producer's source lock, so the change lands between two cycles and
works while the services run. A re-read from a time queues only real differences, thanks to
the fingerprints; forgetting the fingerprints too queues every row again (harmless: the
consumer's guard leaves unchanged rows untouched). The committed watermark in PostgreSQL is
lowered too, so a Redis loss right after cannot skip the re-read.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from facusync import control
from facusync.config import Config
from facusync.errors import FacusyncError
from facusync.lock import RedisLock
from facusync.pgconn import connect_pg
from facusync.redisconn import Keys, connect_redis
from facusync.stream import Stream
from facusync.timeparse import parse_moment

EARLIEST = datetime(1753, 1, 1)  # SQL Server's first datetime: the producer reads every row
LOCK_TTL = 60.0


def since_target(typed: str, cfg: Config) -> datetime:
    """--since as the source's local time: a date as typed (day first, or ISO), or an age
    counted back from the source's clock now; UsageError for anything unclear."""
    return parse_moment(typed, datetime.now(cfg.tz).replace(tzinfo=None), "--since")


@dataclass(frozen=True)
class ResyncPlan:
    """Where the watermark is, where it would go, and what would be forgotten."""

    target: datetime  # source local time the producer re-reads from
    everything: bool  # the whole view, fingerprints forgotten
    current: datetime | None  # the watermark now (None: the producer never ran)
    fingerprints: int  # how many the producer remembers now

    @property
    def nothing_to_do(self) -> bool:
        """A re-read from a time the watermark has not passed yet would change nothing."""
        return not self.everything and self.current is not None and self.target >= self.current


def plan(cfg: Config, *, since: str | None, everything: bool) -> ResyncPlan:
    """Read where the producer stands; change nothing."""
    target = EARLIEST if everything or since is None else since_target(since, cfg)
    client = connect_redis(cfg)
    try:
        stream = Stream(client, Keys(cfg.redis_prefix))
        return ResyncPlan(target, everything, stream.watermark(), stream.fingerprint_count())
    finally:
        client.close()


def apply(cfg: Config, planned: ResyncPlan, *, lock_wait: float) -> None:
    """Move the watermark (Redis and sync_control) between two producer cycles."""
    keys = Keys(cfg.redis_prefix)
    client = connect_redis(cfg)
    try:
        lock = RedisLock(client, keys.source_lock, ttl=LOCK_TTL, owner="resync")
        if not lock.acquire(wait=lock_wait, priority=True):
            raise FacusyncError(f"the producer is busy (lock held by {lock.holder()}); try again")
        try:
            Stream(client, keys).move_watermark(planned.target,
                                                forget_fingerprints=planned.everything)
            conn = connect_pg(cfg, application="facusync-resync")
            try:
                with conn.cursor() as cur:
                    control.lower_watermark(cur, planned.target)
                conn.commit()
            finally:
                conn.close()
        finally:
            lock.release()
    finally:
        client.close()
