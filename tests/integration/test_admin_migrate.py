"""`facusync migrate --admin` and migrate as the daemons' role, against real PostgreSQL servers.

Debian's PostgreSQL admits its superuser only by peer authentication over the local socket;
the daemons log in as the least-privilege sync role. Both must work as the README says:
creating the schema and roles with `sudo facusync migrate --admin --create-roles`, and an
upgrade's `migrate` run by whoever the env file names, with a clear word when that role may
not apply what is pending.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg2
import pytest

from devstack.servers import PG_BIN, PostgresServer
from facusync.cli import main
from facusync.migrate import find_sql_dir

REPO = Path(__file__).resolve().parents[2]


def write_env(path: Path, env: dict[str, str]) -> Path:
    path.write_text("".join(f"{k}={v}\n" for k, v in env.items()))
    return path


def rows(dsn: str, sql: str) -> list[tuple[object, ...]]:
    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute(sql)
            return list(cur.fetchall())
    finally:
        conn.close()


@pytest.fixture()
def sync_env(env: dict[str, str], pg_server: PostgresServer, pg_db: str,
             tmp_path: Path) -> Iterator[dict[str, str]]:
    """The schema and both roles made by the superuser; then the env file of the daemons,
    which names the sync role (unique names: roles are cluster-wide)."""
    tag = uuid.uuid4().hex[:8]
    sync, nocodb = f"t_sync_{tag}", f"t_nocodb_{tag}"
    password = secrets.token_urlsafe(18)
    roles = {"PG_SYNC_ROLE": sync, "PG_NOCODB_ROLE": nocodb,
             "PG_SYNC_ROLE_PASSWORD": password, "PG_NOCODB_ROLE_PASSWORD": secrets.token_urlsafe(18)}
    assert main(["--env-file", str(write_env(tmp_path / "admin.env", {**env, **roles})),
                 "migrate", "--create-roles"]) == 0
    yield {**env, "PG_SYNC_ROLE": sync, "PG_NOCODB_ROLE": nocodb, "PG_USER": sync,
           "PG_PASSWORD": password}
    for name in (sync, nocodb):
        pg_server.psql(f'DROP OWNED BY "{name}"; DROP ROLE "{name}"', database=pg_db)


def test_migrate_as_the_sync_role_with_nothing_pending_succeeds(
        sync_env: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The upgrade step run with the daemons' env file: on 0.1.0 this exited 78 with
    'permission denied for schema public' while --dry-run said 0 pending (issue 18)."""
    env_file = write_env(tmp_path / "facusync.env", sync_env)
    capsys.readouterr()
    assert main(["--env-file", str(env_file), "migrate", "--dry-run"]) == 0
    assert "0 migration(s) pending" in capsys.readouterr().out
    assert main(["--env-file", str(env_file), "migrate"]) == 0
    assert "schema is up to date" in capsys.readouterr().out


def test_pending_migration_the_sync_role_cannot_apply_names_the_admin_command(
        sync_env: dict[str, str], pg_server: PostgresServer, pg_db: str, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    sql_dir = tmp_path / "sql"
    shutil.copytree(find_sql_dir(), sql_dir)
    (sql_dir / "900_test_extra.sql").write_text("ALTER TABLE {{vista}} ADD COLUMN extra_test text;\n")
    env_file = write_env(tmp_path / "facusync.env", sync_env)
    capsys.readouterr()
    # The dry run says what is pending and that this role may not apply it.
    assert main(["--env-file", str(env_file), "migrate", "--dry-run", "--sql-dir", str(sql_dir)]) == 0
    out = capsys.readouterr().out
    assert "pending  900 test_extra" in out and "1 migration(s) pending" in out
    assert "may not apply them: run `sudo facusync migrate --admin`" in out
    # The real run refuses before touching anything: a permission problem, exit 77.
    assert main(["--env-file", str(env_file), "migrate", "--sql-dir", str(sql_dir)]) == 77
    err = capsys.readouterr().err
    assert "900_test_extra" in err and "sudo facusync migrate --admin" in err
    assert "invalid configuration" not in err
    assert rows(pg_server.dsn(pg_db), "SELECT max(version) FROM schema_migrations") != [(900,)]
    # The admin connection (here with a password, as for a remote server) applies it, and
    # --refresh-grants lets the sync role write the new column.
    admin_env = {**sync_env, "PG_ADMIN_HOST": pg_server.host, "PG_ADMIN_USER": pg_server.user,
                 "PG_ADMIN_PASSWORD": pg_server.password}
    admin_file = write_env(tmp_path / "admin.env", admin_env)
    assert main(["--env-file", str(admin_file), "migrate", "--admin", "--refresh-grants",
                 "--sql-dir", str(sql_dir)]) == 0
    assert "applied  900 test_extra" in capsys.readouterr().out
    sync_dsn = pg_server.dsn(pg_db, user=sync_env["PG_USER"], password=sync_env["PG_PASSWORD"])
    conn = psycopg2.connect(sync_dsn)
    try:
        with conn, conn.cursor() as cur:
            cur.execute("UPDATE datos_vista SET extra_test = 'x' WHERE false")
    finally:
        conn.close()


@pytest.fixture()
def peer_server() -> Iterator[PostgresServer]:
    """A cluster set up like Debian's: the local socket admits by peer authentication only."""
    if os.geteuid() != 0:
        pytest.skip("peer authentication as postgres needs root to become postgres")
    server = PostgresServer().start()
    try:
        hba = server.datadir / "pg_hba.conf"
        hba.write_text(hba.read_text().replace("trust", "peer"))
        server._run(str(PG_BIN / "pg_ctl"), "-D", str(server.datadir), "reload")
        server.psql("CREATE DATABASE syncdb")
        yield server
    finally:
        server.destroy()


def test_admin_by_peer_authentication_creates_schema_and_roles(
        peer_server: PostgresServer, env: dict[str, str]) -> None:
    """`sudo facusync migrate --admin --create-roles` on Debian's defaults: root reads the env
    file, becomes postgres, logs in by peer; the sync role gets PG_PASSWORD. As another user
    it is a permission problem that names the command to run."""
    folder = Path(tempfile.mkdtemp(prefix="facusync-peer-"))
    folder.chmod(0o755)
    private = Path(tempfile.mkdtemp(prefix="facusync-home-"))  # mode 0700
    sync_password = secrets.token_urlsafe(18)
    values = {**env, "PG_HOST": peer_server.host, "PG_PORT": str(peer_server.port),
              "PG_DATABASE": "syncdb", "PG_USER": "facusync_sync", "PG_PASSWORD": sync_password,
              "PG_ADMIN_HOST": str(peer_server.base),
              "PG_NOCODB_ROLE_PASSWORD": secrets.token_urlsafe(18)}
    env_file = write_env(folder / "facusync.env", values)
    env_file.chmod(0o600)  # only root may read it, like the real one (0640 root:_facusync)
    command = [sys.executable, "-m", "facusync.cli", "--env-file", str(env_file), "migrate",
               "--admin", "--create-roles"]
    plain = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)}
    try:
        # From root's home (0700), where the user postgres may not look, as an admin would.
        out = subprocess.run(command, capture_output=True, text=True, timeout=120,
                             cwd=private, env=plain)
        assert out.returncode == 0, out.stderr
        assert "schema is up to date" in out.stdout
        assert "sync role facusync_sync: created" in out.stdout
        assert sync_password not in out.stdout + out.stderr
        superuser = peer_server.dsn("syncdb")
        assert rows(superuser, "SELECT tableowner FROM pg_tables WHERE tablename = 'datos_vista'") \
            == [("postgres",)]
        daemon = peer_server.dsn("syncdb", user="facusync_sync", password=sync_password)
        assert rows(daemon, "SELECT count(*) FROM datos_vista") == [(0,)]
        # --sql-dir in a folder only root may read: migrate reads it again as postgres, so it
        # must say which user cannot read what, not "no migration files" (exit 77).
        shutil.copytree(find_sql_dir(), private / "sql")
        hidden = subprocess.run([*command, "--sql-dir", str(private / "sql")], capture_output=True,
                                text=True, timeout=120, cwd=private, env=plain)
        assert hidden.returncode == 77, hidden.stderr
        assert f"{private / 'sql'} cannot be read by the user postgres" in hidden.stderr
        # Another operating-system user: told to use sudo, exit 77.
        env_file.chmod(0o644)
        other = subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
                                *command], capture_output=True, text=True, timeout=120,
                               cwd=REPO, env=plain)
        assert other.returncode == 77, other.stderr
        assert "sudo facusync migrate --admin" in other.stderr
    finally:
        shutil.rmtree(folder)
        shutil.rmtree(private)
        peer_server.psql("DROP DATABASE syncdb")
        peer_server.psql("DROP ROLE IF EXISTS facusync_sync; DROP ROLE IF EXISTS facusync_nocodb")


@pytest.mark.parametrize("password", [
    "Pa;ss#w}rd 'quoted' \"double\" \\ back ñé",  # what the env file and SQL must carry
    "Ｆｕｌｌ\u00a0wídth ﬁ ligature 12",  # SASLprep maps these before hashing (libpq too)
])
def test_create_roles_with_odd_passwords_lets_the_role_log_in(
        env: dict[str, str], pg_server: PostgresServer, pg_db: str, password: str) -> None:
    """`migrate --admin --create-roles` with a password as odd as operators pick: the role
    logs in with it, and the password shows in no output."""
    tag = uuid.uuid4().hex[:8]
    sync, nocodb = f"t_sync_{tag}", f"t_nocodb_{tag}"
    admin_env = {**env, "PG_SYNC_ROLE": sync, "PG_NOCODB_ROLE": nocodb,
                 "PG_SYNC_ROLE_PASSWORD": password, "PG_NOCODB_ROLE_PASSWORD": password[::-1],
                 "PG_ADMIN_HOST": pg_server.host, "PG_ADMIN_USER": pg_server.user,
                 "PG_ADMIN_PASSWORD": pg_server.password}
    out = subprocess.run([sys.executable, "-m", "facusync.cli", "migrate", "--admin", "--create-roles"],
                         env={**os.environ, **admin_env}, capture_output=True, text=True,
                         timeout=120, cwd=REPO)
    try:
        assert out.returncode == 0, out.stderr
        assert password not in out.stdout + out.stderr
        for role, secret in ((sync, password), (nocodb, password[::-1])):
            psycopg2.connect(host=pg_server.host, port=pg_server.port, dbname=pg_db, user=role,
                             password=secret).close()
    finally:
        for name in (sync, nocodb):
            pg_server.psql(f'DROP OWNED BY "{name}"; DROP ROLE IF EXISTS "{name}"', database=pg_db)
