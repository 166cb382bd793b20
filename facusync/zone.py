"""SOURCE_TIMEZONE belongs to the stored data: it is recorded, checked, and converted on purpose.

The view's datetimes are naive local times; datos_vista keeps them as timestamptz, converted
with SOURCE_TIMEZONE. Correcting the setting after the first sync used to make every stored
time differ from a new conversion: verify counted thousands of differences and the consumer
threw real updates away as "unchanged" while status said HEALTHY. So the zone is recorded in
sync_control by the first daemon that starts, every daemon and every batch refuses a
different one (exit 78, with the command to run), and ``facusync convert-timezone`` rewrites
the stored times from the recorded zone to the configured one in one transaction.
"""

from __future__ import annotations

import psycopg2
import psycopg2.errors
import psycopg2.extensions
from psycopg2 import sql

from facusync.config import Config
from facusync.errors import SchemaError, SinkError, UsageError
from facusync.pgconn import describe_pg_error

# timestamptz columns the sync fills itself (not converted source times).
OWN_TIMES = frozenset({"created_at", "updated_at", "eliminado_at"})


def mismatch_advice(cfg: Config, recorded: str) -> str:
    """The refusal an operator reads when SOURCE_TIMEZONE differs from the stored times' zone."""
    return (f"SOURCE_TIMEZONE={cfg.source_timezone} but the times in {cfg.pg_table_vista} were "
            f"stored as {recorded} local time, so every change would be compared wrongly. "
            f"If {cfg.source_timezone} is right, stop facusync-producer and facusync-consumer, "
            f"run `sudo facusync convert-timezone --from {recorded}` and start them again; if "
            f"{recorded} is right, set SOURCE_TIMEZONE={recorded} back in the env file")


def recorded_zone(cur: psycopg2.extensions.cursor) -> str | None:
    """sync_control.source_timezone; SchemaError when migration 005 is not applied yet."""
    try:
        cur.execute("SELECT source_timezone FROM sync_control WHERE id = 1")
    except psycopg2.errors.UndefinedColumn:
        raise SchemaError("sync_control has no source_timezone column: run "
                          "`sudo facusync migrate --admin`") from None
    row = cur.fetchone()
    return str(row[0]) if row and row[0] is not None else None


def ensure_zone(conn: psycopg2.extensions.connection, cfg: Config) -> None:
    """Record SOURCE_TIMEZONE on first use (or while nothing is stored); refuse another one."""
    with conn.cursor() as cur:
        recorded = recorded_zone(cur)
        if recorded == cfg.source_timezone:
            return
        if recorded is not None:
            cur.execute(sql.SQL("SELECT EXISTS (SELECT 1 FROM {})").format(
                sql.Identifier(cfg.pg_table_vista)))
            row = cur.fetchone()
            if row and row[0]:
                conn.rollback()
                raise SchemaError(mismatch_advice(cfg, recorded))
        cur.execute("UPDATE sync_control SET source_timezone = %s WHERE id = 1"
                    " AND source_timezone IS NOT DISTINCT FROM %s", (cfg.source_timezone, recorded))
    conn.commit()


def source_time_columns(cur: psycopg2.extensions.cursor, cfg: Config) -> list[str]:
    """datos_vista's timestamptz columns that hold converted source times."""
    cur.execute(
        "SELECT attname FROM pg_attribute WHERE attrelid = to_regclass(%s) AND attnum > 0"
        " AND NOT attisdropped AND atttypid = 'timestamptz'::regtype ORDER BY attnum",
        ('"' + cfg.pg_table_vista + '"',),
    )
    return [str(r[0]) for r in cur.fetchall() if r[0] not in OWN_TIMES]


def convert_zone(conn: psycopg2.extensions.connection, cfg: Config, old: str) -> int:
    """Re-read every stored source time as `old` local time and store it as SOURCE_TIMEZONE's.

    One transaction, sync_control locked against the consumer's commits; returns the rows
    rewritten. Refuses when the recorded zone is not `old` (the times would move twice).
    """
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_timezone_names WHERE name = %s", (old,))
            if cur.fetchone() is None:
                raise UsageError(f"--from {old}: PostgreSQL does not know this time zone")
            # Every consumer batch ends by updating sync_control, checking the zone: holding
            # this lock, none can commit a row converted with the old zone after this runs.
            # (The sync role may lock sync_control; datos_vista it may only update by column.)
            cur.execute("LOCK TABLE sync_control IN SHARE ROW EXCLUSIVE MODE")
            cur.execute("SELECT source_timezone FROM sync_control WHERE id = 1 FOR UPDATE")
            row = cur.fetchone()
            recorded = row[0] if row else None
            if recorded is not None and recorded != old:
                raise UsageError(f"the stored times are {recorded} local time, not {old}: "
                                 f"run `facusync convert-timezone --from {recorded}`")
            columns = source_time_columns(cur, cfg)
            moved = sql.SQL(", ").join(
                sql.SQL("{0} = ({0} AT TIME ZONE %(old)s) AT TIME ZONE %(new)s").format(
                    sql.Identifier(c)) for c in columns)
            count = 0
            if old != cfg.source_timezone and columns:
                cur.execute(sql.SQL("UPDATE {} SET {}").format(
                    sql.Identifier(cfg.pg_table_vista), moved),
                    {"old": old, "new": cfg.source_timezone})
                count = cur.rowcount
            cur.execute(
                "UPDATE sync_control SET source_timezone = %(new)s, newest_version ="
                " (newest_version AT TIME ZONE %(old)s) AT TIME ZONE %(new)s WHERE id = 1",
                {"old": old, "new": cfg.source_timezone})
        conn.commit()
        return count
    except psycopg2.Error as exc:
        conn.rollback()
        raise SinkError(describe_pg_error(exc)) from None
    except UsageError:
        conn.rollback()
        raise
