"""Child processes of the demo, the benchmarks and their tests: a clean environment for the
daemons, and a look at what is still running afterwards."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path

import pytest

# Variables facusync (or libpq) reads: removed from the children's environment, because the
# real environment wins over --env-file and a child must use only its own file.
_CONFIG_PREFIXES = ("MSSQL_", "PG", "REDIS_", "SYNC_", "RECONCILE_", "LOG_", "FACUSYNC_",
                    "METRICS_")
_CONFIG_NAMES = {"BATCH_SIZE", "FETCH_SIZE", "CHUNK_SIZE", "QUEUE_MAX_PENDING", "CLAIM_IDLE",
                 "MAX_DELIVERIES", "BACKOFF_MAX", "SOURCE_TIMEZONE", "LAG_WARN"}


def child_env(**extra: str) -> dict[str, str]:
    """This process's environment without any facusync setting, plus `extra`."""
    env = {k: v for k, v in os.environ.items()
           if not (k.startswith(_CONFIG_PREFIXES) or k in _CONFIG_NAMES)}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env.update(extra)
    return env


def processes_under(folder: Path, *, by_cwd: bool = True) -> list[str]:
    """Processes whose command line (or, with by_cwd, working directory) is inside `folder`."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            cwd = os.readlink(proc / "cwd") if by_cwd else ""
        except OSError:
            continue  # gone meanwhile, or not ours to read
        if str(folder) in cmdline or (by_cwd and cwd.startswith(str(folder))):
            found.append(f"{proc.name}: {cmdline.strip()}" + (f" (cwd {cwd})" if by_cwd else ""))
    return found


def skip_folder_unless(enabled: bool, conftest: str, reason: str,
                       items: Iterable[pytest.Item]) -> None:
    """Mark every test below `conftest`'s folder as skipped unless its suite is enabled."""
    if enabled:
        return
    skip = pytest.mark.skip(reason=reason)
    here = Path(conftest).parent
    for item in items:
        if here in Path(str(item.path)).parents:
            item.add_marker(skip)


def sigterm_raises_keyboard_interrupt() -> None:
    """A CI timeout sends SIGTERM: raise instead, so that fixtures' teardown still runs."""

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupt)


class Daemon:
    """facusync-producer or facusync-consumer as a child process, its output in a log file."""

    def __init__(self, name: str, env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}-{time.time_ns()}.log"
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", f"facusync.{name}"],
                                         env={**os.environ, **env}, stdout=log, stderr=log)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        """Send `sig` (SIGTERM: a clean stop) and wait; kill if it does not end in time."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return int(self.proc.returncode)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")
