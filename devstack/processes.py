"""Child processes of the tests, the demo and the benchmarks: a clean environment for them,
the daemons run as production runs them (minus systemd), and a look at what is still
running afterwards."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

BIN = Path(sys.executable).parent  # the venv's bin: facusync, facusync-producer, -consumer

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


class DaemonExited(Exception):
    """A daemon that should be running has ended; the message quotes the end of its log."""


class Daemon:
    """facusync-producer or facusync-consumer as a child process, its output in a log file.

    Configured by an env file (`env_file`, as production is) and/or variables (`env`); either
    way nothing of this process's own facusync settings leaks in (child_env).
    """

    def __init__(self, name: str, log_path: Path, *, env_file: Path | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.name = name  # "producer" or "consumer"
        self.log_path = log_path
        self.env_file = env_file
        self.env = env or {}
        self.proc: subprocess.Popen[bytes] | None = None
        self._stopped = False

    def start(self) -> Daemon:
        """Start it in its own session: a terminal's Ctrl+C is the caller's to handle."""
        command = [str(BIN / f"facusync-{self.name}")]
        if self.env_file is not None:
            command += ["--env-file", str(self.env_file)]
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                         env=child_env(**self.env), start_new_session=True)
        self._stopped = False
        return self

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise DaemonExited(f"facusync-{self.name} was never started")
        return self.proc.pid

    @property
    def running(self) -> bool:
        """Started and not stopped (it may have died meanwhile: check() says)."""
        return self.proc is not None and not self._stopped

    def check(self) -> None:
        """Raise DaemonExited if it ended without being asked to."""
        if self.proc is not None and not self._stopped and self.proc.poll() is not None:
            raise DaemonExited(f"facusync-{self.name} {exit_text(self.proc.returncode)}; "
                               f"its log is {self.log_path}:\n{tail(self.log_path)}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int | None:
        """Send `sig` (SIGTERM, as systemd does: a clean stop) and wait; SIGKILL if it does
        not end in time. The exit status, or None if it was never started."""
        proc = self.proc
        if proc is None:
            return None
        self._stopped = True
        if proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return proc.returncode

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")


def exit_text(code: int) -> str:
    """Popen's return code in words: negative means killed by that signal."""
    return f"killed by {signal.Signals(-code).name}" if code < 0 else f"exited with code {code}"


def tail(path: Path, lines: int = 15, indent: str = "    ") -> str:
    """The last lines of a log, indented for quoting in a message."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return f"{indent}(no log)"
    return "\n".join(indent + line for line in text[-lines:])


def start_daemon(name: str, env: dict[str, str], folder: Path) -> Daemon:
    """facusync-<name> configured by `env`, logging to a new file in `folder`."""
    return Daemon(name, folder / f"{name}-{time.time_ns()}.log", env=env).start()
