"""`facusync migrate`: apply pending schema migrations and, on request, create the roles.

See facusync.migrate (the migrator) and facusync.roles (the two least-privilege roles).
"""

from __future__ import annotations

import argparse
import dataclasses
import getpass
import sys
from pathlib import Path

from facusync.adminconn import connect_admin
from facusync.config import Config, Secret
from facusync.errors import EX_OK, ConfigError
from facusync.migrate import (
    apply_migrations,
    check_tables,
    list_migrations,
    may_apply,
    not_allowed,
    pending,
    unknown_versions,
)
from facusync.pgconn import connect_pg
from facusync.roles import (
    PASSWORD_VARIABLES,
    apply_roles,
    describe_plan,
    existing_roles,
    password_problems,
    role_specs,
)

ROLES_HELP = """\
the admin connection (--admin):
  Creating or changing tables and roles takes the superuser, not the daemons' PG_USER.
  With --admin this run connects as PG_ADMIN_USER (default postgres) instead: with
  PG_ADMIN_PASSWORD empty, by peer authentication over the socket in PG_ADMIN_HOST
  (default /var/run/postgresql), as Debian's PostgreSQL allows; run as root, facusync reads
  its env file, then becomes the operating-system user PG_ADMIN_USER to connect:
    sudo facusync migrate --admin --create-roles
  With PG_ADMIN_PASSWORD (environment, or asked at a terminal) it connects to PG_ADMIN_HOST
  with that password.

roles (only with --create-roles or --refresh-grants):
  --create-roles creates the sync role (PG_SYNC_ROLE, default facusync_sync) and the NocoDB
  role (PG_NOCODB_ROLE, default facusync_nocodb), or sets the password of those that exist,
  then grants them exactly their privileges on this database. Passwords are never defaulted:
  they are read from PG_SYNC_ROLE_PASSWORD and PG_NOCODB_ROLE_PASSWORD (environment or
  env file) or, when missing and stdin is a terminal, asked for (twice); at least 12
  characters. When PG_USER is the sync role, PG_PASSWORD is its password. A role that
  already exists keeps its password when none is given. Give the NocoDB role's name and
  password to NocoDB.
  --refresh-grants re-applies the grants to existing roles without touching passwords
  (run it after an upgrade whose migrations added columns).
"""


def _ask(purpose: str, name: str) -> Secret:
    """Prompt twice without echo; only called on a terminal."""
    what = "sync" if purpose == "sync" else "NocoDB"
    for _ in range(3):
        first = getpass.getpass(f"password for the {what} role {name}: ")
        if getpass.getpass("again: ") == first:
            return Secret(first)
        print("the two passwords differ; try again", file=sys.stderr)
    raise ConfigError([f"{PASSWORD_VARIABLES[purpose]}: the passwords typed did not match"])


def _with_passwords(cfg: Config, existing: set[str]) -> Config:
    """Ask (terminal only) for the passwords of roles that do not exist yet, then validate.

    An existing role without a supplied password keeps its own.
    """
    sync, nocodb = cfg.pg_sync_role_password, cfg.pg_nocodb_role_password
    if sys.stdin.isatty():
        if not role_specs(cfg)[0].password and cfg.pg_sync_role not in existing:
            sync = _ask("sync", cfg.pg_sync_role)
        if not nocodb and cfg.pg_nocodb_role not in existing:
            nocodb = _ask("nocodb", cfg.pg_nocodb_role)
    cfg = dataclasses.replace(cfg, pg_sync_role_password=sync, pg_nocodb_role_password=nocodb)
    problems = password_problems(role_specs(cfg), existing)
    if problems:
        raise ConfigError(problems)
    return cfg


def run(cfg: Config, args: argparse.Namespace) -> int:
    sql_dir: Path | None = args.sql_dir
    list_migrations(sql_dir)  # fail on a missing or ambiguous folder before connecting
    roles_wanted = args.create_roles or args.refresh_grants
    if args.admin:
        conn = connect_admin(cfg, application="facusync-migrate")
    else:
        conn = connect_pg(cfg, application="facusync-migrate")
    try:
        if args.create_roles and not args.dry_run:
            # Before migrating: a missing password should fail before anything changes.
            cfg = _with_passwords(cfg, existing_roles(conn, [cfg.pg_sync_role, cfg.pg_nocodb_role]))
        newer = unknown_versions(conn, sql_dir)
        if newer:
            print(f"warning: the database has migration(s) {', '.join(map(str, newer))} that this "
                  "facusync does not know: it was migrated by a newer version", file=sys.stderr)
        if args.dry_run:
            todo = pending(conn, sql_dir)
            for m in todo:
                print(f"pending  {m.version:03d} {m.name}")
            print(f"{len(todo)} migration(s) pending")
            if todo and not may_apply(conn):
                print(f"note: {not_allowed(conn, todo)}")
            if roles_wanted:
                for line in describe_plan(conn, cfg, set_passwords=args.create_roles):
                    print(line)
            return EX_OK
        todo = pending(conn, sql_dir)
        if todo and not may_apply(conn):
            raise not_allowed(conn, todo)
        count = 0
        for m in apply_migrations(conn, cfg, sql_dir):
            print(f"applied  {m.version:03d} {m.name}")
            count += 1
        check_tables(conn, cfg)
        print(f"{count} migration(s) applied; schema is up to date")
        if roles_wanted:
            for line in apply_roles(conn, cfg, set_passwords=args.create_roles):
                print(line)
        return EX_OK
    finally:
        conn.close()


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = sub.add_parser(
        "migrate", help="create or upgrade the PostgreSQL schema (and, on request, the roles)",
        description="Apply the pending schema migrations, each in its own transaction; "
                    "concurrent runs wait for each other. Safe to re-run.",
        epilog=ROLES_HELP, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--admin", action="store_true",
                        help="connect as the superuser PG_ADMIN_USER (default postgres; by peer "
                             "authentication when run as root), not as PG_USER (see below)")
    parser.add_argument("--dry-run", action="store_true",
                        help="list pending migrations (and planned role changes) only")
    roles = parser.add_mutually_exclusive_group()
    roles.add_argument("--create-roles", action="store_true",
                       help="also create the sync and NocoDB roles or set their passwords, "
                            "and grant their privileges (see below)")
    roles.add_argument("--refresh-grants", action="store_true",
                       help="also re-apply the roles' privileges, keeping their passwords")
    parser.add_argument("--sql-dir", type=Path, default=None,
                        help="read migrations from this folder instead of the installed ones")
    parser.set_defaults(func=run)
