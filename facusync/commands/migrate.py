"""`facusync migrate`: apply pending schema migrations (see facusync.migrate)."""

from __future__ import annotations

import argparse

from facusync.config import Config
from facusync.migrate import apply_migrations, pending
from facusync.pgconn import connect_pg


def run(cfg: Config, args: argparse.Namespace) -> int:
    conn = connect_pg(cfg, application="facusync-migrate")
    try:
        if args.dry_run:
            todo = pending(conn)
            for m in todo:
                print(f"pending  {m.version:03d} {m.name}")
            print(f"{len(todo)} migration(s) pending")
            return 0
        count = 0
        for m in apply_migrations(conn, cfg):
            print(f"applied  {m.version:03d} {m.name}")
            count += 1
        print(f"{count} migration(s) applied; schema is up to date")
        return 0
    finally:
        conn.close()


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = sub.add_parser("migrate", help="create or upgrade the PostgreSQL schema")
    parser.add_argument("--dry-run", action="store_true", help="list pending migrations only")
    parser.set_defaults(func=run)
