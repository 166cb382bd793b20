"""`facusync reconcile`: queue the deletes and silent changes that polling cannot see.

The work is facusync.operations.reconcile; this parses, runs it and prints what it did.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict

from facusync.config import Config
from facusync.errors import EX_OK
from facusync.operations.reconcile import Reconciler


def run(cfg: Config, args: argparse.Namespace) -> int:
    result = Reconciler(cfg, force=args.force, lock_wait=args.lock_wait, dry_run=args.dry_run).run()
    if args.json:
        print(json.dumps(asdict(result), indent=2))
    else:
        what = "would queue" if args.dry_run else "queued"
        print(f"reconcile: {result.source_rows} source rows, {result.pg_active_rows} active in PostgreSQL "
              f"({result.duration_s:.1f} s)")
        print(f"  {what} {result.upserts} upsert(s) ({result.undeletes} un-delete(s)), "
              f"{result.tombstones} tombstone(s); restored {result.fingerprints_restored} fingerprint(s)")
    return EX_OK


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = sub.add_parser("reconcile", help="repair deletes and changes that polling cannot see")
    parser.add_argument("--force", action="store_true",
                        help="tombstone even beyond RECONCILE_MAX_DELETE_PCT (after checking the view)")
    parser.add_argument("--dry-run", action="store_true", help="compare and report, queue nothing")
    parser.add_argument("--lock-wait", type=float, default=300.0, metavar="SECONDS",
                        help="how long to wait for the producer's current cycle (default 300)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.set_defaults(func=run)
