"""`facusync resync`: move the producer's watermark back so its next cycle re-reads.

It takes the producer's source lock, so the change lands between two cycles and works while
the services run. ``--since`` re-reads from a time (only real differences are queued, thanks
to the fingerprints); ``--all`` also forgets the fingerprints, so every row is queued again
(harmless: the consumer's guard leaves unchanged rows untouched). The committed watermark in
PostgreSQL is lowered too, so a Redis loss right after cannot skip the re-read.
"""

from __future__ import annotations

import argparse
from datetime import datetime

from facusync import control
from facusync.commands.ask import confirm
from facusync.config import Config
from facusync.errors import EX_DECLINED, EX_OK, FacusyncError
from facusync.lock import RedisLock
from facusync.pgconn import connect_pg
from facusync.redisconn import Keys, connect_redis
from facusync.stream import Stream
from facusync.timeparse import parse_moment

EARLIEST = datetime(1753, 1, 1)  # SQL Server's first datetime: the producer reads every row


def since_target(typed: str, cfg: Config) -> datetime:
    """--since as the source's local time: a date as typed (day first, or ISO), or an age
    counted back from the source's clock now; UsageError for anything unclear."""
    return parse_moment(typed, datetime.now(cfg.tz).replace(tzinfo=None), "--since")


def run(cfg: Config, args: argparse.Namespace) -> int:
    target = EARLIEST if args.all else since_target(args.since, cfg)
    keys = Keys(cfg.redis_prefix)
    client = connect_redis(cfg)
    try:
        stream = Stream(client, keys)
        current = stream.watermark()
        remembered = stream.fingerprint_count()
        print(f"current watermark: {current.isoformat(sep=' ') if current else '(none)'}")
        if args.all:
            print(f"will: re-read the WHOLE view and forget {remembered} fingerprint(s), so every row is "
                  "queued again (unchanged rows are not rewritten in PostgreSQL)")
        else:
            print(f"will: move the watermark back to {target.isoformat(sep=' ')}; the next cycle "
                  f"re-reads from there minus SYNC_OVERLAP ({cfg.sync_overlap:g} s) and queues "
                  "only rows that differ")
        if current is not None and target >= current and not args.all:
            print("nothing to do: the watermark is already at or before that time")
            return EX_OK
        if not confirm("proceed?", args.yes):
            print("cancelled")
            return EX_DECLINED
        lock = RedisLock(client, keys.source_lock, ttl=60, owner="resync")
        if not lock.acquire(wait=args.lock_wait, priority=True):
            raise FacusyncError(f"the producer is busy (lock held by {lock.holder()}); try again")
        try:
            stream.move_watermark(target, forget_fingerprints=args.all)
            conn = connect_pg(cfg, application="facusync-resync")
            try:
                with conn.cursor() as cur:
                    control.lower_watermark(cur, target)
                conn.commit()
            finally:
                conn.close()
        finally:
            lock.release()
    finally:
        client.close()
    print("done: the producer re-reads on its next cycle (watch `facusync status`)")
    return EX_OK


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = sub.add_parser("resync", help="move the watermark back so the view is re-read")
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--since", metavar="WHEN",
                      help="re-read changes from this local time of the source: a date (01/11/2026 "
                      "8:00, day first, or 2026-11-01) or an age (12h, 7d)")
    what.add_argument("--all", action="store_true", help="re-read everything, forget fingerprints")
    parser.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")
    parser.add_argument("--lock-wait", type=float, default=120.0, metavar="SECONDS",
                        help="how long to wait for the producer's current cycle")
    parser.set_defaults(func=run)
