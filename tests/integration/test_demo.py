"""`make demo`, shortened: the whole pipeline ends in sync and leaves nothing behind.

The demo runs as a process, exactly as `make demo` runs it (its own throwaway servers, the
real daemons, the workload), with TMPDIR pointing into this test's folder so that every
server's directory is ours to look for afterwards.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from devstack.processes import processes_under

pytestmark = pytest.mark.timeout(280)

REPO_ROOT = Path(__file__).resolve().parents[2]
DIFFERENCE_LINES = ("missing in PostgreSQL", "soft-deleted but in source",
                    "in PostgreSQL, gone from source", "values differ", "NULL keys in source")


@pytest.fixture()
def demo_tmp() -> Iterator[Path]:
    """The demo's TMPDIR. Not pytest's tmp_path: that is mode 0700 under root's folder, and
    PostgreSQL runs as the postgres user when the tests run as root."""
    folder = Path(tempfile.mkdtemp(prefix="facusync-demotest-"))
    folder.chmod(0o755)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def demo_env(tmpdir: Path, **settings: str) -> dict[str, str]:
    env = {**os.environ, "TMPDIR": str(tmpdir), "DEMO_PAUSE": "0", "PYTHONUNBUFFERED": "1"}
    env.update(settings)
    return env


def used_ports(out: str) -> dict[str, int]:
    match = re.search(r"ports: postgresql (\d+), redis (\d+), sqlserver (\d+)", out)
    assert match, out
    return dict(zip(("postgresql", "redis", "sqlserver"), map(int, match.groups()), strict=True))


def listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


def assert_nothing_left(out: str, tmpdir: Path) -> None:
    for name, port in used_ports(out).items():
        assert not listening(port), f"{name} still listens on {port} after the demo"
    assert processes_under(tmpdir) == []
    folder = Path(re.search(r"logs kept in (\S+)", out).group(1))  # type: ignore[union-attr]
    assert (folder / "facusync-producer.log").stat().st_size > 0
    assert (folder / "facusync-consumer.log").stat().st_size > 0
    assert not (folder / "facusync.env").exists(), "the file with the passwords must go"
    # Only the demo's folder (with the logs) stays: the servers' data directories are gone.
    assert [p.name for p in tmpdir.iterdir()] == [folder.name]


def assert_in_sync(out: str) -> None:
    assert "verify: IN SYNC" in out, out
    for label in DIFFERENCE_LINES:
        match = re.search(rf"^\s+{re.escape(label)}\s+(\d+)$", out, re.MULTILINE)
        assert match and match.group(1) == "0", f"{label}: {match and match.group(0)}\n{out}"
    assert "PASSWORD=" not in out.replace("PGPASSWORD=\"$(sed", "").replace(
        "s/^PG_NOCODB_ROLE_PASSWORD=", ""), "a password may have been printed"


def test_demo_runs_to_the_end_in_sync_and_leaves_nothing_running(demo_tmp: Path) -> None:
    started = time.monotonic()
    result = subprocess.run(
        [str(REPO_ROOT / "scripts" / "demo")], cwd=REPO_ROOT, stdin=subprocess.DEVNULL,
        capture_output=True, text=True, timeout=240,
        env=demo_env(demo_tmp, DEMO_ROWS="2000", DEMO_SECONDS="15"),
    )
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert_in_sync(out)
    # Not a terminal: progress comes as plain lines, never redrawn with carriage returns.
    assert "\r" not in out
    assert re.search(r"^backfill \[#+\] 100\.0%  2,000/2,000 rows", out, re.MULTILINE), out
    assert re.search(r"^live\s+\d+/15 s  view [\d,]+  PostgreSQL [\d,]+ .* queue \d+  lag ", out,
                     re.MULTILINE), out
    assert "workload stopped after" in out and "facusync reconcile" in out
    assert "facusync status at" in out  # the status screen was printed
    assert re.search(r"psql -h 127\.0\.0\.1 -p \d+ -U facusync_nocodb -d syncdb", out), out
    assert_nothing_left(out, demo_tmp)
    assert time.monotonic() - started < 120


def test_ctrl_c_finishes_early_and_still_verifies(demo_tmp: Path) -> None:
    """The first Ctrl+C ends the live phase; drain, reconcile and verify still run."""
    proc = subprocess.Popen(
        [sys.executable, str(REPO_ROOT / "scripts" / "demo.py")], cwd=REPO_ROOT,
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env=demo_env(demo_tmp, DEMO_ROWS="1000", DEMO_SECONDS="600"),
    )
    assert proc.stdout is not None
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("live "):
                time.sleep(3)
                proc.send_signal(signal.SIGINT)  # what a terminal's Ctrl+C delivers
                break
        lines.extend(proc.stdout)
        code = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    out = "".join(lines)
    assert code == 0, out
    assert "Ctrl+C: finishing early" in out
    assert_in_sync(out)
    assert_nothing_left(out, demo_tmp)


def test_demo_with_tls_on_every_hop(demo_tmp: Path) -> None:
    result = subprocess.run(
        [str(REPO_ROOT / "scripts" / "demo")], cwd=REPO_ROOT, stdin=subprocess.DEVNULL,
        capture_output=True, text=True, timeout=240,
        env=demo_env(demo_tmp, DEMO_ROWS="2000", DEMO_SECONDS="8", DEMO_TLS="1"),
    )
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert "over TLS (throwaway CA; plaintext refused)" in out
    sql = next(row for row in out.splitlines() if row.strip().startswith("OK   SQL Server"))
    assert sql.endswith("; encrypted (whole session), TLSv1.2, certificate verified"), sql
    for hop in ("PostgreSQL", "Redis"):
        line = next(row for row in out.splitlines() if row.strip().startswith(f"OK   {hop}"))
        assert line.endswith("; TLSv1.3, certificate and host name verified"), line
    assert_in_sync(out)
    assert_nothing_left(out, demo_tmp)
    assert not any(demo_tmp.rglob("ca.key")), "the demo CA's private key must go"
