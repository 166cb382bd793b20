"""The schema's triggers, time zone handling and the two roles, against a real PostgreSQL.

The roles log in with their passwords over TCP (the test cluster uses scram on 127.0.0.1),
so these tests exercise exactly what the daemons and NocoDB will get.
"""

from __future__ import annotations

import dataclasses
import io
import secrets
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg2
import psycopg2.errors
import psycopg2.extensions
import pytest

from devstack.servers import PostgresServer
from facusync.cli import main
from facusync.config import Config, Secret
from facusync.errors import ConfigError, SchemaError
from facusync.migrate import apply_migrations
from facusync.pgconn import connect_pg
from facusync.roles import apply_roles

Conn = psycopg2.extensions.connection


def run(conn: Conn, sql: str, *args: object) -> list[tuple[object, ...]]:
    """Execute in autocommit and return the rows (or [] for statements without rows)."""
    with conn.cursor() as cur:
        cur.execute(sql, args or None)
        return list(cur.fetchall()) if cur.description else []


@dataclass
class Roles:
    cfg: Config
    sync: str
    sync_password: str
    nocodb: str
    nocodb_password: str


@pytest.fixture()
def admin(pg_server: PostgresServer, pg_db: str) -> Iterator[Conn]:
    conn = psycopg2.connect(pg_server.dsn(pg_db))
    conn.autocommit = True
    yield conn
    conn.close()


def migrated(cfg: Config) -> None:
    conn = connect_pg(cfg)
    try:
        list(apply_migrations(conn, cfg))
    finally:
        conn.close()


@pytest.fixture()
def schema(make_config: Callable[..., Config], admin: Conn) -> Config:
    cfg = make_config()
    migrated(cfg)
    return cfg


def drop_roles(admin: Conn, *names: str) -> None:
    for name in names:
        if run(admin, "SELECT 1 FROM pg_roles WHERE rolname = %s", name):
            run(admin, f'DROP OWNED BY "{name}"')
            run(admin, f'DROP ROLE "{name}"')


@pytest.fixture()
def roles(make_config: Callable[..., Config], admin: Conn) -> Iterator[Roles]:
    """Both roles with unique names (roles are cluster-wide, tests share the cluster)."""
    tag = uuid.uuid4().hex[:8]
    made = Roles(
        cfg=make_config(), sync=f"t_sync_{tag}", sync_password=secrets.token_urlsafe(18),
        nocodb=f"t_nocodb_{tag}", nocodb_password=secrets.token_urlsafe(18),
    )
    made.cfg = make_config(PG_SYNC_ROLE=made.sync, PG_SYNC_ROLE_PASSWORD=made.sync_password,
                           PG_NOCODB_ROLE=made.nocodb,
                           PG_NOCODB_ROLE_PASSWORD=made.nocodb_password)
    migrated(made.cfg)
    conn = connect_pg(made.cfg)
    try:
        apply_roles(conn, made.cfg, set_passwords=True)
    finally:
        conn.close()
    try:
        yield made
    finally:
        drop_roles(admin, made.sync, made.nocodb)


def login(pg_server: PostgresServer, db: str, user: str, password: str) -> Conn:
    conn = psycopg2.connect(pg_server.dsn(db, user=user, password=password))
    conn.autocommit = True
    return conn


def denied(conn: Conn, sql: str, *args: object) -> bool:
    try:
        run(conn, sql, *args)
    except psycopg2.errors.InsufficientPrivilege:
        return True
    return False


def add(conn: Conn, *conduces: str, when: str = "2024-03-10 08:30:00") -> None:
    values = ", ".join(["(%s, %s::timestamp AT TIME ZONE 'America/Santo_Domingo')"] * len(conduces))
    args: list[object] = []
    for c in conduces:
        args += [c, when]
    run(conn, f"INSERT INTO datos_vista (conduce, ultima_modificacion) VALUES {values}", *args)


# --- triggers -------------------------------------------------------------------------------


def test_updated_at_changes_on_real_change_only(schema: Config, admin: Conn) -> None:
    add(admin, "C1")  # each statement is its own transaction, with its own now()
    tables = ("datos_vista", "datos_seguimiento")
    created = {t: run(admin, f"SELECT updated_at FROM {t}")[0][0] for t in tables}
    time.sleep(0.01)
    # Same values: no real change, the timestamp stays.
    run(admin, "UPDATE datos_vista SET cliente = cliente, facturado = facturado WHERE conduce = 'C1'")
    run(admin, "UPDATE datos_seguimiento SET nota = nota, trabajado = false WHERE conduce = 'C1'")
    for table in tables:
        assert run(admin, f"SELECT updated_at FROM {table}") == [(created[table],)]
    # A real change moves it forward.
    run(admin, "UPDATE datos_vista SET cliente = 'ACME' WHERE conduce = 'C1'")
    run(admin, "UPDATE datos_seguimiento SET nota = 'llamar' WHERE conduce = 'C1'")
    for table in tables:
        (later,), = run(admin, f"SELECT updated_at FROM {table}")
        assert isinstance(later, datetime) and later > created[table]


def test_one_tracking_row_per_new_conduce(schema: Config, admin: Conn) -> None:
    add(admin, "A")                         # single row
    add(admin, "B", "C", "D")               # multi-row insert
    run(admin, "INSERT INTO datos_vista (conduce, ultima_modificacion) "
               "SELECT 'E' || g, now() FROM generate_series(1, 50) g")
    # Upsert mixing existing and new keys: only the new ones get a row, nothing doubles.
    run(admin, "INSERT INTO datos_vista (conduce, ultima_modificacion) VALUES "
               "('A', now()), ('B', now()), ('F', now()) "
               "ON CONFLICT (conduce) DO UPDATE SET ultima_modificacion = EXCLUDED.ultima_modificacion")
    run(admin, "INSERT INTO datos_vista (conduce, ultima_modificacion) VALUES ('C', now()), "
               "('G', now()) ON CONFLICT DO NOTHING")
    rows = run(admin, "SELECT v.conduce, count(s.id) FROM datos_vista v "
                      "LEFT JOIN datos_seguimiento s USING (conduce) GROUP BY 1")
    assert len(rows) == 56
    assert {n for _, n in rows} == {1}
    assert run(admin, "SELECT count(*) FROM datos_seguimiento") == [(56,)]
    # The empty row: defaults only.
    assert run(admin, "SELECT nota, ruta, trabajado, preparador FROM datos_seguimiento "
                      "WHERE conduce = 'A'") == [(None, None, False, None)]


def test_soft_deleted_conduce_keeps_its_tracking_row(schema: Config, admin: Conn) -> None:
    add(admin, "C1", "C2")
    run(admin, "UPDATE datos_seguimiento SET nota = 'preparar' WHERE conduce = 'C1'")
    run(admin, "UPDATE datos_vista SET eliminado_en_origen = true, eliminado_at = now() "
               "WHERE conduce = 'C1'")
    assert run(admin, "SELECT nota FROM datos_seguimiento WHERE conduce = 'C1'") == [("preparar",)]
    # Even the owner cannot hard-delete a conduce that has its tracking row.
    with pytest.raises(psycopg2.errors.ForeignKeyViolation):
        run(admin, "DELETE FROM datos_vista WHERE conduce = 'C1'")
    # The report shows everything, the deleted one flagged.
    assert run(admin, "SELECT conduce, eliminado_en_origen, nota FROM v_planificacion "
                      "ORDER BY conduce") == [("C1", True, "preparar"), ("C2", False, None)]


def test_report_view_is_read_only(schema: Config, admin: Conn) -> None:
    add(admin, "C1")
    with pytest.raises(psycopg2.errors.ObjectNotInPrerequisiteState):
        run(admin, "UPDATE v_planificacion SET nota = 'x'")


# --- time zone ------------------------------------------------------------------------------


def test_naive_source_time_round_trips_with_the_source_offset(schema: Config, admin: Conn) -> None:
    """08:30 in Santo Domingo (UTC-4, no DST) is 12:30 UTC, and reads back as 08:30-04."""
    local = datetime(2024, 3, 10, 8, 30, 0, 123000)  # a DST-change day in the US: no effect here
    tz = schema.source_timezone
    assert tz == "America/Santo_Domingo"
    run(admin, "INSERT INTO datos_vista (conduce, fecha_emision, ultima_modificacion) "
               "VALUES ('T1', %s::timestamp AT TIME ZONE %s, %s::timestamp AT TIME ZONE %s)",
        local, tz, local, tz)
    (stored,), = run(admin, "SELECT ultima_modificacion FROM datos_vista")
    assert isinstance(stored, datetime)
    assert stored == datetime(2024, 3, 10, 12, 30, 0, 123000, tzinfo=UTC)
    assert stored.astimezone(schema.tz).replace(tzinfo=None) == local
    assert stored.astimezone(schema.tz).utcoffset() == timedelta(hours=-4)
    # What NocoDB (or psql) shows in a session set to the local zone.
    run(admin, "SET TIME ZONE 'America/Santo_Domingo'")
    assert run(admin, "SELECT ultima_modificacion::text FROM datos_vista") == [
        ("2024-03-10 08:30:00.123-04",)]
    # And back to the source's naive wall time, as reconcile compares it.
    assert run(admin, "SELECT ultima_modificacion AT TIME ZONE %s FROM datos_vista", tz) == [(local,)]


# --- roles ----------------------------------------------------------------------------------


def test_nocodb_role_edits_people_columns_only(roles: Roles, admin: Conn,
                                               pg_server: PostgresServer, pg_db: str) -> None:
    add(admin, "C1", "C2")
    noco = login(pg_server, pg_db, roles.nocodb, roles.nocodb_password)
    try:
        run(noco, "UPDATE datos_seguimiento SET nota = 'ok', ruta = 'Norte', trabajado = true, "
                  "preparador = 'Ana' WHERE conduce = 'C1'")
        assert run(noco, "SELECT nota, ruta, trabajado, preparador FROM datos_seguimiento "
                         "WHERE conduce = 'C1'") == [("ok", "Norte", True, "Ana")]
        assert run(noco, "SELECT count(*) FROM datos_vista") == [(2,)]
        assert run(noco, "SELECT count(*) FROM v_planificacion") == [(2,)]
        # NocoDB's bulk update writes the primary key back unchanged: allowed; a change is not.
        run(noco, "UPDATE datos_seguimiento SET id = id, nota = 'bulk' WHERE conduce = 'C1'")
        assert run(noco, "SELECT nota FROM datos_seguimiento WHERE conduce = 'C1'") == [("bulk",)]
        assert denied(noco, "UPDATE datos_seguimiento SET id = id + 1000 WHERE conduce = 'C1'")
        run(noco, "UPDATE datos_seguimiento SET nota = 'ok' WHERE conduce = 'C1'")
        # Cannot move a note to another conduce, delete, or touch the synced copy.
        assert denied(noco, "UPDATE datos_seguimiento SET conduce = 'C2' WHERE conduce = 'C1'")
        assert denied(noco, "UPDATE datos_seguimiento SET created_at = now()")
        assert denied(noco, "DELETE FROM datos_seguimiento WHERE conduce = 'C1'")
        assert denied(noco, "TRUNCATE datos_seguimiento")
        assert denied(noco, "UPDATE datos_vista SET cliente = 'x'")
        assert denied(noco, "INSERT INTO datos_vista (conduce, ultima_modificacion) "
                            "VALUES ('X', now())")
        assert denied(noco, "DELETE FROM datos_vista")
        assert denied(noco, "SELECT * FROM sync_control")
        # No DDL.
        assert denied(noco, "CREATE TABLE mine (id int)")
        assert denied(noco, "ALTER TABLE datos_seguimiento ADD COLUMN x int")
        assert denied(noco, "DROP VIEW v_planificacion")
        # Inserting: only a missing tracking row of an existing conduce; no duplicate.
        with pytest.raises(psycopg2.errors.UniqueViolation):
            run(noco, "INSERT INTO datos_seguimiento (conduce, nota) VALUES ('C1', 'dup')")
        with pytest.raises(psycopg2.errors.ForeignKeyViolation):
            run(noco, "INSERT INTO datos_seguimiento (conduce, nota) VALUES ('NOPE', 'x')")
        run(admin, "UPDATE datos_vista SET eliminado_en_origen = true WHERE conduce = 'C2'")
        run(admin, "DELETE FROM datos_seguimiento WHERE conduce = 'C2'")  # a lost row, by hand
        run(noco, "INSERT INTO datos_seguimiento (conduce, nota) VALUES ('C2', 'recreated')")
        assert run(noco, "SELECT nota FROM datos_seguimiento WHERE conduce = 'C2'") == [
            ("recreated",)]
    finally:
        noco.close()


def test_nocodb_role_sees_primary_keys_like_nocodb_does(roles: Roles, pg_server: PostgresServer,
                                                        pg_db: str) -> None:
    """NocoDB finds primary keys through information_schema (PgClient.columnList)."""
    noco = login(pg_server, pg_db, roles.nocodb, roles.nocodb_password)
    try:
        rows = run(noco, """
            SELECT kc.table_name, kc.column_name
            FROM information_schema.key_column_usage kc
            JOIN information_schema.table_constraints tc
              ON kc.constraint_name = tc.constraint_name
             AND kc.constraint_schema = tc.constraint_schema
             AND tc.constraint_type = 'PRIMARY KEY'
            WHERE kc.table_schema = 'public' ORDER BY 1""")
        assert rows == [("datos_seguimiento", "id"), ("datos_vista", "conduce")]
        tables = run(noco, "SELECT table_name, table_type FROM information_schema.tables "
                           "WHERE table_schema = 'public' ORDER BY 1")
        # Exactly what planners should see: no bookkeeping tables.
        assert tables == [("datos_seguimiento", "BASE TABLE"), ("datos_vista", "BASE TABLE"),
                          ("v_planificacion", "VIEW")]
        assert run(noco, "SELECT is_identity FROM information_schema.columns "
                         "WHERE table_name = 'datos_seguimiento' AND column_name = 'id'") == [("YES",)]
    finally:
        noco.close()


def test_sync_role_upserts_through_temp_staging(roles: Roles, admin: Conn,
                                                pg_server: PostgresServer, pg_db: str) -> None:
    sync = login(pg_server, pg_db, roles.sync, roles.sync_password)
    try:
        sync.autocommit = False
        with sync.cursor() as cur:
            cur.execute("CREATE TEMP TABLE stage (conduce varchar(30), cliente varchar(150), "
                        "ultima_modificacion timestamp) ON COMMIT DROP")
            cur.copy_expert("COPY stage FROM STDIN",
                            io.StringIO("C1\tACME\t2024-03-10 08:30:00\nC2\tBeta\t2024-03-10 09:00:00\n"))
            cur.execute(
                "INSERT INTO datos_vista (conduce, cliente, ultima_modificacion) "
                "SELECT conduce, cliente, ultima_modificacion AT TIME ZONE 'America/Santo_Domingo' "
                "FROM stage ON CONFLICT (conduce) DO UPDATE SET cliente = EXCLUDED.cliente, "
                "ultima_modificacion = EXCLUDED.ultima_modificacion, "
                "eliminado_en_origen = false, eliminado_at = NULL")
            cur.execute("UPDATE sync_control SET watermark = '2024-03-10 09:00:00', "
                        "last_commit_at = now(), last_inserted = 2 WHERE id = 1")
            cur.execute("UPDATE datos_vista SET eliminado_en_origen = true, eliminado_at = now() "
                        "WHERE conduce = 'C2'")
            cur.execute("SELECT version FROM schema_migrations ORDER BY 1 LIMIT 1")
            cur.execute("SELECT count(*) FROM datos_seguimiento")
            assert cur.fetchone() == (2,)
        sync.commit()
    finally:
        sync.close()
    # Tracking rows came from the SECURITY DEFINER trigger, not from the sync's privileges.
    assert run(admin, "SELECT conduce FROM datos_seguimiento ORDER BY 1") == [("C1",), ("C2",)]
    assert run(admin, "SELECT last_inserted FROM sync_control") == [(2,)]


def test_sync_role_cannot_touch_people_columns(roles: Roles, admin: Conn,
                                               pg_server: PostgresServer, pg_db: str) -> None:
    add(admin, "C1")
    run(admin, "UPDATE datos_seguimiento SET nota = 'mine' WHERE conduce = 'C1'")
    sync = login(pg_server, pg_db, roles.sync, roles.sync_password)
    try:
        for sql in (
            "UPDATE datos_seguimiento SET nota = 'x'",
            "UPDATE datos_seguimiento SET trabajado = true",
            "DELETE FROM datos_seguimiento",
            "TRUNCATE datos_seguimiento",
            "INSERT INTO datos_seguimiento (conduce) VALUES ('C1')",
            "SELECT nota FROM datos_seguimiento",
            "SELECT * FROM datos_seguimiento",
            # and the synced copy: soft delete only, bookkeeping fixed, the key may only
            # change its spelling (sql/004)
            "DELETE FROM datos_vista",
            "TRUNCATE datos_vista",
            "UPDATE datos_vista SET conduce = 'C9'",
            "UPDATE datos_vista SET created_at = now()",
            "DELETE FROM sync_control",
            "CREATE TABLE mine (id int)",
            "DROP TRIGGER datos_vista_tracking ON datos_vista",
        ):
            assert denied(sync, sql), sql
        # The view spelled the key differently (sql/004): the note follows it.
        run(sync, "UPDATE datos_vista SET conduce = 'c1 ' WHERE conduce = 'C1'")
    finally:
        sync.close()
    assert run(admin, "SELECT conduce, nota FROM datos_seguimiento") == [("c1 ", "mine")]


def test_create_roles_again_is_idempotent_and_changes_the_password(
        roles: Roles, admin: Conn, pg_server: PostgresServer, pg_db: str) -> None:
    grants_before = run(admin, "SELECT grantee, table_name, privilege_type FROM "
                               "information_schema.role_table_grants WHERE grantee IN (%s, %s) "
                               "ORDER BY 1, 2, 3", roles.sync, roles.nocodb)
    run(admin, f'GRANT DELETE ON datos_seguimiento TO "{roles.nocodb}"')  # a stale grant
    new_password = "otra-clave-muy-larga-" + secrets.token_hex(4)
    cfg = dataclasses.replace(roles.cfg, pg_nocodb_role_password=Secret(new_password))
    conn = connect_pg(cfg)
    try:
        done = apply_roles(conn, cfg, set_passwords=True)
    finally:
        conn.close()
    assert any("password set" in line for line in done)
    assert not any(new_password in line for line in done)
    grants_after = run(admin, "SELECT grantee, table_name, privilege_type FROM "
                              "information_schema.role_table_grants WHERE grantee IN (%s, %s) "
                              "ORDER BY 1, 2, 3", roles.sync, roles.nocodb)
    assert grants_after == grants_before  # the stale DELETE is gone, nothing else changed
    with pytest.raises(psycopg2.OperationalError, match="password authentication failed"):
        login(pg_server, pg_db, roles.nocodb, roles.nocodb_password)
    login(pg_server, pg_db, roles.nocodb, new_password).close()
    login(pg_server, pg_db, roles.sync, roles.sync_password).close()


def test_create_roles_without_a_password_keeps_an_existing_roles_password(
        roles: Roles, pg_server: PostgresServer, pg_db: str) -> None:
    cfg = dataclasses.replace(roles.cfg, pg_sync_role_password=Secret(""))
    conn = connect_pg(cfg)
    try:
        done = apply_roles(conn, cfg, set_passwords=True)
    finally:
        conn.close()
    assert f"sync role {roles.sync}: exists, password kept" in done
    assert f"NocoDB role {roles.nocodb}: password set" in done
    login(pg_server, pg_db, roles.sync, roles.sync_password).close()


def test_refresh_grants_keeps_passwords_and_needs_existing_roles(
        roles: Roles, make_config: Callable[..., Config], pg_server: PostgresServer,
        pg_db: str) -> None:
    conn = connect_pg(roles.cfg)
    try:
        apply_roles(conn, roles.cfg, set_passwords=False)
        login(pg_server, pg_db, roles.sync, roles.sync_password).close()
        missing = make_config(PG_SYNC_ROLE="t_nobody_" + uuid.uuid4().hex[:6],
                              PG_NOCODB_ROLE=roles.nocodb)
        with pytest.raises(SchemaError, match=r"does not exist.*--create-roles"):
            apply_roles(conn, missing, set_passwords=False)
    finally:
        conn.close()


def test_passwords_are_required_and_never_defaulted(schema: Config,
                                                    make_config: Callable[..., Config],
                                                    admin: Conn) -> None:
    tag = uuid.uuid4().hex[:6]
    conn = connect_pg(schema)
    try:
        cfg = make_config(PG_SYNC_ROLE=f"t_s_{tag}", PG_NOCODB_ROLE=f"t_n_{tag}",
                          PG_SYNC_ROLE_PASSWORD="short")
        with pytest.raises(ConfigError) as info:
            apply_roles(conn, cfg, set_passwords=True)
        text = str(info.value)
        assert "PG_SYNC_ROLE_PASSWORD is too short" in text
        assert "PG_NOCODB_ROLE_PASSWORD is missing" in text
        assert "short" not in text.replace("too short", "")
    finally:
        conn.close()
    assert run(admin, "SELECT count(*) FROM pg_roles WHERE rolname IN (%s, %s)",
               f"t_s_{tag}", f"t_n_{tag}") == [(0,)]


def test_unsafe_role_names_are_refused(schema: Config, make_config: Callable[..., Config]) -> None:
    good = secrets.token_urlsafe(18)
    conn = connect_pg(schema)
    try:
        same = make_config(PG_SYNC_ROLE="t_same", PG_NOCODB_ROLE="t_same",
                           PG_SYNC_ROLE_PASSWORD=good, PG_NOCODB_ROLE_PASSWORD=good)
        with pytest.raises(ConfigError, match="must differ"):
            apply_roles(conn, same, set_passwords=True)
        myself = make_config(PG_SYNC_ROLE="postgres", PG_NOCODB_ROLE="t_other",
                             PG_SYNC_ROLE_PASSWORD=good, PG_NOCODB_ROLE_PASSWORD=good)
        with pytest.raises(ConfigError, match="connected as"):
            apply_roles(conn, myself, set_passwords=True)
    finally:
        conn.close()


def test_non_ascii_password_logs_in(make_config: Callable[..., Config], admin: Conn,
                                    pg_server: PostgresServer, pg_db: str) -> None:
    """The client-side SCRAM verifier applies SASLprep exactly like libpq."""
    tag = uuid.uuid4().hex[:6]
    sync_pw = "contraseña\u00a0segura-Ｐ-ﬁ-" + tag  # NBSP, fullwidth and a ligature: SASLprep maps them
    noco_pw = "ñandú-" + secrets.token_hex(6)
    cfg = make_config(PG_SYNC_ROLE=f"t_s_{tag}", PG_NOCODB_ROLE=f"t_n_{tag}",
                      PG_SYNC_ROLE_PASSWORD=sync_pw, PG_NOCODB_ROLE_PASSWORD=noco_pw)
    migrated(cfg)
    conn = connect_pg(cfg)
    try:
        apply_roles(conn, cfg, set_passwords=True)
        login(pg_server, pg_db, f"t_s_{tag}", sync_pw).close()
        login(pg_server, pg_db, f"t_n_{tag}", noco_pw).close()
    finally:
        conn.close()
        drop_roles(admin, f"t_s_{tag}", f"t_n_{tag}")


def test_password_never_reaches_the_server_in_clear(roles: Roles, admin: Conn) -> None:
    (stored,), = run(admin, "SELECT rolpassword FROM pg_authid WHERE rolname = %s", roles.sync)
    assert isinstance(stored, str) and stored.startswith("SCRAM-SHA-256$4096:")
    assert roles.sync_password not in stored


def test_cli_create_roles_with_non_default_tables(env: dict[str, str], tmp_path: Path,
                                                  admin: Conn, pg_server: PostgresServer,
                                                  pg_db: str,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    tag = uuid.uuid4().hex[:6]
    sync_pw, noco_pw = secrets.token_urlsafe(18), secrets.token_urlsafe(18)
    env = {**env, "PG_TABLE_VISTA": "ventas", "PG_TABLE_SEGUIMIENTO": "planes",
           "PG_SYNC_ROLE": f"t_s_{tag}", "PG_NOCODB_ROLE": f"t_n_{tag}",
           "PG_SYNC_ROLE_PASSWORD": sync_pw, "PG_NOCODB_ROLE_PASSWORD": noco_pw}
    env_file = tmp_path / "facusync.env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in env.items()))
    try:
        assert main(["--env-file", str(env_file), "migrate", "--dry-run", "--create-roles"]) == 0
        out = capsys.readouterr().out
        assert f"would create sync role t_s_{tag}" in out
        assert main(["--env-file", str(env_file), "migrate", "--create-roles"]) == 0
        out, err = capsys.readouterr()
        assert f"sync role t_s_{tag}: created" in out
        assert sync_pw not in out + err and noco_pw not in out + err
        run(admin, "INSERT INTO ventas (conduce, ultima_modificacion) VALUES ('C1', now())")
        noco = login(pg_server, pg_db, f"t_n_{tag}", noco_pw)
        try:
            run(noco, "UPDATE planes SET nota = 'hola' WHERE conduce = 'C1'")
            assert denied(noco, "UPDATE planes SET conduce = 'C2'")
            assert denied(noco, "UPDATE ventas SET cliente = 'x'")
            assert run(noco, "SELECT nota FROM v_planificacion") == [("hola",)]
        finally:
            noco.close()
        sync = login(pg_server, pg_db, f"t_s_{tag}", sync_pw)
        try:
            run(sync, "UPDATE ventas SET cliente = 'y'")
            assert denied(sync, "UPDATE planes SET nota = 'x'")
        finally:
            sync.close()
        # Again: idempotent, passwords set again.
        assert main(["--env-file", str(env_file), "migrate", "--create-roles"]) == 0
        assert "password set" in capsys.readouterr().out
    finally:
        drop_roles(admin, f"t_s_{tag}", f"t_n_{tag}")


def test_migration_004_lets_an_existing_sync_role_respell_keys(roles: Roles, admin: Conn,
                                                               pg_server: PostgresServer,
                                                               pg_db: str) -> None:
    """An upgrade that only migrates (grants made by an older version): the sync role may
    respell a key afterwards, and its note follows."""
    run(admin, f'REVOKE UPDATE (conduce) ON datos_vista FROM "{roles.sync}"')
    run(admin, "DROP TRIGGER datos_vista_keep_conduce ON datos_vista")
    run(admin, "DROP FUNCTION datos_vista_keep_conduce()")
    run(admin, "DROP INDEX datos_vista_conduce_ci_key")
    run(admin, "DELETE FROM schema_migrations WHERE version = 4")
    add(admin, "C7")
    run(admin, "UPDATE datos_seguimiento SET nota = 'ruta norte' WHERE conduce = 'C7'")
    migrated(roles.cfg)
    sync = login(pg_server, pg_db, roles.sync, roles.sync_password)
    try:
        run(sync, "UPDATE datos_vista SET conduce = 'c7' WHERE conduce = 'C7'")
        assert denied(sync, "UPDATE datos_vista SET conduce = 'C8' WHERE conduce = 'c7'")
    finally:
        sync.close()
    assert run(admin, "SELECT conduce, nota FROM datos_seguimiento") == [("c7", "ruta norte")]
