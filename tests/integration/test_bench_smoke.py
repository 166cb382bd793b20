"""`make bench` in its smallest form, so the benchmark cannot rot unnoticed.

Runs `python -m bench.run --quick` (tiny sizes, well under a minute) as a process, the way `make bench`
runs it, and checks behaviour only: every section ran, every row arrived, every change was
seen, the results file has the same shape as the real one, and nothing is left behind. Speeds
are never asserted: they mean nothing at this size, and these machines are noisy. Also the
benchmark's own write strategy (bench_consumer's DropStagingSink) against a real PostgreSQL.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.bench_consumer import DropStagingSink
from devstack.processes import processes_under
from facusync.config import Config
from tests.integration.test_consumer_support import cfg  # noqa: F401 - fixture
from tests.integration.test_sink import staging_table_exists, write_rounds_with_a_bad_row

pytestmark = pytest.mark.timeout(280)

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture()
def bench_tmp() -> Iterator[Path]:
    """The benchmark's TMPDIR. Not pytest's tmp_path: that is mode 0700 under root's folder,
    and PostgreSQL runs as the postgres user when the tests run as root."""
    folder = Path(tempfile.mkdtemp(prefix="facusync-benchtest-"))
    folder.chmod(0o755)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_quick_benchmark_measures_every_section_and_cleans_up(bench_tmp: Path) -> None:
    out_file = bench_tmp / "results.json"
    result = subprocess.run(
        [sys.executable, "-m", "bench.run", "--quick", "--json", str(out_file)],
        cwd=REPO_ROOT, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=240,
        env={**os.environ, "TMPDIR": str(bench_tmp), "PYTHONUNBUFFERED": "1"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    data = json.loads(out_file.read_text())

    write = data["write_path"]
    assert write["reps"] == 1 and len(write["copy"]) == 1
    default_batch = str(data["meta"]["defaults"]["BATCH_SIZE"])
    assert default_batch in write["batches"] and "50" in write["batches"]
    for measured in [*write["batches"].values(), write["naive"], write["two_consumers"]]:
        assert len(measured["insert"]) == 1 and len(measured["update"]) == 1

    costs = write["metrics"]  # off, on, on, off: two of each, every one scraped when on
    for setting in ("off", "on"):
        assert len(costs[setting]["insert"]) == 2 and len(costs[setting]["update_cpu_us_per_row"]) == 2
    assert min(costs["on"]["scrapes"]) >= 1 and max(costs["off"]["scrapes"]) == 0
    assert len(costs["cost"]) == 1 and costs["cost"][0]["scrape_cpu_ms"] > 0
    assert costs["cost"][0]["hook_us_per_batch"] > 0 and costs["cost"][0]["scrape_bytes"] > 1000
    assert "metrics on vs off" in result.stdout and "by parts: hook" in result.stdout
    assert "cost_pct_scrape_15s" in data["summary"]["metrics"]["insert"]

    pipe = data["pipeline"]
    backfill = pipe["backfill"][0]
    assert backfill["raw_read"]["rows"] == pipe["rows"]  # the bench also counted PostgreSQL's rows
    assert backfill["peak_rss_kb"]["producer_kb"] > 0 and backfill["peak_rss_kb"]["consumer_kb"] > 0
    latency = pipe["latency"]
    assert latency["measured"] > 0 and latency["never_seen"] == 0
    assert latency["p50_s"] <= latency["p95_s"] <= latency["p99_s"] <= latency["max_s"]
    assert "sync_interval_1" in pipe["idle"] and len(pipe["idle"]) == 2  # the default's, and 1 s
    for idle in pipe["idle"].values():
        assert {"producer", "consumer", "standin", "postgres", "redis"} <= idle.keys()

    targets = data["summary"]["targets"]
    assert targets and all(isinstance(t["met"], bool) for t in targets)
    assert "targets" in result.stdout and "COPY ceiling" in result.stdout
    assert data["meta"]["load_start"] and data["meta"]["load_end"]
    assert "PASSWORD" not in result.stdout + result.stderr

    # The servers, the stand-in and the daemons are gone, with their folders.
    assert processes_under(bench_tmp, by_cwd=False) == []
    assert [p.name for p in bench_tmp.iterdir()] == ["results.json"]


def test_quick_tls_benchmark_compares_both_modes_and_cleans_up(bench_tmp: Path) -> None:
    out_file = bench_tmp / "results-tls.json"
    result = subprocess.run(
        [sys.executable, "-m", "bench.tls", "--quick", "--json", str(out_file)],
        cwd=REPO_ROOT, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=240,
        env={**os.environ, "TMPDIR": str(bench_tmp), "PYTHONUNBUFFERED": "1"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    data = json.loads(out_file.read_text())
    assert [line["measure"] for line in data["summary"]] == [
        "consumer write path, insert", "consumer write path, update",
        "backfill (producer + consumer), all three hops"]
    assert all(line["plaintext_rows_per_s"] > 0 and line["tls_rows_per_s"] > 0
               for line in data["summary"])
    assert "| backfill (producer + consumer), all three hops |" in result.stdout
    assert processes_under(bench_tmp) == []
    assert [p.name for p in bench_tmp.iterdir()] == ["results-tls.json"]


def test_drop_staging_sink_writes_as_the_library_sink(cfg: Config) -> None:  # noqa: F811
    """bench_consumer's alternative staging (a table per batch, ON COMMIT DROP) writes what
    the library's Sink writes, so the benchmark compares like with like."""
    sink = DropStagingSink(cfg, consumer="x")
    sink.connect()
    try:
        write_rounds_with_a_bad_row(cfg, sink)
        assert not staging_table_exists(sink), "dropped at each commit, unlike the library's"
    finally:
        sink.close()
