"""`facusync status` tells stopped, silent and live daemons apart, gives numbers as numbers in
--json, and warns when reconcile is overdue; real daemons (processes) on real servers."""

from __future__ import annotations

import json
import re
import signal
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from devstack.processes import start_daemon
from facusync.config import config_from_mapping
from facusync.operations.status import CONSUMER_SILENT_S, PRODUCER_GRACE_S
from facusync.redisconn import Keys, connect_redis
from tests.integration.test_operator_commands import cli, pg_rows, wait_for

pytestmark = pytest.mark.timeout(300)

NUMERIC_TEXT = re.compile(r"^-?\d+(\.\d+)?$")


def status(env: dict[str, str]) -> tuple[int, dict[str, Any], str]:
    """Exit code, --json and the text of one `facusync status`."""
    data = json.loads(cli(env, "status", "--json").stdout)
    text = cli(env, "status")
    return text.returncode, data, text.stdout


@pytest.fixture()
def synced(pipeline_env: dict[str, str], standin: Any, tmp_path: Path) -> Iterator[dict[str, Any]]:
    """Producer and consumer as processes, 100 rows synced; yields env and the daemons."""
    standin.seed(100, seed=12)
    daemons = {name: start_daemon(name, pipeline_env, tmp_path) for name in ("producer", "consumer")}
    try:
        wait_for(lambda: pg_rows(pipeline_env, "SELECT count(*) FROM datos_vista")[0][0] == 100,
                 90, "the backfill")
        wait_for(lambda: cli(pipeline_env, "status").returncode == 0, 60, "a healthy status")
        yield {"env": pipeline_env, "daemons": daemons, "tmp": tmp_path}
    finally:
        for daemon in daemons.values():
            daemon.stop()


def test_a_cleanly_stopped_producer_says_stopped_at_once(synced: dict[str, Any]) -> None:
    env = synced["env"]
    assert synced["daemons"]["producer"].stop() == 0
    code, data, text = status(env)
    assert code == 2 and data["producer"]["state"] == "stopped"
    assert re.search(r"^  state        stopped \d+ s ago$", text, re.M), text
    assert any("the producer was stopped" in r for r in data["health"]["reasons"])


def test_stopped_consumers_are_marked_and_live_ones_listed_first(synced: dict[str, Any]) -> None:
    env, daemons = synced["env"], synced["daemons"]
    old = daemons["consumer"]
    old_name = f"{_hostname()}-{old.proc.pid}"
    assert old.stop() == 0
    code, data, text = status(env)
    assert data["consumers"][old_name]["alive"] is False
    assert data["consumers"][old_name]["state"] == "stopped"
    assert code == 1 and "no consumer has reported in the last minute" in text
    assert re.search(rf"^  {re.escape(old_name)}\s+STOPPED: last heard \d+ s ago", text, re.M), text

    daemons["consumer"] = new = start_daemon("consumer", env, synced["tmp"])
    new_name = f"{_hostname()}-{new.proc.pid}"
    wait_for(lambda: cli(env, "status").returncode == 0, 60, "healthy with the new consumer")
    code, data, text = status(env)
    assert data["consumers"][new_name]["alive"] is True
    listed = text[text.index("Consumers"):].splitlines()[1:3]
    assert listed[0].lstrip().startswith(new_name) and "STOPPED" in listed[1], listed


def test_silent_daemons_go_stale(synced: dict[str, Any]) -> None:
    """SIGKILL leaves no goodbye: after its interval (plus grace) the producer is stale, and a
    consumer silent for a minute is marked, not listed as working."""
    env, daemons = synced["env"], synced["daemons"]
    consumer_name = f"{_hostname()}-{daemons['consumer'].proc.pid}"
    daemons["producer"].stop(signal.SIGKILL)
    daemons["consumer"].stop(signal.SIGKILL)
    killed = time.monotonic()
    code, data, _ = status(env)
    assert data["producer"]["state"] == "running"  # within its interval it may just be busy
    time.sleep(max(0.0, killed + max(float(env["SYNC_INTERVAL"]) + PRODUCER_GRACE_S,
                                      CONSUMER_SILENT_S) + 2 - time.monotonic()))
    code, data, text = status(env)
    assert code == 1  # silent, not yet down (10 intervals, at least 5 minutes)
    assert data["producer"]["state"] == "stale" and data["producer"]["reported_state"] == "running"
    assert re.search(r"^  state        stale \(silent for \d+ s; it last said running\)$", text, re.M)
    assert data["consumers"][consumer_name]["alive"] is False
    assert re.search(rf"^  {re.escape(consumer_name)}\s+SILENT, not running\?: last heard", text, re.M)


def test_json_numbers_are_numbers(synced: dict[str, Any]) -> None:
    env = synced["env"]
    assert cli(env, "reconcile").returncode == 0
    _, data, _ = status(env)
    strings: list[str] = []

    def walk(node: Any, path: str) -> None:
        if isinstance(node, dict):
            for key, item in node.items():
                walk(item, f"{path}.{key}")
        elif isinstance(node, list):
            for i, item in enumerate(node):
                walk(item, f"{path}[{i}]")
        elif isinstance(node, str) and NUMERIC_TEXT.match(node):
            strings.append(f"{path}={node!r}")

    walk(data, "")
    assert strings == []
    producer, reconcile = data["producer"], data["reconcile"]
    assert isinstance(producer["last_read"], int) and isinstance(producer["heartbeat"], float)
    assert isinstance(producer["interval"], float) and isinstance(producer["backlog"], int)
    consumer = next(iter(data["consumers"].values()))
    assert isinstance(consumer["total_rows"], int) and isinstance(consumer["pending"], int)
    assert isinstance(consumer["pid"], int) and isinstance(consumer["rows_per_s"], float)
    assert reconcile["source_rows"] == 100 and reconcile["refused"] is False
    assert isinstance(reconcile["finished_at"], float)


def test_reconcile_overdue_never_ran_or_late(synced: dict[str, Any]) -> None:
    env = {**synced["env"], "RECONCILE_INTERVAL": "3600"}
    cfg = config_from_mapping(env)
    # A fresh installation: reconcile has not run yet, and need not have.
    code, data, text = status(env)
    assert code == 0 and data["reconcile"]["overdue"] is None
    assert "last run     never (no record in Redis)" in text
    # The schema is three hours old (two intervals are two hours) and reconcile never ran.
    pg_rows(env, "UPDATE schema_migrations SET applied_at = applied_at - interval '3 hours'")
    code, data, text = status(env)
    assert code == 1 and "reconcile has never run" in data["reconcile"]["overdue"]
    assert "facusync-reconcile.timer" in text
    # It runs: healthy again, and status says when.
    assert cli(env, "reconcile").returncode == 0
    code, data, text = status(env)
    assert code == 0 and data["reconcile"]["overdue"] is None
    assert re.search(r"^  last run     \d+ s ago: 0 upserts, 0 tombstones$", text, re.M), text
    # Its last run was three hours ago (the timer stopped since): overdue.
    client = connect_redis(cfg)
    try:
        client.hset(Keys(cfg.redis_prefix).reconcile_stats, "finished_at", f"{time.time() - 3 * 3600:.3f}")
    finally:
        client.close()
    code, data, text = status(env)
    assert code == 1 and "reconcile last ran 3.0 h ago" in data["reconcile"]["overdue"]
    assert data["reconcile"]["last_run_age_s"] == pytest.approx(3 * 3600, abs=60)


def _hostname() -> str:
    import socket

    return socket.gethostname()


def test_a_refused_reconcile_degrades_status(synced: dict[str, Any], standin: Any) -> None:
    """A fifth of the view vanishes (a broken view?): reconcile refuses, status says what to do."""
    env = synced["env"]
    for row in standin.rows()[:20]:
        standin.delete(row["CONDUCE"])
    assert cli(env, "reconcile").returncode == 3  # the mass-delete guard
    code, data, text = status(env)
    assert code == 1 and data["reconcile"]["refused"] is True
    assert "the last reconcile refused to tombstone 20 row(s)" in data["reconcile"]["overdue"]
    assert "`facusync reconcile --force`" in text and "REFUSED (mass-delete guard)" in text


@pytest.mark.parametrize("zone", ["America/Santo_Domingo", "Asia/Kolkata"])
def test_json_time_carries_its_offset(env: dict[str, str], zone: str) -> None:
    """`time` in --json is read next to last_commit_at (which has its offset) and on other
    machines: without an offset it names no instant."""
    _code, data, _text = status({**env, "TZ": zone})
    stamp = datetime.fromisoformat(data["time"])
    assert stamp.tzinfo is not None, data["time"]
    assert abs(stamp.timestamp() - time.time()) < 60


def test_a_prefix_with_glob_characters_still_finds_its_consumers(env: dict[str, str]) -> None:
    """REDIS_PREFIX is any text without spaces; status finds consumers with a SCAN pattern, in
    which * ? [ ] are wildcards: a prefix holding them must match itself, not other keys."""
    prefix = f"fs[{time.time_ns() % 1000}]*?:"
    cfg = config_from_mapping({**env, "REDIS_PREFIX": prefix})
    keys = Keys(prefix)
    client = connect_redis(cfg)
    try:
        client.hset(keys.consumer_stats("c1"), mapping={"heartbeat": f"{time.time():.3f}",
                                                        "state": "idle"})
        _code, data, _text = status({**env, "REDIS_PREFIX": prefix})
        assert list(data["consumers"]) == ["c1"]
    finally:
        client.delete(keys.consumer_stats("c1"))
        client.close()
