"""Versioned schema migrations: ordered, idempotent, one transaction each, serialized.

Files named ``NNN_description.sql`` live in ``sql/`` of a source checkout, or in
``/usr/share/facusync/sql`` when installed from the .deb. Applied versions are recorded in
``schema_migrations``; a transaction-level advisory lock makes concurrent runs safe (the
second waits, then finds nothing left to do).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg2
import psycopg2.extensions
from psycopg2 import sql as pgsql

from facusync.config import Config
from facusync.errors import SchemaError

# Any fixed 64-bit number works; it only has to be ours.
ADVISORY_LOCK_ID = 0x66616375_73796E63  # "facusync"
_NAME = re.compile(r"^(\d{3,})_([a-z0-9_]+)\.sql$")
SEARCH_PATH = (
    Path(__file__).resolve().parent.parent / "sql",
    Path("/usr/share/facusync/sql"),
)


@dataclass(frozen=True, slots=True)
class Migration:
    """One SQL file, identified by its number."""

    version: int
    name: str
    path: Path


def find_sql_dir() -> Path:
    """The first migrations folder that exists: source checkout first, then the package."""
    for candidate in SEARCH_PATH:
        if candidate.is_dir() and any(candidate.glob("*.sql")):
            return candidate
    places = ", ".join(str(p) for p in SEARCH_PATH)
    raise SchemaError(f"no migrations found (looked in {places}); reinstall facusync")


def list_migrations(sql_dir: Path | None = None) -> list[Migration]:
    """All migrations, in order; refuses duplicates so the order is never ambiguous."""
    folder = sql_dir or find_sql_dir()
    found: dict[int, Migration] = {}
    for path in sorted(folder.glob("*.sql")):
        match = _NAME.match(path.name)
        if not match:
            continue
        version = int(match.group(1))
        if version in found:
            raise SchemaError(f"two migrations share number {version}: {path.name}")
        found[version] = Migration(version, match.group(2), path)
    return [found[v] for v in sorted(found)]


def render(text: str, cfg: Config) -> str:
    """Put the configured (already validated) table names into a migration's text."""
    replacements = {
        "{{vista}}": '"' + cfg.pg_table_vista + '"',
        "{{seguimiento}}": '"' + cfg.pg_table_seguimiento + '"',
        "{{vista_name}}": cfg.pg_table_vista,
        "{{seguimiento_name}}": cfg.pg_table_seguimiento,
    }
    for token, value in replacements.items():
        text = text.replace(token, value)
    return text


def _ensure_table(cur: psycopg2.extensions.cursor) -> None:
    cur.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations ("
        " version integer PRIMARY KEY, name text NOT NULL,"
        " applied_at timestamptz NOT NULL DEFAULT now())"
    )


def applied_versions(conn: psycopg2.extensions.connection) -> set[int]:
    """Versions already recorded (empty when the table does not exist yet)."""
    with conn.cursor() as cur:
        cur.execute("SELECT to_regclass('schema_migrations') IS NOT NULL")
        row = cur.fetchone()
        if not row or not row[0]:
            return set()
        cur.execute("SELECT version FROM schema_migrations")
        return {int(r[0]) for r in cur.fetchall()}


def pending(conn: psycopg2.extensions.connection, sql_dir: Path | None = None) -> list[Migration]:
    """Migrations not applied yet, in order."""
    done = applied_versions(conn)
    conn.rollback()
    return [m for m in list_migrations(sql_dir) if m.version not in done]


def apply_migrations(
    conn: psycopg2.extensions.connection, cfg: Config, sql_dir: Path | None = None
) -> Iterator[Migration]:
    """Apply what is pending, each in its own transaction; yields each one as it commits."""
    conn.autocommit = False
    for migration in list_migrations(sql_dir):
        with conn.cursor() as cur:
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (ADVISORY_LOCK_ID,))
            _ensure_table(cur)
            cur.execute("SELECT 1 FROM schema_migrations WHERE version = %s", (migration.version,))
            if cur.fetchone():
                conn.rollback()
                continue
            try:
                cur.execute(render(migration.path.read_text(encoding="utf-8"), cfg))
            except psycopg2.Error as exc:
                conn.rollback()
                first = str(exc).strip().splitlines()[0]
                raise SchemaError(f"migration {migration.path.name} failed: {first}") from None
            cur.execute(
                pgsql.SQL("INSERT INTO schema_migrations (version, name) VALUES (%s, %s)"),
                (migration.version, migration.name),
            )
        conn.commit()
        yield migration
