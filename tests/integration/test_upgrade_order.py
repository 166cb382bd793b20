"""A new version's daemons started before its migrations (apt restarts the services, then the
operator runs `migrate`): they wait for the schema, they do not exit 78 and stay failed."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from facusync.config import config_from_mapping
from facusync.migrate import apply_migrations, find_sql_dir
from facusync.pgconn import connect_pg
from facusync.redisconn import connect_redis
from tests.integration.test_consumer import table_state
from tests.integration.test_consumer_process import show, write_env
from tests.integration.test_consumer_support import BASE, add, migrate, upsert
from tests.integration.test_daemon_outages import Notifications, drain, notifications, stop

__all__ = ["notifications"]  # the fixture, imported for this module's tests


def migrate_up_to(cfg_env: dict[str, str], last: int, folder: Path) -> None:
    """Apply the shipped migrations up to `last` only: the schema an older release left."""
    folder.mkdir()
    for path in sorted(find_sql_dir().glob("*.sql")):
        if int(path.name[:3]) <= last:
            shutil.copy(path, folder / path.name)
    conn = connect_pg(config_from_mapping(cfg_env))
    try:
        list(apply_migrations(conn, config_from_mapping(cfg_env), folder))
    finally:
        conn.close()


@pytest.mark.timeout(180)
@pytest.mark.parametrize("module", ["facusync.consumer", "facusync.producer"])
def test_daemons_wait_for_a_pending_migration(
        env: dict[str, str], notifications: Notifications, tmp_path: Path, module: str) -> None:
    env = {**env, "BACKOFF_MAX": "2", "LOG_LEVEL": "INFO"}
    cfg = config_from_mapping(env)
    migrate_up_to(env, 4, tmp_path / "old-sql")
    log = tmp_path / "daemon.log"
    proc = notifications.start(write_env(tmp_path / "d.env", env), log, module)
    try:
        assert notifications.wait_for(lambda m: m == "READY=1", 30), show(log)
        assert notifications.wait_for(lambda m: "migrate --admin" in m, 30), \
            (notifications.statuses(), show(log))
        assert proc.p.poll() is None, show(log)  # waiting, not exited (78 would stay failed)
        migrate(cfg)  # the operator's `sudo facusync migrate --admin`
        if module == "facusync.consumer":
            rds = connect_redis(cfg)
            add(rds, cfg, [upsert(f"U{i:03d}", BASE) for i in range(20)])
            drain(rds, cfg, 60)
            rds.close()
            assert len(table_state(cfg)) == 20, show(log)
        else:
            assert notifications.wait_for(lambda m: m.startswith("STATUS=") and "waiting" not in m
                                          and "migrate" not in m, 60), \
                (notifications.statuses(), show(log))
        stop(proc, log)
    finally:
        if proc.p.poll() is None:
            proc.kill()
