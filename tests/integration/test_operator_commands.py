"""`facusync status`, `resync` and `dead-letter` against a running pipeline on real servers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg2
import pytest

from facusync.config import config_from_mapping
from facusync.redisconn import Keys, connect_redis
from facusync.stream import read_watermark
from tests.poison import insert_too_long

pytestmark = pytest.mark.timeout(240)


def cli(env: dict[str, str], *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "facusync.cli", *args], env={**os.environ, **env},
                          capture_output=True, text=True, timeout=120, input=stdin)


def wait_for(predicate: Any, timeout: float = 60.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def pg_rows(env: dict[str, str], sql: str) -> list[tuple[Any, ...]]:
    conn = psycopg2.connect(host=env["PG_HOST"], port=env["PG_PORT"], dbname=env["PG_DATABASE"],
                            user=env["PG_USER"], password=env["PG_PASSWORD"])
    try:
        with conn, conn.cursor() as cur:
            cur.execute(sql)
            return cur.fetchall() if cur.description else []
    finally:
        conn.close()


@pytest.fixture()
def running(pipeline_env: dict[str, str], standin: Any, tmp_path: Path) -> Iterator[dict[str, str]]:
    """Producer and consumer as real processes, synced over 200 rows."""
    standin.seed(200, seed=21)
    env = {**pipeline_env, "LAG_WARN": "30"}
    procs = []
    for name in ("producer", "consumer"):
        log = (tmp_path / f"{name}.log").open("ab")
        procs.append(subprocess.Popen([sys.executable, "-m", f"facusync.{name}"],
                                      env={**os.environ, **env}, stdout=log, stderr=log))
    try:
        wait_for(lambda: pg_rows(env, "SELECT count(*) FROM datos_vista")[0][0] == 200, what="backfill")
        yield env
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()


def test_status_healthy_then_degraded_by_a_dead_letter(running: dict[str, str], standin: Any) -> None:
    wait_for(lambda: cli(running, "status").returncode == 0, 90, "a healthy status")
    out = cli(running, "status")
    assert out.stdout.startswith("facusync status at") and "HEALTHY" in out.stdout
    for section in ("Producer", "Queue", "Consumers", "PostgreSQL", "Recent performance"):
        assert section in out.stdout
    data = json.loads(cli(running, "status", "--json").stdout)
    assert data["health"]["code"] == 0 and data["postgresql"]["rows"] == 200
    assert data["queue"]["dead_letters"] == 0 and data["producer"]["state"] == "running"
    assert running["PG_PASSWORD"] not in out.stdout + json.dumps(data)

    insert_too_long(standin, "POISON-1", 400)  # datos_vista.cliente is varchar(150)
    wait_for(lambda: cli(running, "status").returncode == 1, 90, "degraded status")
    out = cli(running, "status")
    assert "DEGRADED" in out.stdout and "1 dead letter(s)" in out.stdout

    listing = cli(running, "dead-letter", "list")
    assert listing.returncode == 0 and "POISON-1" in listing.stdout and "too long" in listing.stdout
    entry_id = listing.stdout.splitlines()[1].split()[0]
    shown = json.loads(cli(running, "dead-letter", "show", entry_id).stdout)
    assert shown["key"] == "POISON-1" and shown["row"]["cliente"] == "x" * 400 and shown["error"]

    # The operator fixes the cause (widens the column), then replays the dead letter.
    pg_rows(running, "DROP VIEW IF EXISTS v_planificacion")
    pg_rows(running, "ALTER TABLE datos_vista ALTER COLUMN cliente TYPE varchar(500)")
    assert cli(running, "dead-letter", "retry", "--all").returncode == 0
    wait_for(lambda: pg_rows(running, "SELECT count(*) FROM datos_vista WHERE conduce = 'POISON-1'")[0][0]
             == 1, 90, "the retried row")
    assert json.loads(cli(running, "status", "--json").stdout)["queue"]["dead_letters"] == 0


def test_dead_letter_purge_asks_and_honours_older_than(running: dict[str, str], standin: Any) -> None:
    insert_too_long(standin, "POISON-2", 300)
    wait_for(lambda: "POISON-2" in cli(running, "dead-letter", "list").stdout, 90, "dead letter")
    out = cli(running, "dead-letter", "purge", "--older-than", "1h", "--yes")
    assert out.returncode == 0 and "nothing to purge" in out.stdout
    out = cli(running, "dead-letter", "purge")  # not a terminal, no --yes: refuses
    assert out.returncode == 1
    # A script's unset variable, `--older-than "$AGE"`, is refused: not "purge them all".
    empty = cli(running, "dead-letter", "purge", "--older-than", "", "--yes")
    assert empty.returncode == 64 and "--older-than is empty" in empty.stderr
    assert "POISON-2" in cli(running, "dead-letter", "list").stdout
    assert cli(running, "dead-letter", "purge", "--yes").returncode == 0
    assert "0 dead letter(s)" in cli(running, "dead-letter", "list").stdout
    bad = cli(running, "dead-letter", "purge", "--older-than", "soon", "--yes")
    assert bad.returncode == 64 and "not a date or an age" in bad.stderr


def test_resync_moves_the_watermark_back_while_running(running: dict[str, str]) -> None:
    cfg = config_from_mapping(running)
    client = connect_redis(cfg)
    keys = Keys(cfg.redis_prefix)
    try:
        before = read_watermark(client, keys)
        queued_before = int(client.hget(keys.producer_stats, "total_queued") or 0)
        out = cli(running, "resync", "--since", "01/11/2020 8:00")  # day first, as typed here
        assert out.returncode == 1 and "add --yes" in out.stderr  # no terminal to ask
        out = cli(running, "resync", "--all", "--yes")
        assert out.returncode == 0 and "forget" in out.stdout
        wait_for(lambda: int(client.hget(keys.producer_stats, "total_queued") or 0) >= queued_before + 200,
                 30, "the full re-read")
        assert read_watermark(client, keys) == before
    finally:
        client.close()
    # Re-sent rows were unchanged: nothing was rewritten in PostgreSQL.
    assert pg_rows(running, "SELECT count(*) FROM datos_vista WHERE updated_at > created_at")[0][0] == 0
    bad = cli(running, "resync", "--since", "yesterday", "--yes")
    assert bad.returncode == 64 and "not a date or an age" in bad.stderr
    bad = cli(running, "resync", "--since", "1/11/20", "--yes")
    assert bad.returncode == 64 and "ambiguous" in bad.stderr


def test_every_command_names_the_server_that_is_down(pipeline_env: dict[str, str]) -> None:
    no_redis = {**pipeline_env, "REDIS_PORT": "1"}
    no_pg = {**pipeline_env, "PG_PORT": "1"}
    out = cli(no_redis, "status")
    assert out.returncode == 2 and "Redis: connection refused" in out.stdout
    out = cli(no_pg, "status")
    assert out.returncode == 2 and "PostgreSQL: connection refused" in out.stdout
    for env, args, name in ((no_redis, ("dead-letter", "list"), "Redis"),
                            (no_redis, ("resync", "--all", "--yes"), "Redis"),
                            (no_pg, ("verify",), "PostgreSQL"),
                            ({**pipeline_env, "MSSQL_PORT": "1"}, ("verify",), "SQL Server"),
                            (no_redis, ("reconcile",), "Redis")):
        out = cli(env, *args)
        assert out.returncode != 0, args
        assert f"{name}: " in out.stderr and "Traceback" not in out.stderr, (args, out.stderr)
        assert len(out.stderr.strip().splitlines()) == 1, out.stderr


def test_status_is_down_without_a_producer(pipeline_env: dict[str, str]) -> None:
    out = cli(pipeline_env, "status")
    assert out.returncode == 2 and "the producer has never reported" in out.stdout


def _clock_changed_hours_ago(hours: int, *, forward: bool) -> str:
    """A POSIX TZ rule (standard time UTC+0, summer time UTC+1) whose clocks went forward (summer
    began) or back (summer ended) `hours` ago on the real clock, so the last day holds an hour
    of wall time that never happened, or one that happened twice."""
    change = time.gmtime((int(time.time()) // 3600 - hours) * 3600)
    day = change.tm_yday - 1  # the rule's zero-based day of the year
    if not 5 <= day <= 360:
        pytest.skip("the rule's summer would cross the end of the year")
    if forward:  # summer from the change for five days
        return f"XST0XDT-1,{day}/{change.tm_hour},{day + 5}/0"
    return f"XST0XDT-1,{day - 5}/0,{day}/{change.tm_hour + 1}"  # the end is in summer time


@pytest.mark.parametrize("forward", [True, False], ids=["clocks_forward", "clocks_back"])
def test_purge_older_than_an_age_counts_real_hours_across_a_clock_change(
        env: dict[str, str], forward: bool) -> None:
    """`--older-than 12h` means twelve real hours, also when the host's clock was put forward
    (or back) an hour since: it must never delete a dead letter younger than asked (nor keep
    one older)."""
    rule = _clock_changed_hours_ago(6, forward=forward)
    cfg = config_from_mapping(env)
    keys = Keys(cfg.redis_prefix)
    client = connect_redis(cfg)
    now_ms = int(time.time() * 1000)
    hour = 3600 * 1000
    try:
        for age_ms in (12 * hour + hour // 2, 11 * hour + hour // 2):  # oldest first
            client.xadd(keys.dead, {"key": f"AGE-{age_ms}", "error": "test"}, id=f"{now_ms - age_ms}-0")
        out = cli({**env, "TZ": rule}, "dead-letter", "purge", "--older-than", "12h", "--yes")
        assert out.returncode == 0, out.stderr
        left = [fields[b"key"].decode() for _, fields in client.xrange(keys.dead)]
        assert left == [f"AGE-{11 * hour + hour // 2}"], (rule, out.stdout)
    finally:
        client.close()


def test_purge_older_than_an_age_beyond_the_calendar_is_a_usage_error(env: dict[str, str]) -> None:
    for typed in ("99999999d", "1" + "0" * 40 + "w"):
        out = cli(env, "dead-letter", "purge", "--older-than", typed, "--yes")
        assert out.returncode == 64, out.stderr
        assert "--older-than" in out.stderr and "unexpected" not in out.stderr


def test_purge_older_than_the_first_year_east_of_greenwich(env: dict[str, str]) -> None:
    """0001-01-01 in a zone ahead of UTC is before the calendar's first instant: nothing is
    older, and saying so is no crash."""
    out = cli({**env, "TZ": "Asia/Tokyo"}, "dead-letter", "purge", "--older-than", "0001-01-01", "--yes")
    assert out.returncode == 0 and "nothing to purge" in out.stdout, out.stderr
