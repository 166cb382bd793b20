"""The consumer as a real process: SIGKILL at random moments, PostgreSQL restarting under it,
SIGTERM. Nothing may be lost, nothing applied wrongly."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg2
import pytest
import redis

from devstack.servers import PostgresServer, RedisServer
from facusync.config import Config, config_from_mapping
from facusync.redisconn import GROUP, Keys, connect_redis
from tests.integration.test_consumer import (
    expected_table,
    pending,
    phases,
    stream_len,
    table_state,
)
from tests.integration.test_consumer_support import BASE, add, migrate, query, upsert

ROOT = Path(__file__).resolve().parents[2]


def write_env(path: Path, env: dict[str, str]) -> Path:
    path.write_text("".join(f"{k}={v}\n" for k, v in env.items()))
    return path


class Proc:
    """One consumer (or producer) process with its log in a file (shown when a test fails)."""

    def __init__(self, env_file: Path, log: Path, *, once: bool = False,
                 python: str = sys.executable, module: str = "facusync.consumer") -> None:
        args = [python, "-m", module, "--env-file", str(env_file)]
        if once:
            args.append("--once")
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.log = log.open("ab")
        self.started = time.monotonic()
        self.p = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT, env=env,
                                  cwd=ROOT)

    def kill(self) -> None:
        self.p.kill()
        self.p.wait()
        self.log.close()

    def wait(self, timeout: float) -> int:
        try:
            return self.p.wait(timeout)
        finally:
            self.log.close()


@pytest.fixture()
def proc_env(env: dict[str, str], tmp_path: Path) -> dict[str, str]:
    return {**env, "CLAIM_IDLE": "1", "BACKOFF_MAX": "2", "BATCH_SIZE": "500",
            "LOG_LEVEL": "WARNING"}


def show(log: Path) -> str:
    return log.read_text(errors="replace")[-4000:] if log.exists() else ""


@pytest.mark.timeout(400)
@pytest.mark.slow
def test_sigkill_at_random_moments_loses_nothing(proc_env: dict[str, str], tmp_path: Path) -> None:
    cfg = config_from_mapping(proc_env)
    migrate(cfg)
    rds = connect_redis(cfg)
    env_file = write_env(tmp_path / "c.env", proc_env)
    log = tmp_path / "consumer.log"
    rnd = random.Random(42)
    everything = []
    kills = 0
    for phase in phases(11, scale=8):
        add(rds, cfg, phase)
        everything += phase
        while stream_len(rds, cfg) > 0 and kills < 40:
            p = Proc(env_file, log)
            time.sleep(rnd.uniform(0.4, 2.0))
            p.kill()
            kills += 1
        time.sleep(cfg.claim_idle + 0.3)  # what the killed ones held is now claimable
        assert Proc(env_file, log, once=True).wait(120) == 0, show(log)
        assert stream_len(rds, cfg) == 0 and pending(rds, cfg) == 0, show(log)
    assert kills >= 3
    assert rds.xlen(Keys(cfg.redis_prefix).dead) == 0
    assert table_state(cfg) == expected_table(everything)
    n = len(table_state(cfg))
    assert query(cfg, f"SELECT count(*) FROM {cfg.pg_table_seguimiento}") == [(n,)]
    rds.close()


@pytest.fixture()
def own_pg() -> Iterator[PostgresServer]:
    """A private server: the session's one is shared and must never be stopped."""
    server = PostgresServer().start()
    try:
        yield server
    finally:
        server.destroy()


@pytest.mark.timeout(300)
@pytest.mark.slow
def test_postgres_restart_mid_stream_loses_nothing(
    proc_env: dict[str, str], own_pg: PostgresServer, tmp_path: Path
) -> None:
    admin = psycopg2.connect(own_pg.dsn())
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute("CREATE DATABASE restartdb")
    admin.close()
    env = {**proc_env, "PG_PORT": str(own_pg.port), "PG_PASSWORD": own_pg.password,
           "PG_DATABASE": "restartdb", "LOG_LEVEL": "INFO"}
    cfg = config_from_mapping(env)
    migrate(cfg)
    rds = connect_redis(cfg)
    log = tmp_path / "consumer.log"
    consumer = Proc(write_env(tmp_path / "c.env", env), log)
    everything = []
    try:
        for chunk in range(30):
            entries = [upsert(f"P{(chunk * 700 + i) % 9000:05d}", BASE, cliente=str(chunk))
                       for i in range(1000)]
            # Same version, new content: each chunk really rewrites the rows it carries.
            add(rds, cfg, entries)
            everything += entries
            if chunk == 10:
                own_pg.stop()
            if chunk == 20:
                own_pg.start_again()
            time.sleep(0.2)
        deadline = time.monotonic() + 90
        while (stream_len(rds, cfg) or pending(rds, cfg)) and time.monotonic() < deadline:
            time.sleep(0.3)
        assert stream_len(rds, cfg) == 0 and pending(rds, cfg) == 0, show(log)
        consumer.p.send_signal(signal.SIGTERM)
        assert consumer.wait(15) == 0, show(log)
    finally:
        if consumer.p.poll() is None:
            consumer.kill()
    assert table_state(cfg) == expected_table(everything)
    clients = dict(query(cfg, f'SELECT conduce, cliente FROM "{cfg.pg_table_vista}"'))
    last = {e["key"]: e["row"] for e in everything}
    assert all(f'"cliente":"{clients[k]}"' in row for k, row in last.items())
    text = log.read_text()
    assert "PostgreSQL unavailable" in text and "recovered" in text
    assert text.count("PostgreSQL unavailable") <= 3  # once per change of state, not per retry
    rds.close()


@pytest.mark.timeout(120)
def test_sigterm_stops_quickly_and_loses_nothing(proc_env: dict[str, str], tmp_path: Path,
                                                 make_config: Callable[..., Config]) -> None:
    cfg = config_from_mapping(proc_env)
    migrate(cfg)
    rds: redis.Redis = connect_redis(cfg)
    env_file = write_env(tmp_path / "c.env", proc_env)
    log = tmp_path / "consumer.log"
    entries = [upsert(f"S{i:06d}", BASE) for i in range(30000)]
    add(rds, cfg, entries)
    p = Proc(env_file, log)
    time.sleep(1.5)
    started = time.monotonic()
    p.p.send_signal(signal.SIGTERM)
    assert p.wait(15) == 0, show(log)
    assert time.monotonic() - started < 5
    time.sleep(cfg.claim_idle + 0.3)
    assert Proc(env_file, log, once=True).wait(120) == 0, show(log)
    assert len(table_state(cfg)) == 30000 and stream_len(rds, cfg) == 0
    rds.close()


@pytest.mark.timeout(120)
def test_runs_on_debian_python(proc_env: dict[str, str], tmp_path: Path) -> None:
    """Debian 12's python3 with python3-redis 4.3.4 and python3-psycopg2 2.9.5."""
    system = "/usr/bin/python3"
    probe = subprocess.run([system, "-c", "import redis, psycopg2, sdnotify"],
                           capture_output=True, check=False)
    if probe.returncode != 0:
        pytest.skip("Debian's python3 packages are not installed here")
    cfg = config_from_mapping(proc_env)
    migrate(cfg)
    rds = connect_redis(cfg)
    entries = [upsert(f"D{i:05d}", BASE) for i in range(3000)]
    bad = upsert("BAD", BASE, cliente="x" * 500)
    add(rds, cfg, [*entries, bad])
    # A consumer that read 100 entries and died: the claim path must work on redis 4.3.4 too.
    stream = Keys(cfg.redis_prefix).stream
    rds.xgroup_create(stream, GROUP, id="0", mkstream=True)
    rds.xreadgroup(GROUP, "ghost", {stream: ">"}, count=100)
    time.sleep(cfg.claim_idle + 0.2)
    log = tmp_path / "consumer.log"
    assert Proc(write_env(tmp_path / "c.env", proc_env), log, once=True,
                python=system).wait(60) == 0, show(log)
    assert len(table_state(cfg)) == 3000 and stream_len(rds, cfg) == 0
    assert pending(rds, cfg) == 0 and "claimed entries" in log.read_text()
    assert rds.xlen(Keys(cfg.redis_prefix).dead) == 1
    rds.close()


@pytest.fixture()
def own_redis() -> Iterator[RedisServer]:
    """A private Redis: the session's one is shared and must never be restarted."""
    server = RedisServer().start(appendonly=True)
    try:
        yield server
    finally:
        server.destroy()


@pytest.mark.timeout(300)
@pytest.mark.slow
def test_redis_restart_mid_stream(proc_env: dict[str, str], own_redis: RedisServer,
                                  tmp_path: Path) -> None:
    env = {**proc_env, "REDIS_PORT": str(own_redis.port), "REDIS_PASSWORD": own_redis.password,
           "LOG_LEVEL": "INFO"}
    cfg = config_from_mapping(env)
    migrate(cfg)
    log = tmp_path / "consumer.log"
    consumer = Proc(write_env(tmp_path / "c.env", env), log)
    everything = []
    try:
        rds = connect_redis(cfg)
        for chunk in range(12):
            entries = [upsert(f"Q{chunk:02d}{i:04d}", BASE) for i in range(1000)]
            add(rds, cfg, entries)
            everything += entries
            if chunk == 5:
                time.sleep(1.2)  # appendfsync everysec: let the AOF catch up
                rds.close()
                own_redis.stop()  # SIGTERM: Redis writes its AOF and exits
                time.sleep(3)  # the consumer meets a dead Redis, backs off and retries
                own_redis.start()
                rds = connect_redis(cfg)
            time.sleep(0.2)
        deadline = time.monotonic() + 60
        while (stream_len(rds, cfg) or pending(rds, cfg)) and time.monotonic() < deadline:
            time.sleep(0.3)
        assert stream_len(rds, cfg) == 0 and pending(rds, cfg) == 0, show(log)
        assert table_state(cfg) == expected_table(everything)
        # Redis restarted without persistence: the group is gone; the consumer recreates it.
        rds.close()
        own_redis.restart(keep_data=False)
        rds = connect_redis(cfg)
        late = [upsert(f"L{i:04d}", BASE) for i in range(500)]
        add(rds, cfg, late)
        deadline = time.monotonic() + 60
        while stream_len(rds, cfg) and time.monotonic() < deadline:
            time.sleep(0.3)
        assert table_state(cfg) == expected_table(everything + late), show(log)
        consumer.p.send_signal(signal.SIGTERM)
        assert consumer.wait(15) == 0, show(log)
        rds.close()
    finally:
        if consumer.p.poll() is None:
            consumer.kill()


@pytest.mark.timeout(60)
def test_systemd_notifications(proc_env: dict[str, str], tmp_path: Path) -> None:
    """READY once connected, WATCHDOG from the loop, a STATUS line, STOPPING on SIGTERM."""
    cfg = config_from_mapping(proc_env)
    migrate(cfg)
    rds = connect_redis(cfg)
    add(rds, cfg, [upsert(f"N{i:04d}", BASE) for i in range(2000)])
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(0.2)
    log = tmp_path / "consumer.log"
    os.environ["NOTIFY_SOCKET"] = str(path)
    try:
        p = Proc(write_env(tmp_path / "c.env", proc_env), log)
    finally:
        del os.environ["NOTIFY_SOCKET"]
    messages: list[str] = []
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not any(
            m.startswith("STATUS=rows/s") and "dead letters" in m for m in messages):
        with contextlib.suppress(TimeoutError):
            messages.append(sock.recv(4096).decode())
    p.p.send_signal(signal.SIGTERM)
    assert p.wait(15) == 0, show(log)
    while True:
        try:
            messages.append(sock.recv(4096).decode())
        except (TimeoutError, OSError):
            break
    sock.close()
    assert "READY=1" in messages and "WATCHDOG=1" in messages and "STOPPING=1" in messages
    status = [m for m in messages if m.startswith("STATUS=rows/s")]
    assert status and "last commit" in status[-1] and "lag" in status[-1]
    rds.close()
