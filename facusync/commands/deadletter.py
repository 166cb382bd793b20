"""`facusync dead-letter list | show ID | retry [ID… | --all] | purge [--older-than AGE]`.

Dead letters are stream entries the consumer could not write (or could not even read), kept
with the reason and the original payload. Once the cause is fixed (a column widened, a bad
row corrected at the source), `retry` puts them back on the change stream; the consumer's
guard makes a replay harmless.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from datetime import datetime
from typing import Any

import redis

from facusync.commands.resync import confirm
from facusync.config import Config
from facusync.deadletter import forget
from facusync.errors import EX_OK
from facusync.redisconn import Keys, connect_redis
from facusync.timeparse import parse_age, parse_moment

# Fields the consumer adds when dead-lettering; the rest is the original message.
ANNOTATIONS = ("error", "original_id", "consumer", "failed_at", "deliveries")


def _s(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _fields(raw: dict[Any, Any]) -> dict[str, str]:
    return {_s(k): _s(v) for k, v in raw.items()}


def _when(entry_id: str) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(int(entry_id.split("-")[0]) / 1000))


def cmd_list(client: redis.Redis, keys: Keys, args: argparse.Namespace) -> int:
    entries = client.xrange(keys.dead, "-", "+", count=args.limit)
    total = int(client.xlen(keys.dead))
    if args.json:
        print(json.dumps([{"id": _s(i), **_fields(f)} for i, f in entries], ensure_ascii=False, indent=2))
        return EX_OK
    print(f"{total} dead letter(s)" + (f", showing {len(entries)}" if total > len(entries) else ""))
    for entry_id, raw in entries:
        f = _fields(raw)
        print(f"{_s(entry_id):<18} {_when(_s(entry_id))}  {f.get('op', '?'):<6} "
              f"{f.get('key', '')[:24]:<24} {f.get('error', '')[:90]}")
    return EX_OK


def cmd_show(client: redis.Redis, keys: Keys, args: argparse.Namespace) -> int:
    entries = client.xrange(keys.dead, args.id, args.id)
    if not entries:
        print(f"no dead letter with id {args.id}")
        return 1
    f = _fields(entries[0][1])
    if "row" in f:
        with contextlib.suppress(ValueError):
            f["row"] = json.loads(f["row"])
    print(json.dumps({"id": args.id, "failed": _when(args.id), **f}, ensure_ascii=False, indent=2))
    return EX_OK


def cmd_retry(client: redis.Redis, keys: Keys, args: argparse.Namespace) -> int:
    if args.all:
        entries = client.xrange(keys.dead, "-", "+")
    elif args.ids:
        entries = []
        for entry_id in args.ids:
            found = client.xrange(keys.dead, entry_id, entry_id)
            if not found:
                print(f"no dead letter with id {entry_id}")
                return 1
            entries.extend(found)
    else:
        print("name the dead letters to retry, or --all")
        return 64
    if not entries:
        print("no dead letters to retry")
        return EX_OK
    pipe = client.pipeline(transaction=True)
    for entry_id, raw in entries:
        f = {k: v for k, v in _fields(raw).items() if k not in ANNOTATIONS}
        f["src"] = "retry"
        f["lw"] = ""  # a replay says nothing about what is committed
        f["ts"] = f"{time.time():.3f}"
        pipe.xadd(keys.stream, f)  # type: ignore[arg-type]
        pipe.xdel(keys.dead, entry_id)
        forget(pipe, keys.dead_index, raw)
    pipe.execute()
    print(f"re-queued {len(entries)} dead letter(s); failures will come back here with the reason")
    return EX_OK


def _cutoff_ms(typed: str) -> int:
    """Unix milliseconds of --older-than. An age counts real seconds back from now: counted
    back on the wall clock, a clock change since would move it by an hour (and purge letters
    younger than asked). A date is this host's local time."""
    cutoff = parse_moment(typed, datetime.now(), "--older-than")  # refuses what is unclear
    age = parse_age(typed)
    if age is not None:
        return max(0, int((time.time() - age) * 1000))
    try:
        return max(0, int(cutoff.timestamp() * 1000))
    except (OverflowError, ValueError):  # before the first instant the calendar has here
        return 0


def cmd_purge(client: redis.Redis, keys: Keys, args: argparse.Namespace) -> int:
    if args.older_than:
        entries = client.xrange(keys.dead, "-", f"{_cutoff_ms(args.older_than)}-0")
        what = f"{len(entries)} dead letter(s) older than {args.older_than}"
    else:
        entries = client.xrange(keys.dead, "-", "+")
        what = f"ALL {len(entries)} dead letter(s)"
    if not entries:
        print("nothing to purge")
        return EX_OK
    if not confirm(f"delete {what}? Their payloads will be gone.", args.yes):
        print("cancelled")
        return 1
    for i in range(0, len(entries), 1000):
        part = entries[i : i + 1000]
        pipe = client.pipeline(transaction=True)
        pipe.xdel(keys.dead, *[entry_id for entry_id, _ in part])
        for _, raw in part:
            forget(pipe, keys.dead_index, raw)
        pipe.execute()
    print(f"purged {what}")
    return EX_OK


def run(cfg: Config, args: argparse.Namespace) -> int:
    client = connect_redis(cfg)
    try:
        code: int = args.action(client, Keys(cfg.redis_prefix), args)
        return code
    finally:
        client.close()


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = sub.add_parser("dead-letter", help="inspect, retry or purge dead letters")
    actions = parser.add_subparsers(dest="dl_command", metavar="ACTION", required=True)
    p = actions.add_parser("list", help="list dead letters with their reason")
    p.add_argument("--limit", type=int, default=100)
    p.add_argument("--json", action="store_true")
    p.set_defaults(action=cmd_list)
    p = actions.add_parser("show", help="show one dead letter whole")
    p.add_argument("id")
    p.set_defaults(action=cmd_show)
    p = actions.add_parser("retry", help="put dead letters back on the change stream")
    p.add_argument("ids", nargs="*", metavar="ID")
    p.add_argument("--all", action="store_true")
    p.set_defaults(action=cmd_retry)
    p = actions.add_parser("purge", help="delete dead letters for good")
    p.add_argument("--older-than", metavar="AGE",
                   help="only those older than AGE (30m, 12h, 7d) or a date of this host "
                   "(01/11/2026 8:00, day first, or 2026-11-01)")
    p.add_argument("--yes", "-y", action="store_true")
    p.set_defaults(action=cmd_purge)
    parser.set_defaults(func=run)
