"""Producer against the SQL Server stand-in, a real Redis and a real PostgreSQL."""

from __future__ import annotations

import json
import logging
import os
import random
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis

from devstack.servers import free_port
from facusync.columns import table_columns
from facusync.config import Config, config_from_mapping
from facusync.errors import SchemaError, SinkError, SourceError, StateReadError
from facusync.pgconn import connect_pg
from facusync.producer import Producer
from facusync.redisconn import Keys, connect_redis
from facusync.service import Service

pytestmark = pytest.mark.timeout(180)


def entries(cfg: Config) -> list[dict[str, str]]:
    client = connect_redis(cfg)
    try:
        out = []
        for entry_id, fields in client.xrange(Keys(cfg.redis_prefix).stream):
            row = {k.decode(): v.decode() for k, v in fields.items()}
            row["id"] = entry_id.decode()
            out.append(row)
        return out
    finally:
        client.close()


def run_once(cfg: Config) -> Any:
    """One cycle; waits out a lock left behind by a killed producer (it expires by itself)."""
    producer = Producer(cfg, Service("test"))
    try:
        deadline = time.monotonic() + 40
        while True:
            stats = producer.run_once()
            if not stats.skipped or time.monotonic() > deadline:
                return stats
    finally:
        producer.source.close()


def keys_of(items: list[dict[str, str]]) -> list[str]:
    return [e["key"] for e in items]


def test_first_run_queues_every_row_once_then_nothing(pipeline_env: dict[str, str], standin: Any) -> None:
    standin.seed(500, seed=1)
    cfg = config_from_mapping(pipeline_env)
    stats = run_once(cfg)
    assert stats.read == 500 and stats.queued == 500 and stats.complete
    got = entries(cfg)
    assert sorted(keys_of(got)) == sorted(r["CONDUCE"] for r in standin.rows())
    first = got[0]
    assert first["v"] == "1" and first["op"] == "upsert"
    row = json.loads(first["row"])
    assert set(row) == {"conduce", "fecha_emision", "facturado", "numero_factura", "codigo_cliente",
                        "cliente", "ultima_modificacion"}
    assert row["conduce"] == first["key"] and row["ultima_modificacion"] == first["version"]
    versions = [datetime.fromisoformat(e["version"]) for e in got]
    assert versions == sorted(versions), "entries follow the version order"
    again = run_once(cfg)
    assert again.queued == 0 and again.unchanged == again.read > 0
    assert len(entries(cfg)) == 500


def test_update_is_queued_exactly_once(pipeline_env: dict[str, str], standin: Any) -> None:
    standin.seed(50, seed=2)
    cfg = config_from_mapping(pipeline_env)
    run_once(cfg)
    key = standin.rows()[7]["CONDUCE"]
    standin.update(key, cliente="Ferretería Núñez, S.R.L.")
    assert run_once(cfg).queued == 1
    assert run_once(cfg).queued == 0
    updates = [e for e in entries(cfg) if e["key"] == key]
    assert len(updates) == 2
    assert json.loads(updates[-1]["row"])["cliente"] == "Ferretería Núñez, S.R.L."


def test_late_row_inside_overlap_is_captured(pipeline_env: dict[str, str], standin: Any) -> None:
    standin.seed(100, seed=3)
    cfg = config_from_mapping(pipeline_env)
    stats = run_once(cfg)
    late_version = stats.watermark - timedelta(seconds=30)  # overlap is 60 s
    standin.insert_late({"CONDUCE": "LATE-1", "CLIENTE": "Colmado La Esquina"}, late_version)
    assert run_once(cfg).queued == 1
    assert "LATE-1" in keys_of(entries(cfg))


def test_rows_sharing_the_boundary_timestamp_are_never_lost(pipeline_env: dict[str, str],
                                                            standin: Any) -> None:
    env = dict(pipeline_env, SYNC_OVERLAP="0", CHUNK_SIZE="3", FETCH_SIZE="2")
    cfg = config_from_mapping(env)
    stamp = datetime.now().replace(microsecond=0) - timedelta(minutes=5)
    standin.insert([{"CONDUCE": f"B-{i}", "ULTIMA_MODIFICACION": stamp} for i in range(5)])
    run_once(cfg)
    # Committed later, with exactly the watermark's timestamp: a '>' query would lose them.
    standin.insert_late({"CONDUCE": "B-late-1"}, stamp)
    standin.insert_late({"CONDUCE": "B-late-2"}, stamp)
    run_once(cfg)
    assert sorted(keys_of(entries(cfg))) == sorted([f"B-{i}" for i in range(5)] + ["B-late-1", "B-late-2"])


def test_missing_key_column_is_a_config_error(pipeline_env: dict[str, str], standin: Any) -> None:
    cfg = config_from_mapping(dict(pipeline_env, MSSQL_KEY_COLUMN="NO_SUCH_COLUMN"))
    with pytest.raises(SchemaError, match="MSSQL_KEY_COLUMN=NO_SUCH_COLUMN is not a column of the view"):
        run_once(cfg)
    out = subprocess.run([sys.executable, "-m", "facusync.producer", "--once"],
                         env={**os.environ, **pipeline_env, "MSSQL_VERSION_COLUMN": "NOPE"},
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 78
    assert "MSSQL_VERSION_COLUMN=NOPE is not a column of the view" in out.stdout + out.stderr


def test_losing_redis_resumes_from_postgresql_watermark(pipeline_env: dict[str, str], standin: Any) -> None:
    base = datetime.now().replace(microsecond=0) - timedelta(days=2)
    standin.seed(200, seed=4, start=base, end=base + timedelta(hours=1))
    cfg = config_from_mapping(pipeline_env)
    run_once(cfg)
    committed = base + timedelta(hours=1)
    conn = connect_pg(cfg)
    with conn, conn.cursor() as cur:  # what the consumer records after committing everything
        cur.execute("UPDATE sync_control SET watermark = %s", (committed,))
    conn.close()
    client = connect_redis(cfg)
    for key in client.scan_iter(match=cfg.redis_prefix + "*"):
        client.delete(key)  # Redis lost everything
    client.close()
    standin.insert([{"CONDUCE": "NEW-1"}])
    stats = run_once(cfg)
    assert stats.since == committed - timedelta(seconds=cfg.sync_overlap)
    got = keys_of(entries(cfg))
    assert "NEW-1" in got
    assert len(got) < 200, "it resumed from the committed watermark, not from the start"


def test_postgresql_down_while_resuming_is_an_outage_backed_off(pipeline_env: dict[str, str],
                                                                standin: Any,
                                                                monkeypatch: pytest.MonkeyPatch,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    """Redis has no watermark and PostgreSQL cannot give the committed one: the producer's
    state read fails as PostgreSQL being unavailable (StateReadError, not the consumer's
    SinkError), and the loop backs off and retries, reporting PostgreSQL as the cause."""
    standin.seed(10, seed=6)
    cfg = config_from_mapping(pipeline_env)
    unreachable = config_from_mapping({**pipeline_env, "PG_PORT": str(free_port())})
    service = Service("test")
    producer = Producer(unreachable, service)
    producer.table_cols = table_columns(cfg)  # read before PostgreSQL went away
    try:
        with pytest.raises(StateReadError) as failure:
            producer.run_once()
        assert failure.value.target == "PostgreSQL" and "refused" in failure.value.cause
        assert not isinstance(failure.value, SinkError)
        waits: list[float] = []

        def fake_sleep(seconds: float) -> bool:  # a fake clock: record the wait instead
            waits.append(seconds)
            if len(waits) == 3:
                service.stopping.set()
            return True

        monkeypatch.setattr(service, "sleep", fake_sleep)
        producer.run_forever()
    finally:
        producer.source.close()
    assert len(waits) == 3 and waits[0] < waits[-1], f"no backoff: {waits}"
    failures = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert failures == [f"PostgreSQL unavailable: {failure.value.cause} (retrying with backoff)"]
    assert keys_of(entries(cfg)) == [], "nothing was queued without a starting point"


def test_source_outage_and_stall_are_survived(pipeline_env: dict[str, str], standin: Any) -> None:
    standin.seed(300, seed=5)
    cfg = config_from_mapping(dict(pipeline_env, FETCH_SIZE="50", CHUNK_SIZE="50"))
    standin.set_fault(drop_after_rows=120)
    with pytest.raises(SourceError):
        run_once(cfg)
    standin.set_fault(hang=True, drop_after_rows=60)
    t0 = time.monotonic()
    with pytest.raises(SourceError):
        run_once(cfg)
    assert time.monotonic() - t0 < 30, "the query timeout bounds a stall"
    standin.set_fault(refuse_logins=True)
    with pytest.raises(SourceError, match="login failed"):
        run_once(cfg)
    standin.clear_faults()
    run_once(cfg)
    assert sorted(set(keys_of(entries(cfg)))) == sorted(r["CONDUCE"] for r in standin.rows())


@pytest.mark.timeout(300)
def test_sigkill_at_random_points_never_loses_a_row(pipeline_env: dict[str, str], standin: Any,
                                                     tmp_path: Path) -> None:
    seed = int(os.environ.get("FACUSYNC_TEST_SEED", random.randrange(1 << 30)))
    rnd = random.Random(seed)
    standin.seed(20000, seed=6)
    env = {**os.environ, **pipeline_env, "CHUNK_SIZE": "200", "FETCH_SIZE": "500",
           "SYNC_INTERVAL": "0.2", "LOG_FORMAT": "json"}
    log = (tmp_path / "producer.log").open("ab")
    for _ in range(6):
        proc = subprocess.Popen([sys.executable, "-m", "facusync.producer"], env=env,
                                stdout=log, stderr=log)
        time.sleep(rnd.uniform(0.3, 1.5))
        for i in range(rnd.randrange(0, 5)):  # changes keep coming while it crashes
            standin.insert([{"CONDUCE": f"K-{time.monotonic_ns()}-{i}"}])
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    cfg = config_from_mapping(pipeline_env)
    run_once(cfg)
    got = set(keys_of(entries(cfg)))
    missing = {r["CONDUCE"] for r in standin.rows()} - got
    assert not missing, f"seed {seed}: {len(missing)} rows never queued, e.g. {sorted(missing)[:5]}"


def test_backpressure_pauses_reading(pipeline_env: dict[str, str], standin: Any) -> None:
    standin.seed(1000, seed=7)
    cfg = config_from_mapping(dict(pipeline_env, QUEUE_MAX_PENDING="300", CHUNK_SIZE="50"))
    stats = run_once(cfg)
    assert stats.paused and not stats.complete
    queued = len(entries(cfg))
    assert 300 <= queued < 1000
    client = connect_redis(cfg)
    state = client.hget(Keys(cfg.redis_prefix).producer_stats, "state")
    client.close()
    assert state == b"paused"
    assert run_once(cfg).paused, "still paused while nobody consumes"
    assert len(entries(cfg)) == queued


def test_unreachable_redis_is_reported(pipeline_env: dict[str, str], standin: Any) -> None:
    cfg = config_from_mapping(dict(pipeline_env, REDIS_PORT="1", REDIS_CONNECT_TIMEOUT="1"))
    from facusync.errors import QueueError

    with pytest.raises(QueueError, match="connection refused"):
        run_once(cfg)
    assert isinstance(redis.Redis, type)


def test_quiet_view_is_not_reread_forever(pipeline_env: dict[str, str], standin: Any) -> None:
    """Once the view has been quiet for longer than the overlap (and the producer has measured
    how late changes arrive), a cycle re-reads only the rows at the watermark; changes and
    late rows inside the overlap are still caught."""
    base = datetime.now().replace(microsecond=0) - timedelta(days=2)
    standin.seed(400, seed=9, start=base - timedelta(minutes=5), end=base)
    cfg = config_from_mapping(dict(pipeline_env, SYNC_OVERLAP="4"))
    producer = Producer(cfg, Service("test"))
    try:
        first = producer.run_once()
        assert first.read == 400
        assert producer.run_once().since == first.watermark - timedelta(seconds=4), \
            "the newest version trails the clock by 2 days: that lateness is assumed until measured"
        standin.insert([{"CONDUCE": "NEW-Q0"}])  # arrives on time: lateness 0 is measured
        assert producer.run_once().queued == 1
        time.sleep(5)  # quiet for longer than the overlap
        producer.run_once()
        watermark = producer.run_once().watermark
        quiet = producer.run_once()
        assert quiet.since == watermark and quiet.read == 1 and quiet.queued == 0
        standin.insert([{"CONDUCE": "NEW-Q1"}])
        assert producer.run_once().queued == 1
        late = datetime.now() - timedelta(seconds=2)
        standin.insert_late({"CONDUCE": "LATE-Q1"}, late)
        third = producer.run_once()
        assert third.queued == 1 and third.since is not None and third.since <= late
    finally:
        producer.source.close()
    assert {"NEW-Q0", "NEW-Q1", "LATE-Q1"} <= set(keys_of(entries(cfg)))
