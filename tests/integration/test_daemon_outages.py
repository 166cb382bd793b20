"""The consumer as a real process when PostgreSQL is blocked or a server is down: an outage
is waited out with the systemd watchdog fed, logged once, and nothing valid is dead-lettered.

The NOTIFY_SOCKET is a unix datagram socket of the test, so the gaps between WATCHDOG=1
messages are measured exactly as systemd would see them."""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg2
import pytest
import redis

from devstack.servers import PostgresServer, RedisServer
from facusync.config import Config, config_from_mapping
from facusync.redisconn import GROUP, Keys, connect_redis
from tests.integration.test_consumer import pending, stream_len, table_state
from tests.integration.test_consumer_process import Proc, show, write_env
from tests.integration.test_consumer_support import BASE, add, migrate, upsert

WATCHDOG_SEC = 5.0  # the small WatchdogSec the consumer must never starve


class Notifications:
    """The daemon's sd_notify messages, with their arrival times, read by a thread."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, str]] = []
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        while not self.done.is_set():
            with contextlib.suppress(TimeoutError, OSError):
                data = self.sock.recv(4096).decode()
                now = time.monotonic()
                self.messages.extend((now, line) for line in data.splitlines())

    def start(self, env_file: Path, log: Path, module: str = "facusync.consumer") -> Proc:
        os.environ["NOTIFY_SOCKET"] = str(self.path)
        try:
            return Proc(env_file, log, module=module)
        finally:
            del os.environ["NOTIFY_SOCKET"]

    def since(self, start: float) -> list[tuple[float, str]]:
        return [(t, m) for t, m in list(self.messages) if t >= start]

    def wait_for(self, predicate: Callable[[str], bool], timeout: float,
                 after: float = 0.0) -> float | None:
        """When a message matching `predicate` arrived after `after` (None: not within
        `timeout`)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for when, message in list(self.messages):
                if when >= after and predicate(message):
                    return when
            time.sleep(0.1)
        return None

    def statuses(self) -> list[str]:
        return [m for _, m in list(self.messages) if m.startswith("STATUS=")]

    def watchdog_gaps(self, start: float, end: float) -> float:
        """The longest time without WATCHDOG=1 between `start` and `end`."""
        pings = [t for t, m in self.messages if m == "WATCHDOG=1" and start <= t <= end]
        marks = [start, *pings, end]
        return max(b - a for a, b in itertools.pairwise(marks))

    def close(self) -> None:
        self.done.set()
        self.thread.join(2)
        self.sock.close()


@pytest.fixture()
def notifications(tmp_path: Path) -> Iterator[Notifications]:
    found = Notifications(tmp_path / "notify.sock")
    yield found
    found.close()


def stop(proc: Proc, log: Path) -> None:
    proc.p.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0, show(log)


def drain(rds: redis.Redis, cfg: Config, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while (stream_len(rds, cfg) or pending(rds, cfg)) and time.monotonic() < deadline:
        time.sleep(0.2)


@pytest.mark.timeout(180)
def test_table_locked_longer_than_watchdog_is_an_outage(
        env: dict[str, str], notifications: Notifications, tmp_path: Path) -> None:
    """A DBA's LOCK TABLE … ACCESS EXCLUSIVE held 4×WatchdogSec: the watchdog stays fed, the
    wait is logged once with its cause, the rows land after the lock goes, none dead."""
    env = {**env, "CLAIM_IDLE": "1", "BACKOFF_MAX": "2", "PG_STATEMENT_TIMEOUT": "2",
           "LOG_LEVEL": "INFO"}
    cfg = config_from_mapping(env)
    migrate(cfg)
    rds = connect_redis(cfg)
    log = tmp_path / "consumer.log"
    proc = notifications.start(write_env(tmp_path / "c.env", env), log)
    try:
        assert notifications.wait_for(lambda m: m == "READY=1", 30), show(log)
        add(rds, cfg, [upsert(f"W{i:04d}", BASE) for i in range(200)])
        drain(rds, cfg, 30)
        assert len(table_state(cfg)) == 200, show(log)
        locker = psycopg2.connect(host=cfg.pg_host, port=cfg.pg_port, dbname=cfg.pg_database,
                                  user=cfg.pg_user, password=cfg.pg_password.reveal())
        with locker.cursor() as cur:
            cur.execute(f'LOCK TABLE "{cfg.pg_table_vista}" IN ACCESS EXCLUSIVE MODE')
        locked_at = time.monotonic()
        add(rds, cfg, [upsert(f"X{i:04d}", BASE) for i in range(300)])
        time.sleep(4 * WATCHDOG_SEC)
        blocked_gap = notifications.watchdog_gaps(locked_at, time.monotonic())
        waiting = [m for _, m in notifications.since(locked_at) if m.startswith("STATUS=waiting")]
        locker.rollback()  # the lock goes
        locker.close()
        drain(rds, cfg, 30)
        print(f"longest watchdog gap while the table was locked: {blocked_gap:.1f} s")
        assert blocked_gap < WATCHDOG_SEC, (blocked_gap, show(log))
        assert waiting and "lock" in waiting[-1], waiting
        assert stream_len(rds, cfg) == 0 and pending(rds, cfg) == 0, show(log)
        assert len(table_state(cfg)) == 500, show(log)
        assert rds.xlen(Keys(cfg.redis_prefix).dead) == 0, show(log)
        stop(proc, log)
    finally:
        if proc.p.poll() is None:
            proc.kill()
        rds.close()
    text = log.read_text()
    assert text.count("PostgreSQL unavailable") == 1, show(log)  # once, not per retry
    assert "lock" in text and "recovered" in text


def test_restarts_do_not_dead_letter_valid_rows(
        make_config: Callable[..., Config], tmp_path: Path, env: dict[str, str]) -> None:
    """Entries delivered more than MAX_DELIVERIES times (a consumer killed again and again,
    say by a watchdog while PostgreSQL was blocked) are written; only a row PostgreSQL
    refuses goes to the dead letters, with PostgreSQL's reason."""
    cfg = make_config(CLAIM_IDLE="1", BACKOFF_MAX="2", MAX_DELIVERIES="2", LOG_LEVEL="INFO")
    migrate(cfg)
    rds = connect_redis(cfg)
    keys = Keys(cfg.redis_prefix)
    add(rds, cfg, [upsert(f"K{i:03d}", BASE) for i in range(50)]
        + [upsert("POISON", BASE, cliente="x" * 500)])
    rds.xgroup_create(keys.stream, GROUP, id="0", mkstream=True)
    ids = [i for i, _ in rds.xreadgroup(GROUP, "killed-0", {keys.stream: ">"})[0][1]]
    for kill in range(1, 6):  # five consumers took them and were killed
        time.sleep(0.05)
        rds.xclaim(keys.stream, GROUP, f"killed-{kill}", 0, ids)
    time.sleep(cfg.claim_idle + 0.3)
    log = tmp_path / "consumer.log"
    proc = Proc(write_env(tmp_path / "c.env", {**env, "CLAIM_IDLE": "1", "MAX_DELIVERIES": "2",
                                                "LOG_LEVEL": "INFO"}), log, once=True)
    assert proc.wait(60) == 0, show(log)
    dead = rds.xrange(keys.dead)
    assert [f[b"key"] for _, f in dead] == [b"POISON"], dead
    assert b"too long" in dead[0][1][b"error"]
    assert len(table_state(cfg)) == 50 and stream_len(rds, cfg) == 0, show(log)
    assert not rds.exists(keys.suspects)
    rds.close()


@pytest.fixture()
def down_servers(env: dict[str, str]) -> Iterator[tuple[PostgresServer, RedisServer]]:
    """A private PostgreSQL (migrated) and Redis, both stopped: a boot where they are late."""
    pg, rds = PostgresServer().start(), RedisServer().start()
    try:
        pg.psql("CREATE DATABASE late")
        migrate(config_from_mapping({**env, **server_env(pg, rds)}))
        pg.stop()
        rds.stop()
        yield pg, rds
    finally:
        pg.destroy()
        rds.destroy()


def server_env(pg: PostgresServer, rds: RedisServer) -> dict[str, str]:
    return {"PG_PORT": str(pg.port), "PG_PASSWORD": pg.password, "PG_DATABASE": "late",
            "REDIS_PORT": str(rds.port), "REDIS_PASSWORD": rds.password}


BACKOFF_MAX = 4.0
RECONNECT = 2.0


def wait_out_outage(notes: Notifications, proc: Proc, log: Path, what: str,
                    server_back: Callable[[], None]) -> None:
    """The daemon says it waits for `what`, stays up, and leaves that state within one
    backoff step of the server coming back."""
    assert notes.wait_for(lambda m: m.startswith("STATUS=") and what in m, 30), (
        notes.statuses(), show(log))
    time.sleep(2 * BACKOFF_MAX)  # long enough to reach the backoff cap
    assert proc.p.poll() is None, show(log)
    server_back()
    back = time.monotonic()
    left = notes.wait_for(lambda m: m.startswith("STATUS=") and what not in m, 30, after=back)
    # One backoff step, plus the time to connect on a loaded test machine.
    assert left is not None and left - back <= BACKOFF_MAX + RECONNECT, (
        left and left - back, notes.statuses(), show(log))
    print(f"{what} back: left the waiting state after {left - back:.1f} s")


def boot_through(notes: Notifications, proc: Proc, log: Path,
                 outages: list[tuple[str, Callable[[], None]]]) -> float:
    """READY soon after the start, although the servers are down; then each outage waited
    out in turn. Returns when READY came."""
    ready = notes.wait_for(lambda m: m == "READY=1", 30)
    assert ready is not None and ready - proc.started < 10, show(log)
    for what, server_back in outages:
        wait_out_outage(notes, proc, log, what, server_back)
    return ready


def watchdog_fed_then_stop(notes: Notifications, proc: Proc, log: Path, since: float) -> None:
    assert notes.watchdog_gaps(since, time.monotonic()) < WATCHDOG_SEC, show(log)
    stop(proc, log)


@pytest.mark.timeout(240)
def test_consumer_starts_while_postgresql_and_redis_are_down(
        env: dict[str, str], down_servers: tuple[PostgresServer, RedisServer],
        notifications: Notifications, tmp_path: Path) -> None:
    """READY at once, a STATUS naming what it waits for, retries as long as the outage lasts,
    recovery within one backoff step of each server returning, the watchdog fed throughout."""
    pg, rds_server = down_servers
    env = {**env, **server_env(pg, rds_server), "BACKOFF_MAX": str(BACKOFF_MAX),
           "LOG_LEVEL": "INFO"}
    cfg = config_from_mapping(env)
    log = tmp_path / "consumer.log"
    proc = notifications.start(write_env(tmp_path / "c.env", env), log)
    try:
        ready = boot_through(notifications, proc, log, [("PostgreSQL", pg.start_again),
                                                         ("Redis", rds_server.start)])
        rds = connect_redis(cfg)
        add(rds, cfg, [upsert(f"B{i:04d}", BASE) for i in range(300)])
        drain(rds, cfg, 30)
        assert len(table_state(cfg)) == 300, show(log)
        rds.close()
        watchdog_fed_then_stop(notifications, proc, log, ready)
    finally:
        if proc.p.poll() is None:
            proc.kill()


@pytest.mark.timeout(240)
def test_producer_starts_while_postgresql_and_redis_are_down(
        env: dict[str, str], standin: Any, down_servers: tuple[PostgresServer, RedisServer],
        notifications: Notifications, tmp_path: Path) -> None:
    """The producer, likewise: READY at once, STATUS naming the server, rows flow after."""
    pg, rds_server = down_servers
    standin.seed(100, seed=11)
    env = {**env, **standin.env(), **server_env(pg, rds_server), "SYNC_INTERVAL": "0.5",
           "BACKOFF_MAX": str(BACKOFF_MAX), "LOG_LEVEL": "INFO", "MSSQL_LOGIN_TIMEOUT": "3"}
    cfg = config_from_mapping(env)
    log = tmp_path / "producer.log"
    proc = notifications.start(write_env(tmp_path / "p.env", env), log, "facusync.producer")
    try:
        # The producer asks Redis first (its watermark), PostgreSQL only when Redis has none.
        ready = boot_through(notifications, proc, log, [("Redis", rds_server.start),
                                                         ("PostgreSQL", pg.start_again)])
        rds = connect_redis(cfg)
        deadline = time.monotonic() + 30
        while stream_len(rds, cfg) < 100 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert stream_len(rds, cfg) == 100, show(log)
        rds.close()
        watchdog_fed_then_stop(notifications, proc, log, ready)
    finally:
        if proc.p.poll() is None:
            proc.kill()
