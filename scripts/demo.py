#!/usr/bin/env python3
"""`make demo`: the whole pipeline on a throwaway local stack, in about two minutes.

Starts a private PostgreSQL 15, Redis 7 and the SQL Server stand-in (seeded with a realistic
VW_VENTAS_SYNC), applies the migrations and creates the two roles with `facusync migrate`,
then runs the real `facusync-producer` and `facusync-consumer` as processes, with the same
code paths and the same kind of env file as production. An ERP-like workload keeps changing
the view while the progress is shown live. At the end the workload stops, the queue drains,
`facusync reconcile` catches what polling cannot see (deletes, changes that did not bump
ULTIMA_MODIFICACION), and `facusync verify` must find 0 differences: the exit code says so.

Run with the venv's python (``make demo`` does). Settings, from the
environment:

    DEMO_ROWS=50000    rows seeded into the view before the first (backfill) copy
    DEMO_SECONDS=60    how long the live phase, with the workload running, lasts
    DEMO_RATE=25       changes per second made by the workload
    DEMO_PAUSE=auto    keep the stack up until Enter at the end: auto = when on a terminal
    DEMO_TLS=0         1: every hop over TLS, verified against a throwaway CA; the servers
                       refuse plaintext (the stand-in forces encryption, PostgreSQL allows
                       hostssl only, Redis listens on its tls-port only)

Ctrl+C during the backfill or the live phase ends it early and still drains, reconciles and
verifies; a second Ctrl+C aborts. Whatever happens, every process the demo started is
stopped and nothing is left listening. The logs stay in the demo's folder (printed).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

from devstack.processes import BIN, DaemonExited, tail
from devstack.stack import DATABASE, NOCODB_ROLE
from devstack.stack import Stack as DevStack
from devstack.standin.workload import Workload
from facusync.config import Config, load_config
from facusync.operations.status import collect

STALL_S = 60.0  # no progress for this long during the backfill or a drain: give up, say why


class DemoError(Exception):
    """The demo cannot go on; the message says what happened and where to look."""


@dataclass(frozen=True)
class Settings:
    rows: int
    seconds: float
    rate: float
    pause: bool
    tls: bool

    @classmethod
    def from_env(cls) -> Settings:
        def number(name: str, default: str, lo: float, cast: Callable[[str], Any]) -> Any:
            raw = os.environ.get(name, "").strip() or default
            try:
                value = cast(raw)
            except ValueError:
                raise DemoError(f"{name}={raw!r} is not a number") from None
            if value < lo:
                raise DemoError(f"{name}={raw} is too small: use at least {lo:g}")
            return value

        pause = os.environ.get("DEMO_PAUSE", "auto").strip().lower()
        if pause not in ("auto", "0", "1", "no", "yes"):
            raise DemoError(f"DEMO_PAUSE={pause!r}: use auto, 0 or 1")
        tls = os.environ.get("DEMO_TLS", "0").strip().lower()
        if tls not in ("0", "1", "no", "yes"):
            raise DemoError(f"DEMO_TLS={tls!r}: use 0 or 1")
        missing = [name for name in ("facusync", "facusync-producer", "facusync-consumer")
                   if not (BIN / name).exists()]
        if missing:
            raise DemoError(f"{', '.join(missing)} not found beside {sys.executable}: run "
                            "`make demo` (it installs the venv) or use .venv/bin/python")
        interactive = sys.stdin.isatty() and sys.stdout.isatty()
        return cls(
            rows=number("DEMO_ROWS", "50000", 10, int),
            seconds=number("DEMO_SECONDS", "60", 1, float),
            rate=number("DEMO_RATE", "25", 0, float),
            pause=interactive if pause == "auto" else pause in ("1", "yes"),
            tls=tls in ("1", "yes"),
        )


# -- output --------------------------------------------------------------------------------


class Screen:
    """Redrawn lines on a terminal; periodic plain lines otherwise (CI logs)."""

    def __init__(self, out: TextIO) -> None:
        self.out: TextIO | None = out
        self.tty = out.isatty()
        self.width = shutil.get_terminal_size((100, 24)).columns if self.tty else 200
        self._open_line = False
        self._last_plain = 0.0

    def _write(self, text: str) -> None:
        """A closed terminal or pipe must never stop the demo from cleaning up."""
        if self.out is None:
            return
        try:
            self.out.write(text)
            self.out.flush()
        except (OSError, ValueError):
            self.out = None

    def say(self, text: str = "") -> None:
        self.end_line()
        self._write(text + "\n")

    def step(self, text: str) -> None:
        self.say(f"==> {text}")

    def live(self, text: str, *, every: float) -> None:
        """One progress line: redrawn in place on a terminal, else printed every ``every`` s."""
        if self.tty:
            self._write("\r\x1b[K" + text[: self.width - 1])
            self._open_line = True
        elif time.monotonic() - self._last_plain >= every:
            self._last_plain = time.monotonic()
            self._write(text + "\n")

    def end_line(self) -> None:
        if self._open_line:
            self._open_line = False
            self._write("\n")


def bar(fraction: float, width: int = 30) -> str:
    filled = round(max(0.0, min(1.0, fraction)) * width)
    return "[" + "#" * filled + "." * (width - filled) + "]"


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = max(0.0, seconds)
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds // 60:.0f} min {seconds % 60:02.0f} s"


class Rate:
    """Rows per second over the last few seconds, from (time, count) samples."""

    def __init__(self, window: float = 3.0) -> None:
        self.window = window
        self.samples: deque[tuple[float, int]] = deque()

    def add(self, count: int) -> float:
        now = time.monotonic()
        self.samples.append((now, count))
        while len(self.samples) > 2 and self.samples[0][0] < now - self.window:
            self.samples.popleft()
        t0, c0 = self.samples[0]
        return (count - c0) / (now - t0) if now - t0 > 0.2 else 0.0


# -- Ctrl+C --------------------------------------------------------------------------------


class Interrupts:
    """First Ctrl+C during the backfill or live phase: finish early (still verify).

    Any other Ctrl+C, and SIGTERM/SIGHUP, abort: KeyboardInterrupt unwinds to the cleanup.
    """

    def __init__(self) -> None:
        self.graceful = False
        self.requested = False
        self.aborted_by = signal.SIGINT

    def install(self) -> None:
        signal.signal(signal.SIGINT, self._handler)
        signal.signal(signal.SIGTERM, self._handler)
        signal.signal(signal.SIGHUP, self._handler)

    def _handler(self, signum: int, _frame: FrameType | None) -> None:
        if signum == signal.SIGINT and self.graceful and not self.requested:
            self.requested = True
            return
        self.aborted_by = signal.Signals(signum)
        raise KeyboardInterrupt

    @contextmanager
    def finish_early_allowed(self) -> Iterator[None]:
        self.graceful = True
        try:
            yield
        finally:
            self.graceful = False

    @staticmethod
    def ignore() -> None:
        """During the final clean-up: it has its own time limits and must not be cut short."""
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)


# -- the stack -----------------------------------------------------------------------------


class Stack(DevStack):
    """The development stack, with the demo's settings, its workload and its screen."""

    def __init__(self, settings: Settings, screen: Screen) -> None:
        # Fast polling so changes show up within a second; the workload's late rows (30 s
        # old) fall inside the overlap window.
        super().__init__(Path(tempfile.mkdtemp(prefix="facusync-demo-")), tls=settings.tls,
                         overrides={"SYNC_INTERVAL": "1", "SYNC_OVERLAP": "60"})
        self.screen = screen
        self.workload: Workload | None = None
        self.cfg: Config | None = None

    def configure(self) -> None:
        """The env file the daemons and the admin commands read (mode 0600)."""
        self.cfg = load_config(self.write_env_file(), environ={})

    def admin(self, *args: str, superuser: bool = False, check: bool = True,
              show: bool = True) -> subprocess.CompletedProcess[str]:
        """Run the admin command; its output is shown indented."""
        # migrate creates the roles: it runs as the cluster's owner
        result = self.facusync(*args, env=self.superuser_env() if superuser else None)
        if show:
            for line in (result.stdout + result.stderr).rstrip().splitlines():
                self.screen.say("    " + line)
        if check and result.returncode != 0:
            raise DemoError(f"`facusync {' '.join(args)}` exited with {result.returncode}")
        return result

    def check_daemons(self) -> None:
        self.producer.check()
        self.consumer.check()

    def pg_rows(self) -> tuple[int, int]:
        """(all rows, rows flagged deleted) in datos_vista."""
        with self.admin_cursor(DATABASE) as cur:
            cur.execute("SELECT count(*), count(*) FILTER (WHERE eliminado_en_origen) FROM datos_vista")
            total, deleted = cur.fetchone()
        return int(total), int(deleted)

    def close(self) -> list[str]:
        problems: list[str] = []
        if self.workload is not None:
            try:
                self.workload.stop()
            except Exception as exc:
                problems.append(f"workload: {type(exc).__name__}: {exc}")
        return problems + super().close()


# -- phases --------------------------------------------------------------------------------


def set_up(stack: Stack, settings: Settings, screen: Screen) -> None:
    t0 = time.monotonic()
    over = " over TLS (throwaway CA; plaintext refused)" if settings.tls else ""
    screen.step(f"starting throwaway PostgreSQL 15, Redis 7 and the SQL Server stand-in{over}")
    stack.start_servers()
    ports = stack.ports()
    screen.say(f"    ports: postgresql {ports['postgresql']}, redis {ports['redis']}, "
               f"sqlserver {ports['sqlserver']}   (folder {stack.workdir})")
    assert stack.standin is not None
    screen.step(f"seeding VW_VENTAS_SYNC with {settings.rows:,} realistic rows")
    stack.standin.seed(settings.rows, seed=20261127)
    stack.configure()
    screen.say(f"    env file {stack.env_file} (mode 0600, like /etc/facusync/facusync.env)")
    screen.step("facusync migrate --create-roles (schema, the sync role and the NocoDB role)")
    stack.admin("migrate", "--create-roles", superuser=True)
    screen.step("facusync check (can the daemons reach all three servers with this env file?)")
    stack.admin("check")
    screen.say(f"    set up in {time.monotonic() - t0:.1f} s")


def start_daemons(stack: Stack, screen: Screen) -> None:
    screen.step("starting facusync-producer and facusync-consumer "
                f"(logs: {stack.producer.log_path.name}, {stack.consumer.log_path.name})")
    stack.producer.start()
    stack.consumer.start()


def backfill(stack: Stack, screen: Screen, interrupts: Interrupts) -> float:
    """The first copy of the whole view; returns its duration."""
    assert stack.standin is not None
    screen.step("backfill: the first copy of the whole view")
    t0 = time.monotonic()
    rate = Rate()
    best, best_at = -1, t0
    while True:
        stack.check_daemons()
        total = stack.standin.count()
        done, _ = stack.pg_rows()
        speed = rate.add(done)
        now = time.monotonic()
        if done > best:
            best, best_at = done, now
        eta = (total - done) / speed if speed > 0 else None
        line = (f"backfill {bar(done / max(total, 1))} {100 * done / max(total, 1):5.1f}%  "
                f"{done:,}/{total:,} rows  {speed:,.0f} rows/s  ETA {duration(eta)}")
        if done >= total:
            screen.live(line.replace(f"ETA {duration(eta)}", "done"), every=0)
            screen.end_line()
            elapsed = now - t0
            screen.say(f"    {total:,} rows copied in {elapsed:.1f} s "
                       f"({total / max(elapsed, 0.001):,.0f} rows/s end to end)")
            return elapsed
        screen.live(line, every=2.0)
        if interrupts.requested:
            screen.end_line()
            screen.say("    Ctrl+C: finishing early")
            return now - t0
        if now - best_at > STALL_S:
            raise DemoError(f"the backfill made no progress for {STALL_S:.0f} s; see the logs in "
                            f"{stack.workdir}:\n{tail(stack.producer.log_path)}\n{tail(stack.consumer.log_path)}")
        time.sleep(0.25 if screen.tty else 0.5)


def live_line(data: dict[str, Any], view_rows: int, changes: int, applied_per_s: float,
              elapsed: float, total: float) -> str:
    """Rows synced, lag and queue, from the same facts `facusync status` shows."""
    queue = data.get("queue", {})
    pg = data.get("postgresql", {})
    newest = pg.get("newest_change_age_s")
    return (f"live {elapsed:3.0f}/{total:.0f} s  view {view_rows:,}  PostgreSQL "
            f"{pg.get('rows', 0) - pg.get('soft_deleted', 0):,}  changes {changes:,}  "
            f"queue {queue.get('length', '?')}  lag {queue.get('oldest_age_s', 0):.1f} s  "
            f"newest {duration(newest) if newest is not None else '-'} old  "
            f"{applied_per_s:,.0f} rows/s  {data.get('health', {}).get('state', '?')}")


def applied_total(data: dict[str, Any]) -> int:
    """Rows the consumers committed since they started (their stats hashes in Redis)."""
    return sum(int(c.get("total_rows") or 0) for c in data.get("consumers", {}).values())


def live(stack: Stack, settings: Settings, screen: Screen, interrupts: Interrupts) -> None:
    """The workload changes the view; the pipeline follows. Ends after DEMO_SECONDS or Ctrl+C."""
    assert stack.standin is not None and stack.cfg is not None
    screen.step(f"live: an ERP-like workload changes the view ({settings.rate:g} changes/s: "
                "inserts, updates, deletes, late commits) for "
                f"{settings.seconds:g} s; Ctrl+C ends it early")
    screen.say("    deletes are invisible to polling: PostgreSQL keeps those rows until the "
               "reconcile at the end flags them")
    if settings.rate > 0:  # the workload treats rate 0 as "as fast as possible"
        stack.workload = Workload(stack.standin.db_path, rate=settings.rate, seed=11,
                                  delete_ratio=0.03, late_ratio=0.03).start()
    t0 = time.monotonic()
    rate = Rate(window=5.0)
    while not interrupts.requested:
        elapsed = time.monotonic() - t0
        if elapsed >= settings.seconds:
            break
        stack.check_daemons()
        data, _health = collect(stack.cfg)
        changes = len(stack.workload.events) if stack.workload is not None else 0
        line = live_line(data, stack.standin.count(), changes,
                         rate.add(applied_total(data)), elapsed, settings.seconds)
        screen.live(line, every=5.0)
        time.sleep(min(1.0, max(0.0, settings.seconds - elapsed)))
    screen.end_line()
    if interrupts.requested:
        screen.say("    Ctrl+C: finishing early")


def wait_drained(stack: Stack, screen: Screen, since: float | None, what: str) -> None:
    """Until the stream is empty (all committed) and, when ``since`` is given, a producer
    cycle that started after it has been appended (so it saw every change made before)."""
    assert stack.cfg is not None
    t0 = time.monotonic()
    best, best_at = None, t0
    while True:
        stack.check_daemons()
        data, _ = collect(stack.cfg)
        if "queue" not in data:
            raise DemoError(f"cannot read the queue: {data.get('redis_error')}")
        polled = since is None or float(data["producer"].get("last_cycle_at") or 0) > since
        length = int(data["queue"]["length"])
        if polled and length == 0:
            screen.live(f"{what}: queue empty", every=0)
            screen.end_line()
            return
        screen.live(f"{what}: {length:,} change(s) in the queue" if polled or length
                    else f"{what}: waiting for the producer's next poll", every=2.0)
        if best is None or length < best:
            best, best_at = length, time.monotonic()
        if time.monotonic() - best_at > STALL_S:
            daemon = stack.consumer if polled else stack.producer
            problem = (f"the queue did not drain for {STALL_S:.0f} s ({length} left)" if polled
                       else f"the producer did not poll for {STALL_S:.0f} s")
            raise DemoError(f"{problem}; see {daemon.log_path}:\n{tail(daemon.log_path)}")
        time.sleep(0.25)


def finish(stack: Stack, screen: Screen) -> int:
    """Stop the workload, drain, reconcile, status, verify; returns verify's exit code."""
    if stack.workload is not None:
        counts = stack.workload.stop()
        stack.workload = None
        done = ", ".join(f"{v:,} {k}" for k, v in sorted(counts.items()) if k != "total")
        screen.step(f"workload stopped after {counts.get('total', 0):,} changes ({done or 'none'})")
    wait_drained(stack, screen, time.time(), "    draining")
    screen.step("facusync reconcile (finds deletes and changes that did not bump "
                "ULTIMA_MODIFICACION)")
    stack.admin("reconcile")
    wait_drained(stack, screen, None, "    applying")
    screen.step("facusync status")
    status = stack.admin("status", check=False)
    if status.returncode != 0:
        screen.say(f"    (status exit code {status.returncode}: 1 degraded, 2 down)")
    screen.step("facusync verify (SQL Server and PostgreSQL, row by row)")
    verify = stack.admin("verify", check=False)
    return verify.returncode


def summary(stack: Stack, screen: Screen) -> None:
    """What is in PostgreSQL now, in the words of the tables people use."""
    rows, deleted = stack.pg_rows()
    with stack.admin_cursor(DATABASE) as cur:
        cur.execute("SELECT count(*) FROM datos_seguimiento")
        (tracking,) = cur.fetchone()
    screen.say(f"    datos_vista: {rows:,} rows ({deleted:,} flagged eliminado_en_origen, kept for "
               f"their notes); datos_seguimiento: {tracking:,} tracking rows, ready for NocoDB")


def how_to_look(stack: Stack, screen: Screen, paused: bool) -> None:
    assert stack.pg is not None
    password = f"$(sed -n 's/^PG_NOCODB_ROLE_PASSWORD=//p' {stack.env_file})"
    screen.step("look around" + (" (the stack stays up until you press Enter)" if paused else ""))
    if paused:
        screen.say("    the data, as NocoDB sees it (the password is in the env file, not shown):")
        screen.say(f"      PGPASSWORD=\"{password}\" psql -h {stack.pg.host} -p {stack.pg.port} "
                   f"-U {NOCODB_ROLE} -d {DATABASE}")
        screen.say("      e.g.  SELECT conduce, cliente, facturado, nota, ruta FROM v_planificacion "
                   "ORDER BY ultima_modificacion DESC LIMIT 10;")
        screen.say(f"    the admin command:  {BIN / 'facusync'} --env-file {stack.env_file} status")
    else:
        screen.say(f"    the data: psql -h {stack.pg.host} -p {stack.pg.port} -U {NOCODB_ROLE} "
                   f"-d {DATABASE} (password: PG_NOCODB_ROLE_PASSWORD in the env file; the servers "
                   "stop when the demo ends: run it on a terminal to keep them up until Enter)")
    screen.say(f"    the logs (kept after the demo): {stack.producer.log_path}")
    screen.say(f"                                    {stack.consumer.log_path}")


def main() -> int:
    screen = Screen(sys.stdout)
    try:
        settings = Settings.from_env()
    except DemoError as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return 2
    interrupts = Interrupts()
    interrupts.install()
    started = time.monotonic()
    stack: Stack | None = None
    code = 1
    try:
        stack = Stack(settings, screen)
        set_up(stack, settings, screen)
        start_daemons(stack, screen)
        with interrupts.finish_early_allowed():
            backfill(stack, screen, interrupts)
            if not interrupts.requested:
                live(stack, settings, screen, interrupts)
        verify_code = finish(stack, screen)
        summary(stack, screen)
        if verify_code == 0:
            screen.say(f"\nIN SYNC: facusync verify found 0 differences "
                       f"({time.monotonic() - started:.0f} s so far)")
            code = 0
        else:
            screen.say(f"\nFAILED: facusync verify exited with {verify_code}: "
                       "SQL Server and PostgreSQL differ (see above)")
        how_to_look(stack, screen, settings.pause)
        if settings.pause:
            with suppress(KeyboardInterrupt, EOFError):
                input("\npress Enter to stop the servers and end the demo ")
    except KeyboardInterrupt:
        screen.say(f"\ninterrupted ({interrupts.aborted_by.name}): shutting down")
        code = 128 + interrupts.aborted_by  # the shell's convention: 130 for Ctrl+C
    except (DemoError, DaemonExited) as exc:
        screen.say(f"\ndemo failed: {exc}")
    except Exception as exc:
        screen.say(f"\ndemo failed: unexpected {type(exc).__name__}: {exc}")
        import traceback

        with suppress(OSError):
            traceback.print_exc()
    finally:
        Interrupts.ignore()
        if stack is not None:
            screen.step("shutting down (SIGTERM to the daemons, then the servers)")
            problems = stack.close()
            for problem in problems:
                screen.say(f"    problem while stopping: {problem}")
            if problems and code == 0:
                code = 1
            screen.say(f"    {'stopped' if problems else 'nothing left running'}; logs kept in "
                       f"{stack.workdir}")
        screen.say(f"demo finished in {time.monotonic() - started:.0f} s, exit code {code}")
        if screen.out is None and code == 0:
            code = 1  # nobody saw the result: do not claim success
    return code


if __name__ == "__main__":
    sys.exit(main())
