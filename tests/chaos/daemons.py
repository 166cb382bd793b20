"""The two daemons as real processes, supervised the way their systemd units say.

The units (systemd/facusync-*.service) are Type=notify with WatchdogSec=30, Restart=on-failure,
RestartSec=5 and RestartPreventExitStatus=78. This supervisor does the same: it listens on a
NOTIFY_SOCKET of its own (so sdnotify's READY=1 / WATCHDOG=1 / STATUS= reach it), restarts a
process that died of a signal or a non-zero status after RestartSec, does not restart one that
exited 0 or 78, and aborts one that was silent longer than WatchdogSec. Every exit is recorded;
an exit the chaos did not cause is reported as a finding.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
EX_CONFIG = 78
CLEAN_SIGNALS = {signal.SIGHUP, signal.SIGINT, signal.SIGTERM, signal.SIGPIPE}


@dataclass
class Exit:
    """One end of one process: how, when, and whether the chaos caused it."""

    at: float
    pid: int
    returncode: int
    expected: bool
    why: str

    def describe(self) -> str:
        how = (f"signal {signal.Signals(-self.returncode).name}" if self.returncode < 0
               else f"status {self.returncode}")
        return f"pid {self.pid} ended with {how} ({self.why})"


@dataclass
class Supervised:
    """A daemon under an emulated systemd unit."""

    name: str  # "producer" or "consumer"
    env: dict[str, str]
    workdir: Path
    restart_sec: float = 5.0
    watchdog_sec: float = 30.0
    start_timeout: float = 90.0
    stop_timeout: float = 20.0
    exits: list[Exit] = field(default_factory=list)
    starts: int = 0
    watchdog_kills: int = 0
    given_up: str | None = None  # why the unit is no longer restarted (systemd would stop too)

    def __post_init__(self) -> None:
        self.log_path = self.workdir / f"{self.name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.RLock()
        self._stopping = threading.Event()
        self._exit_why = ""  # set before we end the process ourselves
        self._exit_expected = False
        self._started_at = 0.0
        self.killed_at = 0.0  # time.monotonic() of the chaos's last SIGKILL
        self._ready = False
        self._last_ping = 0.0
        self.status_line = ""
        # A datagram socket like systemd's notify socket; a short path (sun_path is 108 bytes).
        self._sock_path = Path(f"/tmp/fs-chaos-{os.getpid()}-{self.name}.sock")
        self._sock_path.unlink(missing_ok=True)
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(str(self._sock_path))
        self._sock.settimeout(0.5)
        self._threads = [threading.Thread(target=self._listen, daemon=True, name=f"{self.name}-notify"),
                         threading.Thread(target=self._supervise, daemon=True, name=f"{self.name}-unit")]

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the unit (the process and its supervision)."""
        self._spawn()
        for t in self._threads:
            t.start()

    def _spawn(self) -> None:
        env = {**os.environ, **self.env, "NOTIFY_SOCKET": str(self._sock_path)}
        with self._lock, open(self.log_path, "ab") as log:
            log.write(f"---- chaos: starting facusync-{self.name} at {time.strftime('%H:%M:%S')}\n"
                      .encode())
            log.flush()
            self.proc = subprocess.Popen(
                [sys.executable, "-m", f"facusync.{self.name}"], env=env, cwd=REPO_ROOT,
                stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True)
            self.starts += 1
            self._started_at = time.monotonic()
            self._last_ping = self._started_at
            self._ready = False

    def kill(self) -> bool:
        """SIGKILL the running process (a crash); the unit restarts it. False if not running."""
        with self._lock:
            proc = self.proc
            if proc is None or proc.poll() is not None:
                return False
            self._exit_why, self._exit_expected = "SIGKILL by the chaos", True
            proc.send_signal(signal.SIGKILL)
            self.killed_at = time.monotonic()
            return True

    def stop(self) -> None:
        """systemctl stop: SIGTERM, then SIGKILL after the stop timeout; no more restarts."""
        self._stopping.set()
        with self._lock:
            proc = self.proc
            if proc is not None and proc.poll() is None:
                self._exit_why, self._exit_expected = "stopped at the end of the run", True
                proc.terminate()
        if proc is not None:
            try:
                proc.wait(self.stop_timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        for t in self._threads:
            t.join(5)
        self._sock.close()
        self._sock_path.unlink(missing_ok=True)

    @property
    def running(self) -> bool:
        proc = self.proc
        return proc is not None and proc.poll() is None

    @property
    def ready(self) -> bool:
        return self.running and self._ready

    @property
    def up_for(self) -> float:
        """Seconds since the unit last started its process."""
        return time.monotonic() - self._started_at

    def unexpected_exits(self) -> list[Exit]:
        return [e for e in self.exits if not e.expected]

    # -- the emulated systemd ---------------------------------------------------------------------

    def _listen(self) -> None:
        while not self._stopping.is_set():
            try:
                data = self._sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            for line in data.decode("utf-8", "replace").splitlines():
                if line == "READY=1":
                    self._ready = True
                    self._last_ping = time.monotonic()
                elif line == "WATCHDOG=1":
                    self._last_ping = time.monotonic()
                elif line.startswith("STATUS="):
                    self.status_line = line[7:]

    def _supervise(self) -> None:
        while not self._stopping.is_set():
            time.sleep(0.2)
            with self._lock:
                proc = self.proc
                if proc is None:
                    continue
                code = proc.poll()
                if code is None:
                    self._check_watchdog(proc)
                    continue
                if self._stopping.is_set():
                    return
                expected, why = self._exit_expected, self._exit_why or "exited by itself"
                self._exit_why, self._exit_expected = "", False
                self.exits.append(Exit(time.time(), proc.pid, code, expected, why))
                self.proc = None
                if code in (0, EX_CONFIG) or (code < 0 and -code in CLEAN_SIGNALS and not expected):
                    # Restart=on-failure does not restart these; RestartPreventExitStatus=78.
                    self.given_up = (f"facusync-{self.name} {self.exits[-1].describe()}: "
                                     "systemd would not restart it")
                    return
            if self._stopping.wait(self.restart_sec):
                return
            with self._lock:
                if not self._stopping.is_set():
                    self._spawn()

    def _check_watchdog(self, proc: subprocess.Popen[bytes]) -> None:
        now = time.monotonic()
        if not self._ready and now - self._started_at > self.start_timeout:
            why = f"no READY=1 within TimeoutStartSec={self.start_timeout:g}"
        elif self._ready and now - self._last_ping > self.watchdog_sec:
            why = f"no WATCHDOG=1 for WatchdogSec={self.watchdog_sec:g}"
        else:
            return
        # systemd's WatchdogSignal is SIGABRT; then SIGKILL if it lingers. Not expected: a
        # hung loop is a finding even though systemd recovers from it.
        self.watchdog_kills += 1
        self._exit_why, self._exit_expected = f"killed by the watchdog: {why}", False
        with open(self.log_path, "ab") as log:
            log.write(f"---- chaos: watchdog: {why}; sending SIGABRT to pid {proc.pid}\n".encode())
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGABRT)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        self._last_ping = time.monotonic()
