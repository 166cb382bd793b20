"""`facusync migrate` against a real PostgreSQL: ordered, idempotent, atomic, serialized."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg2
import psycopg2.extensions
import pytest

from devstack.servers import PostgresServer
from facusync.cli import main
from facusync.config import Config
from facusync.errors import SchemaError
from facusync.migrate import apply_migrations, check_current, list_migrations, pending
from facusync.pgconn import connect_pg

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture()
def admin(pg_server: PostgresServer, pg_db: str) -> Iterator[psycopg2.extensions.connection]:
    conn = psycopg2.connect(pg_server.dsn(pg_db))
    conn.autocommit = True
    yield conn
    conn.close()


def query(conn: psycopg2.extensions.connection, sql: str, *args: object) -> list[tuple[object, ...]]:
    with conn.cursor() as cur:
        cur.execute(sql, args or None)
        return list(cur.fetchall())


def migrate(cfg: Config, sql_dir: Path | None = None) -> list[int]:
    conn = connect_pg(cfg)
    try:
        return [m.version for m in apply_migrations(conn, cfg, sql_dir)]
    finally:
        conn.close()


def write_env(path: Path, env: dict[str, str]) -> Path:
    path.write_text("".join(f"{k}={v}\n" for k, v in env.items()))
    return path


def test_fresh_database_gets_every_migration_in_order(make_config: Callable[..., Config],
                                                      admin: psycopg2.extensions.connection) -> None:
    cfg = make_config()
    expected = [m.version for m in list_migrations()]
    assert expected[:2] == [1, 2]
    assert migrate(cfg) == expected
    rows = query(admin, "SELECT version FROM schema_migrations ORDER BY version")
    assert [r[0] for r in rows] == expected
    assert query(admin, "SELECT id, watermark FROM sync_control") == [(1, None)]
    names = {r[0] for r in query(admin, "SELECT indexname FROM pg_indexes WHERE tablename IN "
                                         "('datos_vista', 'datos_seguimiento')")}
    assert {"datos_vista_ultima_mod_idx", "datos_vista_fecha_emision_idx",
            "datos_vista_facturado_idx", "datos_seguimiento_conduce_key"} <= names
    assert query(admin, "SELECT to_regclass('v_planificacion') IS NOT NULL") == [(True,)]


def test_second_run_applies_nothing_and_changes_nothing(make_config: Callable[..., Config],
                                                        admin: psycopg2.extensions.connection) -> None:
    cfg = make_config()
    migrate(cfg)
    before = query(admin, "SELECT version, applied_at FROM schema_migrations ORDER BY version")
    assert migrate(cfg) == []
    assert query(admin, "SELECT version, applied_at FROM schema_migrations ORDER BY version") == before
    conn = connect_pg(cfg)
    try:
        assert pending(conn) == []
        check_current(conn, cfg)
    finally:
        conn.close()


def slow_migrations(folder: Path) -> Path:
    """Three migrations, the first slow enough for concurrent runs to really overlap."""
    folder.mkdir()
    (folder / "001_slow.sql").write_text(
        "SELECT pg_sleep(0.5); CREATE TABLE one (id int); INSERT INTO one VALUES (1);")
    (folder / "002_two.sql").write_text("CREATE TABLE two (id int); INSERT INTO one VALUES (2);")
    (folder / "003_three.sql").write_text("ALTER TABLE two ADD COLUMN note text;")
    return folder


def test_concurrent_runs_in_threads_apply_each_migration_once(
        make_config: Callable[..., Config], admin: psycopg2.extensions.connection,
        tmp_path: Path) -> None:
    cfg = make_config()
    folder = slow_migrations(tmp_path / "sql")
    start = threading.Barrier(4)
    results: dict[int, list[int]] = {}
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        try:
            start.wait()
            results[i] = migrate(cfg, folder)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors
    applied = sorted(v for done in results.values() for v in done)
    assert applied == [1, 2, 3]  # each exactly once, whichever run did it
    assert query(admin, "SELECT id FROM one ORDER BY id") == [(1,), (2,)]
    assert [r[0] for r in query(admin, "SELECT version FROM schema_migrations ORDER BY 1")] == [1, 2, 3]


def test_concurrent_cli_processes_both_succeed(env: dict[str, str], tmp_path: Path,
                                               admin: psycopg2.extensions.connection) -> None:
    """Two `facusync migrate` processes at once, on the real migrations: both exit 0."""
    env_file = write_env(tmp_path / "facusync.env", env)
    procs = [
        subprocess.Popen([sys.executable, "-m", "facusync.cli", "--env-file", str(env_file),
                          "migrate"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, env={k: v for k, v in os.environ.items()
                                         if not k.startswith(("PG_", "REDIS_", "MSSQL_"))})
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    total = len(list_migrations())
    applied = sum(out.count("applied  ") for out, _ in outputs)
    assert applied == total
    assert query(admin, "SELECT count(*) FROM schema_migrations") == [(total,)]


def test_failed_migration_leaves_nothing_behind(make_config: Callable[..., Config],
                                                admin: psycopg2.extensions.connection,
                                                tmp_path: Path) -> None:
    cfg = make_config()
    folder = tmp_path / "sql"
    folder.mkdir()
    (folder / "001_ok.sql").write_text("CREATE TABLE ok (id int);")
    (folder / "002_broken.sql").write_text("CREATE TABLE half (id int); SELECT * FROM nowhere;")
    with pytest.raises(SchemaError, match=r"002_broken.sql failed: .*nowhere"):
        migrate(cfg, folder)
    assert query(admin, "SELECT version FROM schema_migrations") == [(1,)]
    assert query(admin, "SELECT to_regclass('half') IS NULL") == [(True,)]
    (folder / "002_broken.sql").write_text("CREATE TABLE half (id int);")
    assert migrate(cfg, folder) == [2]


def test_dry_run_lists_pending_and_changes_nothing(env: dict[str, str], tmp_path: Path,
                                                   admin: psycopg2.extensions.connection,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    env_file = write_env(tmp_path / "facusync.env", env)
    assert main(["--env-file", str(env_file), "migrate", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "pending  001 schema" in out and "pending  002 indexes_and_view" in out
    assert query(admin, "SELECT to_regclass('schema_migrations') IS NULL") == [(True,)]
    assert main(["--env-file", str(env_file), "migrate"]) == 0
    capsys.readouterr()
    assert main(["--env-file", str(env_file), "migrate", "--dry-run"]) == 0
    assert "0 migration(s) pending" in capsys.readouterr().out


def test_newer_database_is_reported(env: dict[str, str], tmp_path: Path,
                                    admin: psycopg2.extensions.connection,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    env_file = write_env(tmp_path / "facusync.env", env)
    assert main(["--env-file", str(env_file), "migrate"]) == 0
    admin.cursor().execute("INSERT INTO schema_migrations (version, name) VALUES (999, 'future')")
    assert main(["--env-file", str(env_file), "migrate"]) == 0
    assert "999" in capsys.readouterr().err


def test_non_default_table_names_are_honoured(make_config: Callable[..., Config],
                                              admin: psycopg2.extensions.connection) -> None:
    cfg = make_config(PG_TABLE_VISTA="Ventas_Copia", PG_TABLE_SEGUIMIENTO="seguimiento_x")
    migrate(cfg)
    assert query(admin, "SELECT to_regclass('public.\"Ventas_Copia\"') IS NOT NULL, "
                        "to_regclass('seguimiento_x') IS NOT NULL, "
                        "to_regclass('datos_vista') IS NULL") == [(True, True, True)]
    with admin.cursor() as cur:
        cur.execute('INSERT INTO "Ventas_Copia" (conduce, ultima_modificacion) '
                    "VALUES ('C1', now()), ('C2', now())")
    assert query(admin, "SELECT conduce FROM seguimiento_x ORDER BY 1") == [("C1",), ("C2",)]
    assert query(admin, "SELECT count(*) FROM v_planificacion WHERE seguimiento_id IS NOT NULL") == [(2,)]


def test_too_long_table_name_is_refused_before_touching_the_database(
        make_config: Callable[..., Config], admin: psycopg2.extensions.connection) -> None:
    cfg = make_config(PG_TABLE_VISTA="v" * 60)
    with pytest.raises(SchemaError, match=r"PG_TABLE_VISTA=.* is too long"):
        migrate(cfg)
    assert query(admin, "SELECT to_regclass('schema_migrations') IS NULL") == [(True,)]


def test_migrating_as_an_unprivileged_role_says_who_should(
        make_config: Callable[..., Config], admin: psycopg2.extensions.connection,
        pg_db: str) -> None:
    with admin.cursor() as cur:
        cur.execute("CREATE ROLE t_weak_" + pg_db + " LOGIN PASSWORD 'weak-but-long-enough'")
    try:
        cfg = make_config(PG_USER="t_weak_" + pg_db, PG_PASSWORD="weak-but-long-enough")
        with pytest.raises(SchemaError, match=r"permission denied.*migrate --admin"):
            migrate(cfg)
    finally:
        with admin.cursor() as cur:
            cur.execute("DROP OWNED BY t_weak_" + pg_db)
            cur.execute("DROP ROLE t_weak_" + pg_db)


def test_renaming_tables_in_the_config_after_migrating_is_caught(
        make_config: Callable[..., Config], env: dict[str, str], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    migrate(make_config())
    renamed = make_config(PG_TABLE_SEGUIMIENTO="otra_tabla")
    env_file = write_env(tmp_path / "facusync.env", {**env, "PG_TABLE_SEGUIMIENTO": "otra_tabla"})
    assert main(["--env-file", str(env_file), "migrate"]) == 78
    assert "PG_TABLE_SEGUIMIENTO=otra_tabla" in capsys.readouterr().err
    conn = connect_pg(renamed)
    try:
        with pytest.raises(SchemaError, match="created with other names"):
            check_current(conn, renamed)
    finally:
        conn.close()
