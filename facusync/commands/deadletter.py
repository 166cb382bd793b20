"""`facusync dead-letter list | show ID | retry [ID… | --all] | purge [--older-than AGE]`.

What dead letters are and what each action means is facusync.operations.deadletters; this
parses, asks before a purge, and prints.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable

from facusync.commands.ask import confirm
from facusync.config import Config
from facusync.errors import EX_DECLINED, EX_OK, EX_USAGE
from facusync.operations import deadletters
from facusync.stream import DeadLetters


def cmd_list(letters: DeadLetters, args: argparse.Namespace) -> int:
    found = deadletters.page(letters, args.limit)
    if args.json:
        print(json.dumps([{"id": i, **f} for i, f in found.letters], ensure_ascii=False, indent=2))
        return EX_OK
    shown = len(found.letters)
    print(f"{found.total} dead letter(s)" + (f", showing {shown}" if found.total > shown else ""))
    for entry_id, f in found.letters:
        print(f"{entry_id:<18} {deadletters.failed_at(entry_id)}  {f.get('op', '?'):<6} "
              f"{f.get('key', '')[:24]:<24} {f.get('error', '')[:90]}")
    return EX_OK


def cmd_show(letters: DeadLetters, args: argparse.Namespace) -> int:
    letter = deadletters.show(letters, args.id)
    if letter is None:
        print(f"no dead letter with id {args.id}")
        return EX_DECLINED
    print(json.dumps(letter, ensure_ascii=False, indent=2))
    return EX_OK


def cmd_retry(letters: DeadLetters, args: argparse.Namespace) -> int:
    if not args.all and not args.ids:
        print("name the dead letters to retry, or --all")
        return EX_USAGE
    chosen = deadletters.select(letters, None if args.all else args.ids)
    if chosen.missing is not None:
        print(f"no dead letter with id {chosen.missing}")
        return EX_DECLINED
    if not chosen.letters:
        print("no dead letters to retry")
        return EX_OK
    count = deadletters.retry(letters, chosen.letters)
    print(f"re-queued {count} dead letter(s); failures will come back here with the reason")
    return EX_OK


def cmd_purge(letters: DeadLetters, args: argparse.Namespace) -> int:
    # `--older-than ""` (a script's unset variable) is refused, never "all of them".
    chosen = deadletters.older_than(letters, args.older_than)
    what = (f"{len(chosen)} dead letter(s) older than {args.older_than}"
            if args.older_than is not None else f"ALL {len(chosen)} dead letter(s)")
    if not chosen:
        print("nothing to purge")
        return EX_OK
    if not confirm(f"delete {what}? Their payloads will be gone.", args.yes):
        print("cancelled")
        return EX_DECLINED
    deadletters.purge(letters, chosen)
    print(f"purged {what}")
    return EX_OK


def run(cfg: Config, args: argparse.Namespace) -> int:
    action: Callable[[DeadLetters, argparse.Namespace], int] = args.action
    with deadletters.opened(cfg) as letters:
        return action(letters, args)


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
