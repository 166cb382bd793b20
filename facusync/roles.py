"""The two least-privilege login roles, created only when the admin asks.

- the **sync role** (PG_SYNC_ROLE, default ``facusync_sync``), for the daemons: reads and
  upserts the synced copy and ``sync_control``, may create temporary staging tables, and
  cannot touch the people's columns (their tracking rows are created by the SECURITY DEFINER
  trigger of migration 001, so it needs no write privilege there; it may read id and
  conduce only, to count and match tracking rows);
- the **NocoDB role** (PG_NOCODB_ROLE, default ``facusync_nocodb``), for the planners' UI:
  reads the synced copy and the report view, edits nota/ruta/trabajado/preparador, and
  cannot delete, change a conduce or run DDL.

Roles are cluster-wide; privileges are per database. So a run creates a missing role or
sets the password of an existing one, then revokes and re-grants everything on this
database's objects: re-running is idempotent and drops any stale grant. Passwords travel as
SCRAM-SHA-256 verifiers computed here, so the clear text never reaches the server (nor its
statement log).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import os
import stringprep
import unicodedata
from dataclasses import dataclass

import psycopg2
import psycopg2.errors
import psycopg2.extensions
from psycopg2 import sql as pgsql

from facusync.config import Config, Secret
from facusync.errors import ConfigError, SchemaError
from facusync.migrate import ADVISORY_LOCK_ID, SCHEMA

log = logging.getLogger("facusync.roles")

REPORT_VIEW = "v_planificacion"
# Columns of the synced copy the sync must never rewrite: identity and the timestamps owned
# by the defaults and the trigger. Every other column (synced data, soft-delete flag) is
# updatable, including columns a later migration adds, once grants are re-applied. The key
# too: when the view changes a conduce's spelling only (case, trailing spaces; sql/004) the
# row is renamed, and its tracking row follows by ON UPDATE CASCADE.
SYNC_FIXED_COLUMNS = ("sync_id", "created_at", "updated_at")
# The planners' columns. UPDATE never includes conduce: a note cannot move to another
# conduce. INSERT does, so NocoDB can re-create a missing tracking row; the FK and the
# UNIQUE constraint reject anything else.
NOCODB_EDITABLE = ("nota", "ruta", "trabajado", "preparador")
NOCODB_INSERTABLE = ("conduce", *NOCODB_EDITABLE)
MIN_PASSWORD_LENGTH = 12
PASSWORD_VARIABLES = {"sync": "PG_SYNC_ROLE_PASSWORD", "nocodb": "PG_NOCODB_ROLE_PASSWORD"}


@dataclass(frozen=True, slots=True)
class RoleSpec:
    """One role to manage: its purpose ("sync" or "nocodb"), name and (optional) password."""

    purpose: str
    name: str
    password: Secret


# --- passwords ------------------------------------------------------------------------------


def check_password(purpose: str, password: Secret) -> str | None:
    """The problem with an admin-supplied password, or None when it is acceptable."""
    variable = PASSWORD_VARIABLES[purpose]
    value = password.reveal()
    if not value:
        alternative = " (PG_PASSWORD serves when PG_USER is the sync role)" if purpose == "sync" else ""
        return (f"{variable} is missing{alternative}: put it in the env file or the environment, "
                "or run the command at a terminal to be asked for it")
    if len(value) < MIN_PASSWORD_LENGTH:
        return f"{variable} is too short: use at least {MIN_PASSWORD_LENGTH} characters"
    if "\x00" in value:
        return f"{variable} contains a NUL character"
    return None


def _saslprep(password: str) -> bytes:
    """RFC 4013 SASLprep as PostgreSQL applies it; on a prohibited result, the raw bytes.

    libpq and the server do exactly this before hashing, so the verifier must too.
    """
    raw = password.encode("utf-8")
    if password.isascii():
        return raw
    mapped = "".join(
        " " if stringprep.in_table_c12(ch) else ch
        for ch in password
        if not stringprep.in_table_b1(ch)
    )
    normalized = unicodedata.normalize("NFKC", mapped)
    if not normalized:
        return raw
    prohibited = (
        stringprep.in_table_c12, stringprep.in_table_c21_c22, stringprep.in_table_c3,
        stringprep.in_table_c4, stringprep.in_table_c5, stringprep.in_table_c6,
        stringprep.in_table_c7, stringprep.in_table_c8, stringprep.in_table_c9,
        stringprep.in_table_a1,
    )
    if any(test(ch) for ch in normalized for test in prohibited):
        return raw
    if any(stringprep.in_table_d1(ch) for ch in normalized):
        if any(stringprep.in_table_d2(ch) for ch in normalized):
            return raw
        if not (stringprep.in_table_d1(normalized[0]) and stringprep.in_table_d1(normalized[-1])):
            return raw
    return normalized.encode("utf-8")


def scram_sha256_verifier(password: str, *, salt: bytes | None = None,
                          iterations: int = 4096) -> str:
    """The SCRAM-SHA-256 secret PostgreSQL stores for `password` (as psql's \\password does)."""
    salt = salt if salt is not None else os.urandom(16)
    salted = hashlib.pbkdf2_hmac("sha256", _saslprep(password), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()

    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode("ascii")

    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


# --- checks ---------------------------------------------------------------------------------


def role_specs(cfg: Config) -> list[RoleSpec]:
    """The two roles as configured (passwords may be empty: see check_password).

    When the daemons' PG_USER is the sync role, PG_PASSWORD is its password: the env file
    names the role and its password once, and `migrate --admin --create-roles` makes them so.
    """
    sync_password = cfg.pg_sync_role_password
    if not sync_password and cfg.pg_user == cfg.pg_sync_role:
        sync_password = cfg.pg_password
    return [
        RoleSpec("sync", cfg.pg_sync_role, sync_password),
        RoleSpec("nocodb", cfg.pg_nocodb_role, cfg.pg_nocodb_role_password),
    ]


def _tables(cfg: Config) -> dict[str, pgsql.Composable]:
    return {
        "vista": pgsql.Identifier(SCHEMA, cfg.pg_table_vista),
        "seguimiento": pgsql.Identifier(SCHEMA, cfg.pg_table_seguimiento),
        "control": pgsql.Identifier(SCHEMA, "sync_control"),
        "migrations": pgsql.Identifier(SCHEMA, "schema_migrations"),
        "view": pgsql.Identifier(SCHEMA, REPORT_VIEW),
    }


def _qualified(name: str) -> str:
    """A regclass literal for one of our (validated, quote-free) names."""
    return f'{SCHEMA}."{name}"'


def _require_schema(cur: psycopg2.extensions.cursor, cfg: Config) -> None:
    missing = []
    for name in (cfg.pg_table_vista, cfg.pg_table_seguimiento, "sync_control", REPORT_VIEW):
        cur.execute("SELECT to_regclass(%s) IS NOT NULL", (_qualified(name),))
        row = cur.fetchone()
        if not row or not row[0]:
            missing.append(name)
    if missing:
        raise SchemaError(f"cannot grant on missing {', '.join(missing)}: run "
                          "`sudo facusync migrate --admin` first (without --dry-run)")


def _check_names(cur: psycopg2.extensions.cursor, cfg: Config, specs: list[RoleSpec]) -> None:
    """Refuse role names that would hand our grants to, or take them from, the wrong role."""
    if specs[0].name == specs[1].name:
        raise ConfigError([f"PG_SYNC_ROLE and PG_NOCODB_ROLE are both {specs[0].name!r}: "
                           "the two roles must differ"])
    cur.execute("SELECT session_user")
    row = cur.fetchone()
    me = str(row[0]) if row else ""
    for spec in specs:
        variable = "PG_SYNC_ROLE" if spec.purpose == "sync" else "PG_NOCODB_ROLE"
        if spec.name == me:
            raise ConfigError([
                f"{variable}={spec.name!r} is the role this command is connected as: create "
                "the roles as the superuser: `sudo facusync migrate --admin --create-roles`"
            ])
        cur.execute(
            "SELECT rolsuper OR rolreplication OR rolbypassrls FROM pg_roles WHERE rolname = %s",
            (spec.name,),
        )
        row = cur.fetchone()
        if row and row[0]:
            raise SchemaError(
                f"role {spec.name!r} exists and is a superuser (or has REPLICATION/BYPASSRLS): "
                f"a least-privilege role cannot be; choose another name with {variable}"
            )
        cur.execute(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = %s AND c.relname = ANY(%s) AND pg_get_userbyid(c.relowner) = %s",
            (SCHEMA, [cfg.pg_table_vista, cfg.pg_table_seguimiento, "sync_control"], spec.name),
        )
        owned = [str(r[0]) for r in cur.fetchall()]
        if owned:
            raise SchemaError(
                f"role {spec.name!r} owns {', '.join(owned)}: an owner has every privilege; "
                f"choose another name with {variable} or change the tables' owner"
            )


def existing_roles(conn: psycopg2.extensions.connection, names: list[str]) -> set[str]:
    """Which of these roles exist in the cluster."""
    with conn.cursor() as cur:
        cur.execute("SELECT rolname FROM pg_roles WHERE rolname = ANY(%s)", (names,))
        found = {str(r[0]) for r in cur.fetchall()}
    conn.rollback()
    return found


def describe_plan(conn: psycopg2.extensions.connection, cfg: Config, *,
                  set_passwords: bool) -> list[str]:
    """What --create-roles / --refresh-grants would do, for --dry-run."""
    specs = role_specs(cfg)
    found = existing_roles(conn, [s.name for s in specs])
    lines = []
    for spec in specs:
        what = "sync role" if spec.purpose == "sync" else "NocoDB role"
        if spec.name not in found:
            verb = "would create" if set_passwords else "missing (use --create-roles):"
        else:
            verb = ("would set the password of" if set_passwords and spec.password
                    else "would re-grant (password kept)")
        lines.append(f"{verb} {what} {spec.name}")
    return lines


# --- create and grant -----------------------------------------------------------------------


def _ensure_role(cur: psycopg2.extensions.cursor, spec: RoleSpec) -> str:
    """Create the login role or reset its password and attributes; returns what it did."""
    verifier = scram_sha256_verifier(spec.password.reveal())
    attrs = pgsql.SQL("LOGIN NOCREATEDB NOCREATEROLE PASSWORD {}").format(
        pgsql.Literal(verifier))
    cur.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (spec.name,))
    if cur.fetchone() is None:
        cur.execute("SAVEPOINT create_role")
        try:
            cur.execute(pgsql.SQL("CREATE ROLE {} {}").format(pgsql.Identifier(spec.name), attrs))
            cur.execute("RELEASE SAVEPOINT create_role")
            return "created"
        except psycopg2.errors.DuplicateObject:
            # Created meanwhile by a run on another database (roles are cluster-wide).
            cur.execute("ROLLBACK TO SAVEPOINT create_role")
    cur.execute(pgsql.SQL("ALTER ROLE {} {}").format(pgsql.Identifier(spec.name), attrs))
    return "password set"


def _warn_memberships(cur: psycopg2.extensions.cursor, spec: RoleSpec) -> None:
    cur.execute(
        "SELECT g.rolname FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid "
        "JOIN pg_roles r ON r.oid = m.member WHERE r.rolname = %s ORDER BY 1",
        (spec.name,),
    )
    groups = [str(r[0]) for r in cur.fetchall()]
    if groups:
        log.warning("role %s is a member of %s: it also has whatever those roles may do",
                    spec.name, ", ".join(groups))


def _grant(cur: psycopg2.extensions.cursor, cfg: Config, sync: str, nocodb: str) -> list[str]:
    """Revoke everything the two roles hold on our objects, then grant exactly what they need."""
    t = _tables(cfg)
    s, n = pgsql.Identifier(sync), pgsql.Identifier(nocodb)
    both = pgsql.SQL(", ").join([s, n])
    notes: list[str] = []

    def run(query: str, **parts: pgsql.Composable) -> None:
        cur.execute(pgsql.SQL(query).format(**parts))

    cur.execute("SELECT current_database()")
    row = cur.fetchone()
    db = pgsql.Identifier(str(row[0]) if row else "")
    sequences = []
    for table, column in ((cfg.pg_table_vista, "sync_id"), (cfg.pg_table_seguimiento, "id")):
        cur.execute("SELECT pg_get_serial_sequence(%s, %s)", (_qualified(table), column))
        row = cur.fetchone()
        if row and row[0]:
            sequences.append(pgsql.SQL(str(row[0])))  # already quoted by PostgreSQL
    cur.execute(
        "SELECT attname FROM pg_attribute WHERE attrelid = to_regclass(%s) AND attnum > 0 "
        "AND NOT attisdropped ORDER BY attnum",
        (_qualified(cfg.pg_table_vista),),
    )
    sync_updatable = [str(r[0]) for r in cur.fetchall() if r[0] not in SYNC_FIXED_COLUMNS]

    def cols(names: list[str] | tuple[str, ...]) -> pgsql.Composable:
        return pgsql.SQL(", ").join(pgsql.Identifier(c) for c in names)

    # Start from nothing, so a re-run also removes grants an older version (or a person) made.
    run("REVOKE ALL ON DATABASE {db} FROM {both}", db=db, both=both)
    run("REVOKE ALL ON TABLE {v}, {s}, {c}, {m}, {w} FROM {both}", v=t["vista"],
        s=t["seguimiento"], c=t["control"], m=t["migrations"], w=t["view"], both=both)
    for seq in sequences:
        run("REVOKE ALL ON SEQUENCE {q} FROM {both}", q=seq, both=both)

    run("GRANT CONNECT ON DATABASE {db} TO {both}", db=db, both=both)
    run("GRANT USAGE ON SCHEMA {sch} TO {both}", sch=pgsql.Identifier(SCHEMA), both=both)

    # The sync: upserts through a temporary staging table (COPY), soft-deletes, never deletes.
    run("GRANT TEMPORARY ON DATABASE {db} TO {r}", db=db, r=s)
    run("GRANT SELECT, INSERT ON {v} TO {r}", v=t["vista"], r=s)
    run("GRANT UPDATE ({cols}) ON {v} TO {r}", cols=cols(sync_updatable), v=t["vista"], r=s)
    run("GRANT SELECT, INSERT, UPDATE ON {c} TO {r}", c=t["control"], r=s)
    run("GRANT SELECT ON {m} TO {r}", m=t["migrations"], r=s)
    # Enough to count and match tracking rows (verify); nothing of what people wrote.
    run("GRANT SELECT (id, conduce) ON {s} TO {r}", s=t["seguimiento"], r=s)

    # NocoDB: REFERENCES makes information_schema show it the primary key of a table it can
    # only read; without it NocoDB treats the table as keyless.
    run("GRANT SELECT, REFERENCES ON {v}, {w} TO {r}", v=t["vista"], w=t["view"], r=n)
    run("GRANT SELECT ON {s} TO {r}", s=t["seguimiento"], r=n)
    run("GRANT INSERT ({cols}) ON {s} TO {r}", cols=cols(NOCODB_INSERTABLE), s=t["seguimiento"],
        r=n)
    # id too: NocoDB's bulk update writes it back unchanged; a trigger (sql/003) refuses a change.
    run("GRANT UPDATE ({cols}) ON {s} TO {r}", cols=cols(("id", *NOCODB_EDITABLE)), s=t["seguimiento"],
        r=n)
    if len(sequences) == 2:
        run("GRANT USAGE ON SEQUENCE {q} TO {r}", q=sequences[1], r=n)

    # Clusters upgraded from PostgreSQL 14 or older still let PUBLIC create in schema public,
    # which would give both roles DDL. PostgreSQL 15 revokes it by default; do the same.
    cur.execute("SELECT has_schema_privilege(%s, %s, 'CREATE')", (nocodb, SCHEMA))
    row = cur.fetchone()
    if row and row[0]:
        run("REVOKE CREATE ON SCHEMA {sch} FROM PUBLIC", sch=pgsql.Identifier(SCHEMA))
        notes.append(f"revoked CREATE on schema {SCHEMA} from PUBLIC (the PostgreSQL 15 default)")
        for role in (sync, nocodb):
            cur.execute("SELECT has_schema_privilege(%s, %s, 'CREATE')", (role, SCHEMA))
            row = cur.fetchone()
            if row and row[0]:
                log.warning("role %s can still create objects in schema %s (through a group "
                            "role?): revoke that by hand", role, SCHEMA)
    return notes


def password_problems(specs: list[RoleSpec], existing: set[str]) -> list[str]:
    """Problems with the supplied passwords: required for a role that does not exist yet;
    optional for an existing one (empty keeps its password); never shorter than the minimum."""
    problems = []
    for spec in specs:
        if not spec.password and spec.name in existing:
            continue
        problem = check_password(spec.purpose, spec.password)
        if problem and not spec.password:
            problem += f" (role {spec.name} does not exist yet, so it needs one)"
        if problem:
            problems.append(problem)
    return problems


def apply_roles(conn: psycopg2.extensions.connection, cfg: Config, *,
                set_passwords: bool) -> list[str]:
    """Create/update the roles (when set_passwords) and re-grant; one transaction.

    With set_passwords (--create-roles) a missing role is created with its password, and an
    existing one gets the supplied password, or keeps its own when none is supplied. Without
    (--refresh-grants) both roles must exist and keep their passwords. Returns one line per
    thing done, for the operator; never a password.
    """
    specs = role_specs(cfg)
    conn.rollback()
    conn.autocommit = False
    done: list[str] = []
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (ADVISORY_LOCK_ID,))
            cur.execute("SELECT rolname FROM pg_roles WHERE rolname = ANY(%s)",
                        ([s.name for s in specs],))
            existing = {str(r[0]) for r in cur.fetchall()}
            if set_passwords:
                problems = password_problems(specs, existing)
                if problems:
                    raise ConfigError(problems)
            _require_schema(cur, cfg)
            _check_names(cur, cfg, specs)
            for spec in specs:
                what = "sync role" if spec.purpose == "sync" else "NocoDB role"
                if set_passwords and spec.password:
                    done.append(f"{what} {spec.name}: {_ensure_role(cur, spec)}")
                elif spec.name in existing:
                    done.append(f"{what} {spec.name}: exists, password kept")
                else:
                    raise SchemaError(f"role {spec.name!r} does not exist: create it with "
                                      "`sudo facusync migrate --admin --create-roles`")
                _warn_memberships(cur, spec)
            done.extend(_grant(cur, cfg, specs[0].name, specs[1].name))
            done.append(f"privileges granted on database objects to {specs[0].name} and "
                        f"{specs[1].name}")
        conn.commit()
    except psycopg2.Error as exc:
        conn.rollback()
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        hint = ""
        if isinstance(exc, psycopg2.errors.InsufficientPrivilege):
            hint = ("; run it as the superuser: `sudo facusync migrate --admin --create-roles` "
                    "(or --refresh-grants)")
        raise SchemaError(f"creating roles failed: {first}{hint}") from None
    except Exception:
        conn.rollback()
        raise
    return done
