"""`facusync resync`: move the producer's watermark back so its next cycle re-reads.

It takes the producer's source lock, so the change lands between two cycles and works while
the services run. ``--since`` re-reads from a time (only real differences are queued, thanks
to the fingerprints); ``--all`` also forgets the fingerprints, so every row is queued again
(harmless: the consumer's guard leaves unchanged rows untouched). The committed watermark in
PostgreSQL is lowered too, so a Redis loss right after cannot skip the re-read.
"""

from __future__ import annotations

import argparse
import sys
from datetime import datetime

from facusync.config import Config
from facusync.enqueue import read_watermark
from facusync.errors import EX_OK, FacusyncError, UsageError
from facusync.lock import RedisLock
from facusync.message import format_version
from facusync.pgconn import connect_pg
from facusync.redisconn import Keys, connect_redis

EARLIEST = datetime(1753, 1, 1)  # SQL Server's first datetime: the producer reads every row


def confirm(question: str, assume_yes: bool) -> bool:
    """Ask on the terminal; refuse (rather than guess) when nobody can answer."""
    if assume_yes:
        return True
    if not sys.stdin.isatty():
        print("not a terminal: add --yes to confirm", file=sys.stderr)
        return False
    return input(f"{question} [y/N] ").strip().lower() in ("y", "yes", "s", "si", "sí")


def run(cfg: Config, args: argparse.Namespace) -> int:
    if args.all:
        target = EARLIEST
    else:
        try:
            target = datetime.fromisoformat(args.since)
        except ValueError:
            raise UsageError(f"--since {args.since!r} is not a timestamp (YYYY-MM-DD[THH:MM:SS])") from None
        if target.tzinfo is not None:
            raise UsageError("--since must be the source's local time, without an offset")
    keys = Keys(cfg.redis_prefix)
    client = connect_redis(cfg)
    try:
        current = read_watermark(client, keys)
        fps = int(client.hlen(keys.fingerprints))
        print(f"current watermark: {current.isoformat(sep=' ') if current else '(none)'}")
        if args.all:
            print(f"will: re-read the WHOLE view and forget {fps} fingerprint(s), so every row is "
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
            return 1
        lock = RedisLock(client, keys.source_lock, ttl=60, owner="resync")
        if not lock.acquire(wait=args.lock_wait, priority=True):
            raise FacusyncError(f"the producer is busy (lock held by {lock.holder()}); try again")
        try:
            pipe = client.pipeline(transaction=True)
            pipe.set(keys.watermark, format_version(target))
            if args.all:
                pipe.delete(keys.fingerprints)
            pipe.execute()
            conn = connect_pg(cfg, application="facusync-resync")
            try:
                with conn.cursor() as cur:
                    cur.execute("UPDATE sync_control SET watermark = LEAST(watermark, %s) WHERE id = 1",
                                (target,))
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
    what.add_argument("--since", metavar="TIMESTAMP", help="re-read changes from this local time")
    what.add_argument("--all", action="store_true", help="re-read everything, forget fingerprints")
    parser.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")
    parser.add_argument("--lock-wait", type=float, default=120.0, metavar="SECONDS",
                        help="how long to wait for the producer's current cycle")
    parser.set_defaults(func=run)
