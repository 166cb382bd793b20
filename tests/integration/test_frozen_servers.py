"""Servers that freeze instead of stopping: a VM paused by its hypervisor, a host swapped out
so far it answers nothing, a firewall that starts dropping an established connection's packets.
The TCP connection stays open and no answer comes; simulated with SIGSTOP/SIGCONT of the real
server processes (the kernel still accepts connections and acknowledges data, so TCP keepalives
and TCP_USER_TIMEOUT never fire and PostgreSQL's own statement_timeout is frozen too).

What must hold: a daemon notices within a bounded time, says which server does not answer, and
recovers by itself after the thaw with no row lost or duplicated; an operator command finishes
within a bounded time naming the server."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis

from devstack.servers import PostgresServer, RedisServer, signal_processes
from facusync.config import Config, config_from_mapping
from facusync.consumer import Consumer
from facusync.errors import QueueError
from facusync.redisconn import Keys, connect_redis
from facusync.service import Service
from tests.integration.test_consumer import pending, stream_len, table_state
from tests.integration.test_consumer_process import Proc, show, write_env
from tests.integration.test_consumer_support import BASE, add, migrate, upsert
from tests.integration.test_daemon_outages import (  # noqa: F401 (a fixture)
    WATCHDOG_SEC,
    Notifications,
    drain,
    notifications,
    stop,
)

STATEMENT_TIMEOUT = 2  # PG_STATEMENT_TIMEOUT of the daemons here


def sigstop(pids: list[int]) -> list[int]:
    """SIGSTOP these processes (a client or the stand-in); returns those stopped."""
    return signal_processes(pids, signal.SIGSTOP)


class Frozen:
    """Processes just SIGSTOPped (`pids`), SIGCONTed on thaw() (at the latest on leaving)."""

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids
        self.since = time.monotonic()

    def thaw(self) -> None:
        signal_processes(self.pids, signal.SIGCONT)
        self.pids = []

    def __enter__(self) -> Frozen:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.thaw()


@pytest.fixture()
def private_pg(env: dict[str, str]) -> Iterator[tuple[dict[str, str], PostgresServer]]:
    """The test environment on a PostgreSQL of its own (migrated), which the test may freeze
    without disturbing the session's shared server."""
    pg = PostgresServer().start()
    try:
        pg.psql("CREATE DATABASE frozen")
        env = {**env, "PG_PORT": str(pg.port), "PG_PASSWORD": pg.password,
               "PG_DATABASE": "frozen"}
        migrate(config_from_mapping(env))
        yield env, pg
    finally:
        pg.destroy()


def log_lines(log: Path) -> list[dict[str, object]]:
    lines = []
    for raw in log.read_text().splitlines():
        try:
            lines.append(json.loads(raw))
        except ValueError:
            continue
    return lines


def wait_for_log(log: Path, needle: str, timeout: float) -> float | None:
    """Seconds until a log line containing `needle` appeared (None: not within `timeout`)."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if needle in log.read_text():
            return time.monotonic() - start
        time.sleep(0.2)
    return None


@dataclass
class Running:
    """A consumer process on `cfg`, with 200 rows already written through it."""

    cfg: Config
    rds: redis.Redis
    proc: Proc
    log: Path


@contextlib.contextmanager
def running_consumer(env: dict[str, str], notes: Notifications, tmp_path: Path) -> Iterator[Running]:
    cfg = config_from_mapping(env)
    rds = connect_redis(cfg)
    log = tmp_path / "consumer.log"
    proc = notes.start(write_env(tmp_path / "c.env", env), log)
    try:
        assert notes.wait_for(lambda m: m == "READY=1", 30), show(log)
        add(rds, cfg, [upsert(f"A{i:04d}", BASE) for i in range(200)])
        drain(rds, cfg, 30)
        assert len(table_state(cfg)) == 200, show(log)
        yield Running(cfg, rds, proc, log)
    finally:
        if proc.p.poll() is None:
            proc.kill()
        rds.close()


def all_written_once(run: Running, rows: int) -> None:
    """After the thaw: every row in PostgreSQL, nothing queued, pending or dead; a clean stop."""
    thawed = time.monotonic()
    drain(run.rds, run.cfg, 30)
    print(f"drained {time.monotonic() - thawed:.1f} s after the thaw")
    assert (stream_len(run.rds, run.cfg), pending(run.rds, run.cfg)) == (0, 0), show(run.log)
    assert len(table_state(run.cfg)) == rows, show(run.log)
    assert run.rds.xlen(Keys(run.cfg.redis_prefix).dead) == 0, show(run.log)
    stop(run.proc, run.log)


@pytest.mark.timeout(150)
def test_consumer_notices_a_frozen_postgresql_and_recovers_after_the_thaw(
        private_pg: tuple[dict[str, str], PostgresServer],
        notifications: Notifications, tmp_path: Path) -> None:  # noqa: F811
    """PostgreSQL frozen while the consumer writes a batch: within PG_STATEMENT_TIMEOUT and a
    margin the consumer logs that PostgreSQL does not answer (not a silent wait until the
    watchdog's grace runs out), keeps the watchdog fed, and after the thaw writes every row
    once, none dead-lettered."""
    env = {**private_pg[0], "CLAIM_IDLE": "1", "BACKOFF_MAX": "2",
           "PG_STATEMENT_TIMEOUT": str(STATEMENT_TIMEOUT), "LOG_LEVEL": "INFO"}
    with running_consumer(env, notifications, tmp_path) as run:
        with Frozen(private_pg[1].freeze()) as frozen:
            add(run.rds, run.cfg, [upsert(f"F{i:04d}", BASE) for i in range(300)])
            noticed = wait_for_log(run.log, "PostgreSQL unavailable", 20)
            print(f"consumer noticed the frozen PostgreSQL after {noticed} s")
            while time.monotonic() - frozen.since < 20:
                time.sleep(0.5)
            frozen_gap = notifications.watchdog_gaps(frozen.since, time.monotonic())
            assert run.proc.p.poll() is None, show(run.log)
        assert noticed is not None and noticed < STATEMENT_TIMEOUT + 10, show(run.log)
        assert frozen_gap < WATCHDOG_SEC, (frozen_gap, show(run.log))
        all_written_once(run, 500)
    said = [line for line in log_lines(run.log)
            if "PostgreSQL unavailable" in str(line.get("message"))]
    assert said and "answer" in str(said[0]["message"]), said
    assert run.cfg.pg_password.reveal() not in run.log.read_text()


@pytest.fixture()
def private_redis(env: dict[str, str]) -> Iterator[tuple[dict[str, str], RedisServer]]:
    """The test environment on a Redis of its own, which the test may freeze."""
    server = RedisServer().start()
    try:
        yield {**env, "REDIS_PORT": str(server.port), "REDIS_PASSWORD": server.password}, server
    finally:
        server.destroy()


@pytest.mark.timeout(150)
def test_consumer_waits_out_a_frozen_redis_longer_than_its_reply_timeout(
        private_redis: tuple[dict[str, str], RedisServer],
        notifications: Notifications, tmp_path: Path) -> None:  # noqa: F811
    """Redis frozen 40 s (longer than its 30 s reply timeout) with rows queued that the
    consumer has not read yet: the consumer says Redis does not answer, keeps the watchdog
    fed, and after the thaw writes the rows, without a restart; nothing dead or left pending.
    (Whether Redis runs the timed-out read on thawing is a race here; the next test forces it.)"""
    env = {**private_redis[0], "CLAIM_IDLE": "1", "BACKOFF_MAX": "2", "LOG_LEVEL": "INFO"}
    migrate(config_from_mapping(env))
    with running_consumer(env, notifications, tmp_path) as run:
        # The rows are queued while the consumer itself is stopped, so that its next read is
        # sent only once Redis is frozen.
        with Frozen(sigstop([run.proc.p.pid])) as consumer_stopped:
            time.sleep(1.5)  # its XREADGROUP BLOCK in progress ends (empty)
            add(run.rds, run.cfg, [upsert(f"F{i:04d}", BASE) for i in range(300)])
            with Frozen(private_redis[1].freeze()) as frozen:
                consumer_stopped.thaw()
                resumed = time.monotonic()
                noticed = wait_for_log(run.log, "Redis unavailable", 38)
                print(f"consumer noticed the frozen Redis after {noticed} s")
                while time.monotonic() - frozen.since < 40:
                    time.sleep(0.5)
                frozen_gap = notifications.watchdog_gaps(resumed, time.monotonic())
                assert run.proc.p.poll() is None, show(run.log)
        assert frozen_gap < WATCHDOG_SEC, (frozen_gap, show(run.log))
        assert noticed is not None, show(run.log)
        all_written_once(run, 500)
    assert private_redis[1].password not in run.log.read_text()


@pytest.mark.timeout(120)
def test_rows_delivered_to_a_read_that_timed_out_on_a_frozen_redis_are_claimed_back(
        private_redis: tuple[dict[str, str], RedisServer]) -> None:
    """A consumer's XREADGROUP sent to a frozen Redis times out (30 s), but Redis runs it on
    thawing and delivers the queued rows to our name, in a reply nobody reads. No other member
    claims entries of a living consumer, so the same consumer must take them back itself
    (after CLAIM_IDLE), not leave them pending until it is restarted."""
    cfg = config_from_mapping({**private_redis[0], "CLAIM_IDLE": "1"})
    migrate(cfg)
    rds = connect_redis(cfg)
    consumer = Consumer(cfg, Service("test"), name="frozen-reader")
    consumer.member.ensure_group()
    add(rds, cfg, [upsert(f"F{i:04d}", BASE) for i in range(300)])
    with Frozen(private_redis[1].freeze()):
        started = time.monotonic()
        with pytest.raises(QueueError, match="timed out"):
            consumer.member.read_batch()
        print(f"the read gave up after {time.monotonic() - started:.1f} s")
    time.sleep(cfg.claim_idle + 0.5)
    orphaned = pending(rds, cfg)
    consumer.run(once=True)
    assert orphaned == 300  # what Redis delivered to the lost reply
    assert (stream_len(rds, cfg), pending(rds, cfg)) == (0, 0)
    assert len(table_state(cfg)) == 300
    rds.close()


def run_at_once(*commands: tuple[dict[str, str], list[str]]) -> list[tuple[str, int, float]]:
    """`facusync` commands started together; each one's output, exit code and duration."""
    started = time.monotonic()
    procs = [subprocess.Popen([sys.executable, "-m", "facusync.cli", *args],
                              env={**os.environ, **env}, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for env, args in commands]
    results = []
    for proc in procs:
        out, _ = proc.communicate(timeout=90)
        results.append((out, proc.returncode, time.monotonic() - started))
    return results


REDIS_REPLY_TIMEOUT = 30.0  # facusync.redisconn: a reply is waited for this long


@pytest.mark.timeout(120)
def test_status_and_check_name_a_frozen_redis_within_its_reply_timeout(
        private_redis: tuple[dict[str, str], RedisServer]) -> None:
    """An operator runs `facusync status` and `facusync check` while Redis is frozen: each
    ends within the reply timeout plus a margin, fails, and says that Redis took the request
    but does not answer (not that REDIS_HOST/REDIS_PORT may be wrong: they are right)."""
    env = private_redis[0]
    migrate(config_from_mapping(env))
    with Frozen(private_redis[1].freeze()):
        results = run_at_once((env, ["status"]), ({**env, "MSSQL_LOGIN_TIMEOUT": "2"}, ["check"]))
    print("frozen Redis: status took {:.1f} s, check {:.1f} s".format(*(r[2] for r in results)))
    for text, code, took in results:
        assert code != 0 and took < REDIS_REPLY_TIMEOUT + 10, (took, text)
        assert "Redis" in text and "does not answer" in text, text
        assert private_redis[1].password not in text


def in_sync(env: dict[str, str], timeout: float) -> tuple[bool, str, float]:
    """`facusync verify` until it says IN SYNC (exit 0); its last output and the time taken."""
    started = time.monotonic()
    while True:
        (text, code, _), = run_at_once((env, ["verify"]))
        if code == 0 or time.monotonic() - started > timeout:
            return code == 0, text, time.monotonic() - started
        time.sleep(1.0)


@pytest.mark.timeout(240)
def test_pipeline_in_sync_after_each_server_froze_while_rows_changed(
        private_pg: tuple[dict[str, str], PostgresServer],
        private_redis: tuple[dict[str, str], RedisServer], standin: Any, tmp_path: Path) -> None:
    """Producer and consumer as processes; Redis frozen 32 s, then PostgreSQL 12 s, then the
    SQL Server stand-in 12 s (longer than MSSQL_QUERY_TIMEOUT), while the view changes
    (inserts and bumped updates; the stand-in's own changes are made as it thaws). After each
    thaw the view is IN SYNC in PostgreSQL by itself (no reconcile), nothing dead, both
    daemons still run, and the producer said the frozen SQL Server did not answer."""
    standin.seed(300, seed=5)
    env = {**private_pg[0], **standin.env(), "SYNC_INTERVAL": "0.5", "BACKOFF_MAX": "2",
           "CLAIM_IDLE": "2", "PG_STATEMENT_TIMEOUT": str(STATEMENT_TIMEOUT),
           "MSSQL_LOGIN_TIMEOUT": "3", "MSSQL_QUERY_TIMEOUT": "10", "LOG_LEVEL": "INFO",
           "REDIS_PORT": private_redis[0]["REDIS_PORT"],
           "REDIS_PASSWORD": private_redis[0]["REDIS_PASSWORD"]}
    env_file = write_env(tmp_path / "p.env", env)
    paths = [tmp_path / "producer.log", tmp_path / "consumer.log"]
    daemons = [Proc(env_file, paths[0], module="facusync.producer"), Proc(env_file, paths[1])]

    def logs() -> str:
        return "\n".join(show(path) for path in paths)

    keys = [row["CONDUCE"] for row in standin.rows()]
    try:
        synced, text, took = in_sync(env, 60)
        assert synced, text + logs()
        for n, (freeze, seconds) in enumerate(((private_redis[1].freeze, 32),
                                               (private_pg[1].freeze, 12),
                                               (lambda: sigstop([standin.process.pid]), 12))):
            with Frozen(freeze()) as frozen:
                for i in range(5):  # changes made while the server is frozen
                    standin.insert([{"CONDUCE": f"FROZEN-{n}-{i}", "CLIENTE": f"new {i}"}])
                    standin.update(keys[10 * n + i], CLIENTE=f"changed while frozen {n}")
                    time.sleep(seconds / 6)
                while time.monotonic() - frozen.since < seconds:
                    time.sleep(0.5)
            synced, text, took = in_sync(env, 60)
            print(f"IN SYNC {took:.1f} s after a {seconds} s freeze")
            assert synced, text + logs()
            assert all(d.p.poll() is None for d in daemons), logs()
        cfg = config_from_mapping(env)
        rds = connect_redis(cfg)
        assert rds.xlen(Keys(cfg.redis_prefix).dead) == 0
        assert "SQL Server unavailable: timed out" in show(paths[0]), logs()
        rds.close()
    finally:
        for daemon in daemons:
            if daemon.p.poll() is None:
                daemon.kill()
    assert private_redis[1].password not in logs() and private_pg[1].password not in logs()
