"""The producer under what real sites do to it: Redis losing its data mid-cycle, a slow SQL
Server, rows dated in the future, writers whose clock lags SQL Server's.

Real PostgreSQL, Redis and the stand-in over pymssql; every test here failed on the code
before issue 16.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import psycopg2
import pytest

from facusync import producer as producer_module
from facusync.commands.status import render
from facusync.config import Config, config_from_mapping
from facusync.consumer import Consumer
from facusync.operations import reconcile as reconcile_module
from facusync.operations.reconcile import LockBusy, Reconciler
from facusync.operations.status import collect
from facusync.operations.verify import compare
from facusync.producer import Producer
from facusync.redisconn import Keys, connect_redis
from facusync.service import Service
from facusync.stream import read_watermark
from tests.integration.test_producer import entries
from tests.integration.test_producer import run_once as produce
from tests.steps import pg

pytestmark = pytest.mark.timeout(240)


def consume(cfg: Config) -> None:
    Consumer(cfg, Service("test-consumer")).run(once=True)


def pg_keys(cfg: Config, where: str = "true") -> set[str]:
    conn = psycopg2.connect(host=cfg.pg_host, port=cfg.pg_port, dbname=cfg.pg_database,
                            user=cfg.pg_user, password=cfg.pg_password.reveal())
    try:
        with conn, conn.cursor() as cur:
            cur.execute(f"SELECT conduce FROM {cfg.pg_table_vista} "
                        f"WHERE NOT eliminado_en_origen AND {where}")
            return {r[0] for r in cur.fetchall()}
    finally:
        conn.close()


def stream_length(cfg: Config) -> int:
    client = connect_redis(cfg)
    try:
        return int(client.xlen(Keys(cfg.redis_prefix).stream))
    finally:
        client.close()


def wait_for(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


class ProducerThread:
    """The producer daemon's own loop (run_forever) in a thread, stopped like SIGTERM would."""

    def __init__(self, cfg: Config) -> None:
        self.service = Service("test-producer")
        self.producer = Producer(cfg, self.service)
        self.producer.discover()  # logged in before a test sets a fault (a hang stalls logins)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            self.producer.run_forever()
        except BaseException as exc:  # reported when the test leaves the with block
            self.error = exc

    def __enter__(self) -> ProducerThread:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.service.stopping.set()
        self.thread.join(60)
        assert not self.thread.is_alive(), "the producer did not stop"
        assert self.error is None, f"the producer loop died: {self.error!r}"


@pytest.fixture()
def flushable(pipeline_env: dict[str, str]) -> Iterator[Any]:
    """A Redis client on the test server, allowed to FLUSHALL (this session's server only)."""
    cfg = config_from_mapping(pipeline_env)
    client = connect_redis(cfg)
    yield client
    client.close()


def test_redis_flush_between_two_chunks_loses_no_row(pipeline_env: dict[str, str], standin: Any,
                                                     flushable: Any) -> None:
    """Situation 1: Redis loses everything between two chunks of one cycle; polling alone
    (no reconcile) must still bring every row to PostgreSQL."""
    base = datetime.now().replace(microsecond=0) - timedelta(days=2)
    standin.seed(600, seed=21, start=base - timedelta(days=30), end=base)
    cfg = config_from_mapping(dict(pipeline_env, CHUNK_SIZE="50", FETCH_SIZE="50"))
    # The result stalls after 200 rows (the client gets the whole packets before it): three
    # chunks or more are in the stream when Redis loses them.
    producer = ProducerThread(cfg)
    standin.set_fault(hang=True, drop_after_rows=200)
    with producer:
        wait_for(lambda: stream_length(cfg) >= 150, 4, "three chunks in the stream")
        flushable.flushall()  # a restart without persistence looks the same
        standin.clear_faults()
        wait_for(lambda: stream_length(cfg) >= 400, 30, "the producer to go on after the loss")
        time.sleep(2 * cfg.sync_interval + 1)
    for _ in range(3):  # polling alone: producer and consumer cycles, no reconcile
        consume(cfg)
        produce(cfg)
    consume(cfg)
    missing = {r["CONDUCE"] for r in standin.rows()} - pg_keys(cfg)
    assert not missing, f"{len(missing)} rows never reached PostgreSQL, e.g. {sorted(missing)[:3]}"


@pytest.mark.timeout(300)
def test_redis_flushed_at_random_moments_under_load_loses_no_row(
        pipeline_env: dict[str, str], standin: Any, flushable: Any) -> None:
    """Situation 1, "at any point": producer and consumer daemons' loops run while changes
    keep coming and Redis loses everything four times at random moments; polling alone
    brings every row to PostgreSQL."""
    seed = int(os.environ.get("FACUSYNC_TEST_SEED", random.randrange(1 << 30)))
    rnd = random.Random(seed)
    standin.seed(3000, seed=29, start=datetime.now() - timedelta(days=30),
                 end=datetime.now() - timedelta(minutes=10))
    cfg = config_from_mapping(dict(pipeline_env, CHUNK_SIZE="100", FETCH_SIZE="100",
                                   SYNC_INTERVAL="0.2"))
    consumer_service = Service("test-consumer")
    consumer = threading.Thread(target=Consumer(cfg, consumer_service).run, daemon=True)
    consumer.start()
    try:
        with ProducerThread(cfg):
            for flush in range(4):
                time.sleep(rnd.uniform(0.05, 1.5))
                standin.insert([{"CONDUCE": f"LIVE-{flush}-{i}"} for i in range(rnd.randrange(1, 20))])
                flushable.flushall()
            time.sleep(3)
    finally:
        consumer_service.stopping.set()
        consumer.join(60)
    for _ in range(3):  # polling alone: producer and consumer cycles, no reconcile
        produce(cfg)
        consume(cfg)
    missing = {r["CONDUCE"] for r in standin.rows()} - pg_keys(cfg)
    assert not missing, f"seed {seed}: {len(missing)} rows never reached PostgreSQL, " \
                        f"e.g. {sorted(missing)[:3]}"


def test_a_source_slower_than_the_lock_ttl_still_completes(pipeline_env: dict[str, str],
                                                           standin: Any,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Situation 4: every answer of SQL Server takes longer than the source lock's TTL (here
    a 2 s TTL and 3 s per batch, the shape of 15 s against a first load over a slow link).
    The lock is kept alive while the query runs, so the cycle completes instead of ending in
    LockLost forever."""
    monkeypatch.setattr(producer_module, "LOCK_TTL", 2.0)
    standin.seed(300, seed=22)
    cfg = config_from_mapping(dict(pipeline_env, MSSQL_QUERY_TIMEOUT="20", CHUNK_SIZE="100"))
    producer = Producer(cfg, Service("test-producer"))
    try:
        producer.discover()
        standin.set_fault(delay=3.0)
        stats = producer.run_once()
    finally:
        producer.source.close()
    assert stats.complete and stats.queued == 300
    assert stream_length(cfg) == 300


def test_reconcile_on_a_source_slower_than_its_lock_ttl(pipeline_env: dict[str, str],
                                                        standin: Any,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Situation 4, reconcile: its sorted read and its re-check of delete candidates each take
    longer than the lock's TTL (2 s here, 30 s in production); the run completes, repairing
    the change and the delete, because the lock stays alive while it waits."""
    standin.seed(200, seed=23)
    cfg = config_from_mapping(dict(pipeline_env, MSSQL_QUERY_TIMEOUT="20",
                                   MSSQL_LOGIN_TIMEOUT="20"))
    produce(cfg)
    consume(cfg)
    victim, changed = (r["CONDUCE"] for r in standin.rows()[:2])
    standin.delete(victim)
    standin.update(changed, bump=False, cliente="Cambio sin versión")
    monkeypatch.setattr(reconcile_module, "LOCK_TTL", 2.0, raising=False)
    standin.set_fault(delay=3.0)
    result = Reconciler(cfg, lock_wait=10).run()
    standin.clear_faults()
    assert (result.upserts, result.tombstones) == (1, 1)
    consume(cfg)
    assert victim not in pg_keys(cfg) and changed in pg_keys(cfg)


def source_clock(standin: Any) -> datetime:
    import pymssql

    conn = pymssql.connect(**standin.connect_kwargs())
    try:
        cur = conn.cursor()
        cur.execute("SELECT GETDATE()")
        return cur.fetchone()[0]  # type: ignore[no-any-return]
    finally:
        conn.close()


def test_rows_dated_in_the_future_do_not_stop_real_changes(pipeline_env: dict[str, str],
                                                            standin: Any,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    """Situation 2: a PC a day ahead and a 9999-12-31 sentinel. Both rows are synced once and
    reported; the watermark stays at SQL Server's clock, so later changes keep flowing."""
    standin.seed(100, seed=24)
    cfg = config_from_mapping(pipeline_env)
    producer = Producer(cfg, Service("test-producer"))
    try:
        producer.run_once()
        standin.insert_late({"CONDUCE": "FUT-DAY"}, datetime.now() + timedelta(days=1))
        standin.insert_late({"CONDUCE": "FUT-MAX"}, datetime(9999, 12, 31, 23, 59, 59, 997000))
        assert producer.run_once().queued == 2
        clock = source_clock(standin)
        client = connect_redis(cfg)
        try:
            watermark = read_watermark(client, Keys(cfg.redis_prefix))
        finally:
            client.close()
        assert watermark is not None and watermark <= clock, "the watermark passed GETDATE()"
        for i in range(3):  # real changes keep flowing, the future rows are not sent again
            standin.insert([{"CONDUCE": f"NEW-{i}"}])
            stats = producer.run_once()
            assert stats.queued == 1 and stats.future == 2
    finally:
        producer.source.close()
    sent = [e for e in entries(cfg) if e["key"].startswith(("FUT-", "NEW-"))]
    assert sorted(e["key"] for e in sent) == ["FUT-DAY", "FUT-MAX", "NEW-0", "NEW-1", "NEW-2"]
    warned = [r for r in caplog.records if "ahead of SQL Server's clock" in r.getMessage()]
    assert len(warned) == 2, "each future row is logged once"
    data, health = collect(cfg)
    assert any("2 row(s) dated ahead of SQL Server's clock" in w for w in health.warnings)
    assert "warning: 2 row(s) dated ahead" in render(data, time.time())
    consume(cfg)
    assert {"FUT-DAY", "FUT-MAX", "NEW-0", "NEW-1", "NEW-2"} <= pg_keys(cfg)


def test_a_sentinel_row_west_of_utc_does_not_stop_the_consumer_or_status(
        request: pytest.FixtureRequest, env: dict[str, str], standin: Any) -> None:
    """A 9999-12-31 23:59:59 sentinel in a zone west of UTC is 10000-01-01 in UTC: PostgreSQL
    stores it, Python cannot read it back. The chaos run in CI (its machine four hours west of
    UTC) found a consumer that could never start again once such a row was committed. Every
    reader must keep working, and the lag must stay the real one."""
    env["SOURCE_TIMEZONE"] = "America/Santo_Domingo"  # UTC-4, no daylight saving
    cfg = config_from_mapping(request.getfixturevalue("pipeline_env"))
    standin.seed(20, seed=26)
    producer = Producer(cfg, Service("test-producer"))
    try:
        producer.run_once()
        standin.insert_late({"CONDUCE": "FUT-MAX"}, datetime(9999, 12, 31, 23, 59, 59))
        assert producer.run_once().queued == 1
        consume(cfg)
        consumer = Consumer(cfg, Service("test-consumer"))  # a restart reads newest_version back
        assert consumer.run(once=True) == 0
        stats_newest = consumer.stats.newest
        assert stats_newest is None or stats_newest <= time.time() + 60, "the lag is pinned at zero"
        standin.insert([{"CONDUCE": "NEW-AFTER"}])
        producer.run_once()
        consume(cfg)
    finally:
        producer.source.close()
    assert {"FUT-MAX", "NEW-AFTER"} <= pg_keys(cfg)
    data, _ = collect(cfg)
    render(data, time.time())
    assert pg(cfg, "SELECT newest_version <= now() + interval '1 minute' FROM sync_control") \
        == [(True,)], \
        "newest_version was left in the future"
    assert compare(cfg).differences == 0


def quiet_then_a_late_row(producer: Producer, standin: Any, key: str) -> None:
    """Quiet cycles, then a row committed now whose version is 30 s below the newest one (a
    transaction the writer began before its newest change): it must be polled."""
    newest = producer.run_once().watermark
    for _ in range(3):
        assert producer.run_once().queued == 0  # quiet
    standin.insert_late({"CONDUCE": key}, newest - timedelta(seconds=30))
    assert producer.run_once().queued == 1, f"the late row {key} was not polled"


def test_a_writer_an_hour_behind_sql_server_loses_no_late_row(pipeline_env: dict[str, str],
                                                               standin: Any) -> None:
    """Situation 3: an application server stamps ULTIMA_MODIFICACION with its own clock, an
    hour behind SQL Server's (SYNC_OVERLAP is 60 s). A row it commits 30 s late, with a version
    within the overlap of the newest one seen, must still be polled while the view is quiet;
    `facusync status` warns that versions arrive later than the overlap allows."""
    standin.seed(200, seed=25, start=datetime.now() - timedelta(days=30),
                 end=datetime.now() - timedelta(days=2))
    cfg = config_from_mapping(pipeline_env)

    def writer_clock() -> datetime:
        return datetime.now() - timedelta(hours=1)

    producer = Producer(cfg, Service("test-producer"))
    try:
        producer.run_once()
        for i in range(2):  # the writer's ordinary changes: committed at once, in its clock
            standin.insert_late({"CONDUCE": f"LAG-{i}"}, writer_clock())
            assert producer.run_once().queued == 1
        quiet_then_a_late_row(producer, standin, "LAG-LATE")
    finally:
        producer.source.close()
    _, health = collect(cfg)
    assert any("more than SYNC_OVERLAP=60 s allows" in w for w in health.warnings), health
    consume(cfg)
    assert {"LAG-0", "LAG-1", "LAG-LATE"} <= pg_keys(cfg)


def test_a_late_row_from_a_lagging_writer_before_any_of_its_changes_was_seen(
        pipeline_env: dict[str, str], standin: Any) -> None:
    """Situation 3 from the start: the view's rows were all stamped by a writer an hour behind
    SQL Server before the producer started, and the first change it sees from that writer
    is a late one (within the overlap of the newest version)."""
    behind = datetime.now() - timedelta(hours=1)
    standin.seed(200, seed=31, start=behind - timedelta(days=2), end=behind)
    cfg = config_from_mapping(pipeline_env)
    producer = Producer(cfg, Service("test-producer"))
    try:
        quiet_then_a_late_row(producer, standin, "LAG-FIRST")
    finally:
        producer.source.close()


def test_a_row_dated_in_the_future_leaves_a_lagging_writers_window_alone(
        pipeline_env: dict[str, str], standin: Any) -> None:
    """Situations 2 and 3 together (seed 11 of `make test-chaos`): a row dated a day ahead
    stays in the view while a writer an hour behind SQL Server keeps working. The watermark
    follows the newest real version, not SQL Server's clock, so a late row within the overlap
    of the writer's newest change is still polled."""
    behind = datetime.now() - timedelta(hours=1)
    standin.seed(200, seed=32, start=behind - timedelta(days=2), end=behind)
    cfg = config_from_mapping(pipeline_env)
    producer = Producer(cfg, Service("test-producer"))
    try:
        producer.run_once()
        standin.insert_late({"CONDUCE": "FUT-DAY"}, datetime.now() + timedelta(days=1))
        standin.insert_late({"CONDUCE": "LAG-0"}, datetime.now() - timedelta(hours=1))
        assert producer.run_once().queued == 2
        for _ in range(3):
            assert producer.run_once().queued == 0  # quiet
        standin.insert_late({"CONDUCE": "LAG-LATE"},
                            datetime.now() - timedelta(hours=1, seconds=30))
        assert producer.run_once().queued == 1, "the late row LAG-LATE was not polled"
    finally:
        producer.source.close()


def resync(env: dict[str, str], *args: str) -> None:
    out = subprocess.run([sys.executable, "-m", "facusync.cli", "resync", *args, "--yes"],
                         env={**os.environ, **env}, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr


def test_resync_since_rereads_from_there_minus_the_overlap(pipeline_env: dict[str, str],
                                                          standin: Any) -> None:
    """`resync --since X` promises a re-read from X minus SYNC_OVERLAP, also while the running
    producer has narrowed its window on a quiet view."""
    standin.seed(200, seed=26, start=datetime.now() - timedelta(days=30),
                 end=datetime.now() - timedelta(days=2))
    env = dict(pipeline_env, SYNC_OVERLAP="60")
    cfg = config_from_mapping(env)
    target = standin.rows()[50]
    since = target["ULTIMA_MODIFICACION"] + timedelta(seconds=30)
    producer = Producer(cfg, Service("test-producer"))
    try:
        producer.run_once()
        producer.run_once()
        standin.update(target["CONDUCE"], bump=False, cliente="Cambio sin versión")
        resync(env, "--since", since.isoformat(sep=" "))
        stats = producer.run_once()
    finally:
        producer.source.close()
    assert stats.since == since - timedelta(seconds=60)
    assert stats.queued == 1
    sent = [e for e in entries(cfg) if e["key"] == target["CONDUCE"]]
    assert len(sent) == 2 and "Cambio sin versión" in sent[-1]["row"]


def test_resync_during_the_first_load_then_redis_loss_loses_no_row(
        pipeline_env: dict[str, str], standin: Any, flushable: Any) -> None:
    """`resync --since X` while the first load is still queued (nothing committed yet), then
    Redis loses its data: sync_control must not claim that everything up to X is in
    PostgreSQL (LEAST would turn its empty watermark into X), or the producer restarts from X
    and the older rows still queued are lost until a reconcile."""
    base = datetime.now().replace(microsecond=0) - timedelta(days=2)
    standin.seed(300, seed=28, start=base - timedelta(days=30), end=base)
    cfg = config_from_mapping(pipeline_env)
    produce(cfg)  # the first load, queued; no consumer has run
    resync(pipeline_env, "--since", (base - timedelta(days=5)).isoformat(sep=" "))
    assert pg(cfg, "SELECT watermark FROM sync_control") == [(None,)]
    flushable.flushall()
    for _ in range(2):  # polling alone, no reconcile
        produce(cfg)
        consume(cfg)
    missing = {r["CONDUCE"] for r in standin.rows()} - pg_keys(cfg)
    assert not missing, f"{len(missing)} rows never reached PostgreSQL, e.g. {sorted(missing)[:3]}"


def test_resync_all_reaches_rows_dated_before_1900(pipeline_env: dict[str, str],
                                                    standin: Any) -> None:
    """`resync --all` re-reads every row, also those dated before 1900 (down to 1753-01-01,
    SQL Server's first datetime)."""
    standin.seed(50, seed=27)
    old = {"OLD-1850": datetime(1850, 6, 1, 12), "OLD-1753": datetime(1753, 1, 1)}
    for key, version in old.items():
        standin.insert_late({"CONDUCE": key}, version)
    cfg = config_from_mapping(pipeline_env)
    produce(cfg)
    consume(cfg)
    for key in old:
        standin.update(key, bump=False, cliente="Cambio sin versión")
    resync(pipeline_env, "--all")
    produce(cfg)
    changed = {e["key"] for e in entries(cfg) if "Cambio sin versión" in e["row"]}
    assert changed == set(old)
    consume(cfg)
    assert pg_keys(cfg, "cliente = 'Cambio sin versión'") == set(old)


def test_the_repeated_hour_of_a_dst_change_loses_no_row(pipeline_env: dict[str, str],
                                                         standin: Any) -> None:
    """SOURCE_TIMEZONE with daylight saving: at the autumn change SQL Server's clock goes back
    an hour and rows written in the repeated hour get versions below the watermark."""
    standin.seed(100, seed=28, start=datetime.now() - timedelta(days=30),
                 end=datetime.now() - timedelta(days=2))
    cfg = config_from_mapping(dict(pipeline_env, SOURCE_TIMEZONE="Europe/Madrid"))
    producer = Producer(cfg, Service("test-producer"))
    try:
        producer.run_once()
        for i in range(3):  # the first pass through the hour
            standin.insert([{"CONDUCE": f"FIRST-{i}"}])
            assert producer.run_once().queued == 1
        standin.set_fault(clock_offset=-3600)  # 03:00 becomes 02:00 again
        for i in range(3):  # the second pass: versions an hour below the watermark
            standin.insert_late({"CONDUCE": f"AGAIN-{i}"}, source_clock(standin))
            assert producer.run_once().queued == 1, f"AGAIN-{i} was not polled"
        for _ in range(3):
            assert producer.run_once().queued == 0
    finally:
        producer.source.close()
    consume(cfg)
    written = {f"FIRST-{i}" for i in range(3)} | {f"AGAIN-{i}" for i in range(3)}
    assert written <= pg_keys(cfg)


def test_reconcile_writes_nothing_once_its_lock_is_gone(pipeline_env: dict[str, str],
                                                       standin: Any, flushable: Any) -> None:
    """Reconcile checks the lock before every append: when Redis loses its data (and the lock
    with it) during reconcile's sorted read, nothing is appended and it says so (exit 75)."""
    standin.seed(100, seed=30)
    cfg = config_from_mapping(dict(pipeline_env, MSSQL_QUERY_TIMEOUT="20",
                                   MSSQL_LOGIN_TIMEOUT="20"))
    produce(cfg)
    consume(cfg)
    standin.update(standin.rows()[0]["CONDUCE"], bump=False, cliente="Cambio sin versión")
    lock_key = Keys(cfg.redis_prefix).source_lock
    outcome: list[BaseException | None] = []

    def reconcile() -> None:
        try:
            Reconciler(cfg, lock_wait=10).run()
            outcome.append(None)
        except BaseException as exc:  # reported below
            outcome.append(exc)

    thread = threading.Thread(target=reconcile, daemon=True)
    standin.set_fault(delay=2.0)  # its login, column discovery and sorted read are slow
    thread.start()
    wait_for(lambda: flushable.exists(lock_key), 30, "reconcile to take the lock")
    flushable.flushall()
    thread.join(60)
    standin.clear_faults()
    assert len(outcome) == 1 and isinstance(outcome[0], LockBusy), outcome
    assert outcome[0].exit_code == 75 and "run it again" in str(outcome[0])
    assert stream_length(cfg) == 0, "reconcile appended after losing its lock"
