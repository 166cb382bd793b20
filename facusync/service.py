"""What both daemons share: start-up, signals, systemd notifications, backoff, state logging.

Signals are handled in one place: SIGTERM/SIGINT only set a flag, and the loops check it
between units of work (a chunk, a batch), so a unit is either finished or abandoned
unacknowledged, never half-done. systemd is told READY once connected, WATCHDOG=1 from the
loop itself (so a hung loop is killed and restarted), a one-line STATUS, and STOPPING.
"""

from __future__ import annotations

import argparse
import logging
import random
import signal
import sys
import threading
import time
from collections.abc import Callable
from types import FrameType

from facusync import metrics
from facusync.config import Config, load_config
from facusync.errors import EX_CONFIG, EX_SOFTWARE, AccessError, ConfigError, FacusyncError, SchemaError
from facusync.logsetup import setup_logging

log = logging.getLogger("facusync.service")

try:
    import sdnotify
except ImportError:  # pragma: no cover - always installed in production
    sdnotify = None


class Service:
    """The running daemon's link to systemd and to its stop signal."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.stopping = threading.Event()
        self._notifier = sdnotify.SystemdNotifier() if sdnotify else None
        self._last_status = ""
        self._last_alive = time.monotonic()
        self._pinger: threading.Thread | None = None

    def install_signal_handlers(self) -> None:
        """SIGTERM and SIGINT ask the loop to stop after its current unit of work."""

        def handler(signum: int, _frame: FrameType | None) -> None:
            if not self.stopping.is_set():
                log.info("stop requested", extra={"signal": signal.Signals(signum).name})
                self.notify("STOPPING=1")
            self.stopping.set()

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)

    def notify(self, message: str) -> None:
        if self._notifier is not None:
            self._notifier.notify(message)

    def ready(self) -> None:
        self.notify("READY=1")
        metrics.ready(self.stopping)

    def alive(self) -> None:
        """Feed the watchdog: call only from the loop, so a hung loop starves it."""
        self._last_alive = time.monotonic()
        self.notify("WATCHDOG=1")

    def keep_alive_during_calls(self, grace: float) -> None:
        """Feed the watchdog from a thread while the loop is inside one blocking call.

        A first full read of a large view may not return its first rows for longer than
        WatchdogSec, and every such call has its own timeout (MSSQL_QUERY_TIMEOUT, ...). The
        thread keeps pinging only while the loop reported progress within `grace` seconds
        (that timeout plus a margin), so a loop that is really stuck is still killed.
        """
        if self._pinger is not None:
            return

        def ping() -> None:
            while not self.stopping.wait(2.0):
                if time.monotonic() - self._last_alive < grace:
                    self.notify("WATCHDOG=1")

        self._pinger = threading.Thread(target=ping, name="facusync-watchdog", daemon=True)
        self._pinger.start()

    def status(self, line: str) -> None:
        if line != self._last_status:
            self._last_status = line
            self.notify("STATUS=" + line.replace("\n", " "))

    def sleep(self, seconds: float) -> bool:
        """Wait, feeding the watchdog; returns False as soon as a stop is requested."""
        deadline = time.monotonic() + seconds
        while not self.stopping.is_set():
            self.alive()
            left = deadline - time.monotonic()
            if left <= 0:
                return True
            self.stopping.wait(min(left, 1.0))
        return False


class Backoff:
    """Capped exponential backoff with jitter, reset after a success."""

    def __init__(self, cap: float, base: float = 0.5) -> None:
        self.cap = cap
        self.base = base
        self.attempt = 0

    def next_delay(self) -> float:
        delay = min(self.cap, self.base * (2**self.attempt))
        self.attempt += 1
        return float(delay * random.uniform(0.8, 1.0))

    def reset(self) -> None:
        self.attempt = 0


class StateLog:
    """Logs a failure once per change of state (not every retry), and the recovery."""

    def __init__(self, logger: logging.Logger) -> None:
        self.logger = logger
        self.current: str | None = None

    def failing(self, what: str, cause: str, **extra: object) -> None:
        metrics.failing(what, cause)
        state = f"{what}: {cause}"
        if state != self.current:
            self.logger.error("%s unavailable: %s (retrying with backoff)", what, cause,
                              extra={"target": what, "cause": cause, **extra})
            self.current = state

    def ok(self, what: str = "") -> None:
        metrics.recovered()
        if self.current is not None:
            self.logger.info("recovered: %s", what or self.current, extra={"recovered": self.current})
            self.current = None


def daemon_main(
    prog: str, description: str, run: Callable[[Config, Service, argparse.Namespace], int],
    argv: list[str] | None = None,
) -> int:
    """Parse --env-file, load and validate the config (exit 78 when wrong), run the loop."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--env-file", help="read variables from this file (the environment wins)")
    parser.add_argument("--once", action="store_true", help="run one cycle and exit (for tests)")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.env_file)
    except (ConfigError, AccessError) as exc:
        # Once: as a JSON line under journald, as text on a terminal.
        setup_logging("INFO", "auto", sys.stderr)
        log.error("%s", exc, extra={"problems": getattr(exc, "problems", [str(exc)])})
        return EX_CONFIG
    setup_logging(cfg.log_level, cfg.log_format)
    service = Service(prog)
    service.install_signal_handlers()
    try:
        metrics.start(cfg, prog)
        return run(cfg, service, args)
    except SchemaError as exc:
        log.error("%s", exc)
        return EX_CONFIG
    except FacusyncError as exc:
        log.error("%s", exc)
        return exc.exit_code
    except Exception:  # last resort: log it as JSON so journald keeps the traceback
        log.exception("unexpected error; exiting so systemd restarts the service")
        return EX_SOFTWARE
