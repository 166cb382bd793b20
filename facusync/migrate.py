"""Versioned schema migrations: ordered, idempotent, one transaction each, serialized.

Files named ``NNN_description.sql`` live in ``sql/`` of a source checkout, or in
``/usr/share/facusync/sql`` when installed from the .deb. Applied versions are recorded in
``schema_migrations``; a transaction-level advisory lock makes concurrent runs safe (the
second waits, then finds nothing left to do). A migration file holds plain SQL without
BEGIN/COMMIT: the migrator wraps each file, and its row in ``schema_migrations``, in one
transaction, so a failing file leaves nothing behind.

Every object lives in the schema ``public``: the migrator pins the search_path, so the
tables, the SECURITY DEFINER trigger and the role grants always agree on where they are.
"""

from __future__ import annotations

import getpass
import logging
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg2
import psycopg2.errors
import psycopg2.extensions

from facusync.config import Config
from facusync.errors import AccessError, SchemaError, SinkError
from facusync.pgconn import describe_pg_error

log = logging.getLogger("facusync.migrate")

ADMIN = "sudo facusync migrate --admin"
# Any fixed 64-bit number works; it only has to be ours.
ADVISORY_LOCK_ID = 0x66616375_73796E63  # "facusync"
SCHEMA = "public"
_NAME = re.compile(r"^(\d{3,})_([a-z0-9_]+)\.sql$")
# {{vista_name}}_suffix style names the migrations derive from the configured table names.
_DERIVED = re.compile(r"\{\{(vista|seguimiento)_name\}\}([A-Za-z0-9_]*)")
_MAX_IDENT = 63  # PostgreSQL silently truncates longer names, which could make two collide
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
    try:
        names = sorted(os.listdir(folder))
    except PermissionError:
        # `migrate --admin` reads the folder again after becoming the postgres user.
        raise AccessError(f"{folder} cannot be read by the user {getpass.getuser()}: make it "
                          f"and its .sql files readable by that user (chmod o+rx {folder})") from None
    except OSError as exc:
        raise SchemaError(f"cannot read the migrations folder {folder}: {exc.strerror}") from None
    found: dict[int, Migration] = {}
    for path in (folder / name for name in names if name.endswith(".sql")):
        match = _NAME.match(path.name)
        if not match:
            continue
        version = int(match.group(1))
        if version in found:
            raise SchemaError(
                f"two migrations share number {version}: {found[version].path.name} and "
                f"{path.name}; renumber one"
            )
        found[version] = Migration(version, match.group(2), path)
    if not found:
        raise SchemaError(f"no NNN_name.sql migration files in {folder}")
    return [found[v] for v in sorted(found)]


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except PermissionError:
        raise AccessError(f"{path} cannot be read by the user {getpass.getuser()}: make it "
                          "readable by that user (chmod o+r)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SchemaError(f"cannot read the migration {path}: {exc}") from None


def render(text: str, cfg: Config) -> str:
    """Put the configured (already validated) table names into a migration's text.

    Names derived from a table name (``{{vista_name}}_touch``) must fit PostgreSQL's 63
    characters, or two of them could be truncated to the same name: refuse those up front.
    """
    bare = {"vista": cfg.pg_table_vista, "seguimiento": cfg.pg_table_seguimiento}
    variable = {"vista": "PG_TABLE_VISTA", "seguimiento": "PG_TABLE_SEGUIMIENTO"}
    for match in _DERIVED.finditer(text):
        which, suffix = match.group(1), match.group(2)
        if len(bare[which]) + len(suffix) > _MAX_IDENT:
            room = _MAX_IDENT - len(suffix)
            raise SchemaError(
                f"{variable[which]}={bare[which]!r} is too long: the schema derives the name "
                f"{bare[which] + suffix!r} from it; use at most {room} characters"
            )
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
    # Looked up first: CREATE ... IF NOT EXISTS needs CREATE on the schema even when the
    # table is there, which a role that may only read it (the sync role) lacks. IF NOT EXISTS
    # stays for a concurrent run whose cached catalog has not seen the table yet.
    cur.execute(f"SELECT to_regclass('{SCHEMA}.schema_migrations') IS NOT NULL")
    row = cur.fetchone()
    if row and row[0]:
        return
    cur.execute(
        f"CREATE TABLE IF NOT EXISTS {SCHEMA}.schema_migrations ("
        " version integer PRIMARY KEY, name text NOT NULL,"
        " applied_at timestamptz NOT NULL DEFAULT now())"
    )


def applied_versions(conn: psycopg2.extensions.connection) -> set[int]:
    """Versions already recorded (empty when the table does not exist yet)."""
    try:
        with conn.cursor() as cur:
            cur.execute(f"SELECT to_regclass('{SCHEMA}.schema_migrations') IS NOT NULL")
            row = cur.fetchone()
            if not row or not row[0]:
                return set()
            cur.execute(f"SELECT version FROM {SCHEMA}.schema_migrations")
            return {int(r[0]) for r in cur.fetchall()}
    except psycopg2.errors.InsufficientPrivilege:
        conn.rollback()
        # SchemaError, not AccessError: a daemon meeting this exits 78, which systemd does
        # not restart in a loop.
        raise SchemaError("cannot read schema_migrations: PG_USER may not; grant it with "
                          f"`{ADMIN} --refresh-grants`, or run migrate as the superuser") from None


def pending(conn: psycopg2.extensions.connection, sql_dir: Path | None = None) -> list[Migration]:
    """Migrations not applied yet, in order."""
    done = applied_versions(conn)
    conn.rollback()
    return [m for m in list_migrations(sql_dir) if m.version not in done]


def unknown_versions(conn: psycopg2.extensions.connection, sql_dir: Path | None = None) -> list[int]:
    """Versions recorded in the database that this facusync has no file for.

    Usually the database was migrated by a newer facusync: this one may not understand it.
    """
    done = applied_versions(conn)
    conn.rollback()
    known = {m.version for m in list_migrations(sql_dir)}
    return sorted(done - known)


def check_tables(conn: psycopg2.extensions.connection, cfg: Config) -> None:
    """Raise SchemaError when the configured tables are not there although migrations are.

    The table names are used when a migration is applied: changing PG_TABLE_VISTA or
    PG_TABLE_SEGUIMIENTO afterwards does not rename anything.
    """
    missing = []
    with conn.cursor() as cur:
        for variable, name in (("PG_TABLE_VISTA", cfg.pg_table_vista),
                               ("PG_TABLE_SEGUIMIENTO", cfg.pg_table_seguimiento)):
            cur.execute("SELECT to_regclass(%s) IS NULL", (f'{SCHEMA}."{name}"',))
            row = cur.fetchone()
            if row and row[0]:
                missing.append(f"{variable}={name}")
    conn.rollback()
    if missing:
        raise SchemaError(
            f"the schema is migrated but has no table for {', '.join(missing)}: it was created "
            "with other names. Restore the setting, or rename the tables (ALTER TABLE ... "
            "RENAME TO ...) to match"
        )


def check_current(conn: psycopg2.extensions.connection, cfg: Config,
                  sql_dir: Path | None = None) -> None:
    """Raise SchemaError unless every migration is applied to the configured tables.

    For the daemons' start-up (the sync role may read schema_migrations).
    """
    todo = pending(conn, sql_dir)
    if todo:
        names = ", ".join(f"{m.version:03d}_{m.name}" for m in todo)
        raise SchemaError(f"the PostgreSQL schema is not up to date ({names} pending): "
                          f"run `{ADMIN}`")
    check_tables(conn, cfg)


def may_apply(conn: psycopg2.extensions.connection) -> bool:
    """Whether the connected role can apply migrations: create in the schema, and alter the
    tables already there (only their owner or a superuser may). The daemons' role cannot."""
    with conn.cursor() as cur:
        cur.execute(
            "SELECT (SELECT rolsuper FROM pg_roles WHERE rolname = current_user)"
            " OR (has_schema_privilege(%s, 'CREATE') AND NOT EXISTS ("
            "  SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            "  WHERE n.nspname = %s AND c.relname = 'schema_migrations'"
            "  AND NOT pg_has_role(c.relowner, 'USAGE')))",
            (SCHEMA, SCHEMA),
        )
        row = cur.fetchone()
    conn.rollback()
    return bool(row and row[0])


def not_allowed(conn: psycopg2.extensions.connection, todo: list[Migration]) -> AccessError:
    """The error for pending migrations the connected role may not apply."""
    with conn.cursor() as cur:
        cur.execute("SELECT current_user")
        row = cur.fetchone()
    conn.rollback()
    names = ", ".join(f"{m.version:03d}_{m.name}" for m in todo)
    return AccessError(f"{len(todo)} migration(s) pending ({names}), and PostgreSQL role "
                       f"{row[0] if row else '?'} (PG_USER) may not apply them: run "
                       f"`{ADMIN}` (as the superuser)")


def _lock(cur: psycopg2.extensions.cursor) -> None:
    """Take the migration lock, saying so when another run holds it (instead of hanging mute)."""
    cur.execute("SELECT pg_try_advisory_xact_lock(%s)", (ADVISORY_LOCK_ID,))
    row = cur.fetchone()
    if row and row[0]:
        return
    log.warning("another `facusync migrate` is running on this database; waiting for it")
    cur.execute("SELECT pg_advisory_xact_lock(%s)", (ADVISORY_LOCK_ID,))


def _failure(migration: Migration, exc: psycopg2.Error) -> SchemaError:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    hint = ""
    if isinstance(exc, psycopg2.errors.InsufficientPrivilege):
        hint = f"; run migrate as the superuser: `{ADMIN}`"
    return SchemaError(f"migration {migration.path.name} failed: {first}{hint}")


def apply_migrations(
    conn: psycopg2.extensions.connection, cfg: Config, sql_dir: Path | None = None
) -> Iterator[Migration]:
    """Apply what is pending, each in its own transaction; yields each one as it commits.

    The lock is taken per migration and the "already applied?" check runs after it, so a
    concurrent run that waited sees what the first one committed and skips it.
    """
    migrations = list_migrations(sql_dir)
    texts = {m.version: render(_read(m.path), cfg) for m in migrations}
    conn.rollback()
    conn.autocommit = False
    for migration in migrations:
        try:
            with conn.cursor() as cur:
                _lock(cur)
                cur.execute(f"SET LOCAL search_path = {SCHEMA}")
                _ensure_table(cur)
                cur.execute(
                    f"SELECT 1 FROM {SCHEMA}.schema_migrations WHERE version = %s",
                    (migration.version,),
                )
                if cur.fetchone():
                    conn.rollback()
                    continue
                cur.execute(texts[migration.version])
                cur.execute(
                    f"INSERT INTO {SCHEMA}.schema_migrations (version, name) VALUES (%s, %s)",
                    (migration.version, migration.name),
                )
            conn.commit()
        except psycopg2.Error as exc:
            if conn.closed:
                raise SinkError(describe_pg_error(exc)) from None
            conn.rollback()
            raise _failure(migration, exc) from None
        yield migration
