"""`facusync resync`: move the producer's watermark back so its next cycle re-reads.

``--since`` re-reads from a time (only real differences are queued); ``--all`` also forgets
the fingerprints, so every row is queued again. The work, and why it is safe while the
services run, is facusync.operations.resync; this shows the plan, asks, and applies it.
"""

from __future__ import annotations

import argparse

from facusync.commands.ask import confirm
from facusync.config import Config
from facusync.errors import EX_DECLINED, EX_OK
from facusync.operations import resync


def run(cfg: Config, args: argparse.Namespace) -> int:
    planned = resync.plan(cfg, since=args.since, everything=args.all)
    current = planned.current
    print(f"current watermark: {current.isoformat(sep=' ') if current else '(none)'}")
    if planned.everything:
        print(f"will: re-read the WHOLE view and forget {planned.fingerprints} fingerprint(s), so "
              "every row is queued again (unchanged rows are not rewritten in PostgreSQL)")
    else:
        print(f"will: move the watermark back to {planned.target.isoformat(sep=' ')}; the next cycle "
              f"re-reads from there minus SYNC_OVERLAP ({cfg.sync_overlap:g} s) and queues "
              "only rows that differ")
    if planned.nothing_to_do:
        print("nothing to do: the watermark is already at or before that time")
        return EX_OK
    if not confirm("proceed?", args.yes):
        print("cancelled")
        return EX_DECLINED
    resync.apply(cfg, planned, lock_wait=args.lock_wait)
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
