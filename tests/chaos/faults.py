"""The fault schedule (drawn from the seed) and the thread that carries it out.

Three tracks, so that faults combine the way real incidents do (a crash during an outage):

- *windows* (one at a time): PostgreSQL stopped; the stand-in dropping connections after N
  rows of a result, stalling (before answering, or after N rows), or answering slowly; Redis
  stopped while both daemons are restarted (servers down while a daemon starts);
- *long* conditions (one at a time, beside the windows; once each): the ERP's writer clock
  lagging by more than SYNC_OVERLAP; SQL Server answering every read slower than the source
  lock's TTL (but within MSSQL_QUERY_TIMEOUT); a DBA holding an ACCESS EXCLUSIVE lock on
  datos_vista longer than WatchdogSec; a view column renamed by the ERP team, then back;
- *instants*, at any time, also inside a window: SIGKILL of the producer or the consumer,
  Redis restarted losing everything or keeping its AOF, Redis losing everything in the middle
  of a producer cycle, a row dated in the future, and the two kinds of poison row.

Every kind happens at least once in every run, whatever its length; longer runs draw more.
The schedule depends only on the seed, the length and the outage duration, so a failing run
can be replayed with the same faults at the same times (the interleaving with the daemons'
own timing is, of course, not replayable).
"""

from __future__ import annotations

import contextlib
import heapq
import random
import signal
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import psycopg2
import redis

from devstack.servers import signal_processes
from devstack.standin.data import now as source_now
from facusync.redisconn import Keys
from tests.chaos.actors import insert_null_key, insert_too_long
from tests.chaos.stack import DATABASE, Stack, cli

WINDOW_KINDS = ("pg_outage", "standin_drop", "standin_hang", "standin_slow", "servers_down",
                "pg_frozen", "redis_frozen")
# Windows in which some server does not answer the producer as usual.
OUTAGE_KINDS = WINDOW_KINDS
LONG_KINDS = ("writer_skew", "slow_source", "pg_lock_wait", "column_renamed")
INSTANT_KINDS = ("kill_producer", "kill_consumer", "redis_wipe", "redis_aof_restart",
                 "poison_too_long", "poison_null_key", "redis_wipe_mid_cycle", "future_row")
# Issue 16's kinds: once each per run, whatever its length (they are long or heavy).
ONCE_KINDS = frozenset({"servers_down", *LONG_KINDS, "redis_wipe_mid_cycle", "future_row"})
LOCK_TTL = 15.0  # facusync.producer.LOCK_TTL: the slow source answers slower than this
WATCHDOG_SEC = 30.0  # the units' WatchdogSec: the lock wait lasts longer than this
RENAMED = ("NUMERO_FACTURA", "NRO_FACTURA")  # a column the ERP workload keeps changing
# Relative frequency of the extra faults a longer run draws beyond one of each kind.
WEIGHTS = {"kill_producer": 3, "kill_consumer": 3, "redis_wipe": 1, "redis_aof_restart": 1,
           "poison_too_long": 1, "poison_null_key": 1, "pg_outage": 0.5, "standin_drop": 1,
           "standin_hang": 1, "standin_slow": 1, "pg_frozen": 0.5, "redis_frozen": 0.5}
LABELS = {
    "kill_producer": "SIGKILL producer",
    "kill_consumer": "SIGKILL consumer",
    "redis_wipe": "Redis restart, data lost",
    "redis_aof_restart": "Redis restart with AOF",
    "pg_outage": "PostgreSQL stopped",
    "pg_frozen": "PostgreSQL frozen (SIGSTOP)",
    "redis_frozen": "Redis frozen (SIGSTOP)",
    "standin_drop": "stand-in drops mid-result",
    "standin_hang": "stand-in stalls",
    "standin_slow": "stand-in slow answers",
    "poison_too_long": "poison: value too long",
    "poison_null_key": "poison: NULL key",
    "servers_down": "Redis down while daemons start",
    "writer_skew": "writer clock behind",
    "slow_source": "stand-in slower than lock TTL",
    "pg_lock_wait": "PostgreSQL lock > WatchdogSec",
    "column_renamed": "view column renamed",
    "redis_wipe_mid_cycle": "Redis lost mid-cycle",
    "future_row": "row dated in the future",
}
SECONDS_PER_FAULT = 10.0  # on average, beyond the first of each kind
WARMUP, TAIL = 5.0, 5.0
# The longest each long condition may last; they run one after the other (plan_long), so a
# run must be long enough for all of them at their longest.
LONG_MAX = {"writer_skew": 30.0, "slow_source": 3.5 * (LOCK_TTL + 3),
            "pg_lock_wait": WATCHDOG_SEC + 15, "column_renamed": 20.0}
MIN_SECONDS = WARMUP + sum(LONG_MAX.values()) + TAIL  # 168 s: CHAOS_MINUTES=3 is the shortest


@dataclass(frozen=True)
class Fault:
    at: float  # seconds after the chaos started
    kind: str
    duration: float = 0.0  # windows only
    # Rows before a drop or stall; the delay of slow answers; 1 = a crash (PostgreSQL, Redis).
    param: float = 0.0

    def describe(self) -> str:
        text = LABELS[self.kind]
        if self.kind == "standin_drop":
            text += f" (after {int(self.param)} rows)"
        elif self.kind == "standin_hang":
            text += " (before answering)" if self.param < 0 else f" (after {int(self.param)} rows)"
        elif self.kind == "standin_slow":
            text += f" ({self.param:.1f} s per answer)"
        elif self.kind == "redis_aof_restart":
            text += " (crash: SIGKILL)" if self.param else " (clean: SIGTERM)"
        elif self.kind == "pg_outage":
            text += " (crash: -m immediate)" if self.param else " (clean: -m fast)"
        elif self.kind == "writer_skew":
            text += f" by {self.param:.0f} s (inserts only, some committed SYNC_OVERLAP + 10 s late)"
        elif self.kind == "slow_source":
            text += f" ({self.param:.1f} s per read; lock TTL {LOCK_TTL:g} s)"
        elif self.kind == "column_renamed":
            text += f" ({RENAMED[0]} -> {RENAMED[1]})"
        elif self.kind == "future_row":
            text += " (9999-12-31)" if self.param else " (a day ahead)"
        if self.duration:
            text += f" for {self.duration:.0f} s"
        return text


def plan(seed: int, seconds: float, pg_outage: float, sync_overlap: float = 60.0) -> list[Fault]:
    """The faults of a run of ``seconds``, in time order; the same for the same arguments.

    ValueError for a run shorter than MIN_SECONDS: every kind is injected in every run, and
    the long conditions alone need that long.
    """
    if seconds < MIN_SECONDS:
        raise ValueError(
            f"a chaos run of {seconds:g} s is too short: every fault kind runs in every run, and "
            f"the long conditions ({', '.join(LONG_MAX)}) need up to {MIN_SECONDS:g} s "
            f"one after the other; run at least {MIN_SECONDS / 60:.1f} minutes (CHAOS_MINUTES=3)")
    rng = random.Random(seed)
    extra = max(0, round(seconds / SECONDS_PER_FAULT) - len(WEIGHTS))
    kinds = list(WEIGHTS) + rng.choices(list(WEIGHTS), weights=list(WEIGHTS.values()), k=extra)
    kinds += sorted(ONCE_KINDS)
    span = max(1.0, seconds - WARMUP - TAIL)
    windows: list[tuple[str, float, float]] = []
    for kind in [k for k in kinds if k in WINDOW_KINDS]:
        if kind == "pg_outage":
            windows.append((kind, pg_outage, float(rng.random() < 0.5)))  # 1: a crash
        elif kind == "standin_drop":
            windows.append((kind, rng.uniform(3, 10), float(rng.randrange(0, 400))))
        elif kind == "standin_hang":
            windows.append((kind, rng.uniform(4, 20), float(rng.choice([-1, rng.randrange(0, 400)]))))
        elif kind == "servers_down":
            windows.append((kind, rng.uniform(15, 25), 0.0))
        elif kind in ("pg_frozen", "redis_frozen"):  # the connections stay open, no answer
            windows.append((kind, rng.uniform(5, 15), 0.0))
        else:
            windows.append((kind, rng.uniform(4, 15), round(rng.uniform(0.5, 3.0), 1)))
    rng.shuffle(windows)
    # Keep every first-of-a-kind; drop extra windows until they fill at most 70 % of the span.
    while sum(w[1] for w in windows) > 0.7 * span:
        kinds_seen = Counter(w[0] for w in windows)
        extras = [i for i, w in enumerate(windows) if kinds_seen[w[0]] > 1]
        if not extras:
            break
        windows.pop(extras[-1])
    # A short run with long PostgreSQL outages: shorten the stand-in's windows to fit.
    fixed = sum(w[1] for w in windows if w[0] == "pg_outage")
    others = sum(w[1] for w in windows if w[0] != "pg_outage")
    if others and fixed + others > 0.9 * span:
        scale = max(0.9 * span - fixed, 0.0) / others
        windows = [w if w[0] == "pg_outage" else (w[0], max(1.0, w[1] * scale), w[2]) for w in windows]
    free = max(0.0, span - sum(w[1] for w in windows))
    cuts = sorted(rng.uniform(0, free) for _ in windows)
    faults: list[Fault] = []
    busy = 0.0
    previous_cut = 0.0
    for (kind, duration, param), cut in zip(windows, cuts, strict=True):
        busy += cut - previous_cut
        previous_cut = cut
        faults.append(Fault(round(WARMUP + busy, 1), kind, round(duration, 1), param))
        busy += duration
    faults += plan_long(rng, span, sync_overlap)
    for kind in [k for k in kinds if k in INSTANT_KINDS]:
        # A Redis with AOF is restarted cleanly or crashes (appendfsync everysec: the last
        # second of writes may be lost, a consistent prefix of the history remains).
        param = float(rng.random() < 0.5) if kind in ("redis_aof_restart", "future_row") else 0.0
        faults.append(Fault(round(WARMUP + rng.uniform(0, span), 1), kind, 0.0, param))
    return sorted(faults, key=lambda f: (f.at, f.kind))


def plan_long(rng: random.Random, span: float, sync_overlap: float) -> list[Fault]:
    """The long conditions, one after the other in a random order, beside the windows."""
    slow = round(rng.uniform(LOCK_TTL + 1, LOCK_TTL + 3), 1)
    long_ones = [
        # Behind by less than SYNC_OVERLAP, so that its rows stay within SYNC_OVERLAP of the
        # newest version seen (issue 16, situation 3); its late rows, committed later still,
        # arrive more than SYNC_OVERLAP after their version (lost by the old narrowing).
        ("writer_skew", rng.uniform(20, LONG_MAX["writer_skew"]),
         round(sync_overlap * rng.uniform(0.7, 0.9))),
        # Long enough for a restarted producer to finish a cycle of a few slow reads.
        ("slow_source", 3.5 * slow, slow),  # at most LONG_MAX["slow_source"]
        ("pg_lock_wait", rng.uniform(WATCHDOG_SEC + 5, LONG_MAX["pg_lock_wait"]), 0.0),
        ("column_renamed", rng.uniform(10, LONG_MAX["column_renamed"]), 0.0),
    ]
    rng.shuffle(long_ones)
    free = max(0.0, span - sum(d for _, d, _ in long_ones))
    cuts = sorted(rng.uniform(0, free) for _ in long_ones)
    out, busy, previous_cut = [], 0.0, 0.0
    for (kind, duration, param), cut in zip(long_ones, cuts, strict=True):
        busy += cut - previous_cut
        previous_cut = cut
        out.append(Fault(round(WARMUP + busy, 1), kind, round(duration, 1), float(param)))
        busy += duration
    return out


@dataclass
class Injector:
    """Carries out the schedule in a thread; ``finish()`` ends every open window."""

    stack: Stack
    faults: list[Fault]
    started: float = 0.0  # time.monotonic() of the chaos start
    done: Counter[str] = field(default_factory=Counter)
    timeline: list[str] = field(default_factory=list)
    poison_keys: list[str] = field(default_factory=list)  # too-long rows, by conduce
    poison_markers: list[str] = field(default_factory=list)  # NULL-key rows, by CLIENTE
    poison_at: dict[str, float] = field(default_factory=dict)  # key or marker -> when written
    wipes_at: list[float] = field(default_factory=list)  # when Redis lost its data
    # Rows the injector wrote at SQL Server's clock: (time.time() after, version at least).
    stamped: list[tuple[float, datetime]] = field(default_factory=list)
    error: str | None = None
    workload: Any = None  # the ERP workload (devstack.standin.workload.Workload), for writer_skew
    # What a fault showed while it lasted (a daemon not READY, a cycle that never finished...).
    findings: list[str] = field(default_factory=list)
    windows_seen: list[tuple[str, float, float]] = field(default_factory=list)  # kind, begin, end

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._open: dict[str, Callable[[], None]] = {}  # window kind -> how to end it
        self._began: dict[str, float] = {}  # original window kinds -> when they began
        self._thread = threading.Thread(target=self._run, daemon=True, name="fault-injector")
        self._lock = threading.Lock()

    def start(self, started: float) -> None:
        self.started = started
        self._thread.start()

    def now(self) -> float:
        return time.monotonic() - self.started

    def note(self, text: str) -> None:
        line = f"t={self.now():6.1f}s  {text}"
        with self._lock:
            self.timeline.append(line)
        print(f"chaos: {line}", flush=True)

    def _run(self) -> None:
        events: list[tuple[float, int, str, Fault]] = []
        for i, fault in enumerate(self.faults):
            heapq.heappush(events, (fault.at, i, "begin", fault))
        seq = len(self.faults)
        try:
            while events and not self._stop.is_set():
                at, _, what, fault = heapq.heappop(events)
                if self._stop.wait(max(0.0, at - self.now())):
                    break
                if what == "end":
                    self._end(fault.kind)
                    continue
                self._begin(fault)
                if fault.duration:
                    seq += 1
                    heapq.heappush(events, (at + fault.duration, seq, "end", fault))
        except Exception:
            self.error = traceback.format_exc()
            self.note(f"the injector failed: {self.error.strip().splitlines()[-1]}")

    def _begin(self, fault: Fault) -> None:
        s = self.stack
        kind = fault.kind
        if kind in ("redis_wipe", "redis_aof_restart", "redis_wipe_mid_cycle") \
                and ("servers_down" in self._open or "redis_frozen" in self._open):
            self.note(f"{LABELS[kind]}: Redis is down or frozen, skipped")
            return
        if kind == "pg_lock_wait" and "pg_frozen" in self._open:
            self.note(f"{LABELS[kind]}: PostgreSQL is frozen, skipped")
            return
        if kind in ISSUE16_BEGIN:
            ISSUE16_BEGIN[kind](self, fault)
            self.done[kind] += 1
            return
        if kind in ("kill_producer", "kill_consumer"):
            daemon = s.producer if kind == "kill_producer" else s.consumer
            # Just restarted (RestartSec)? Wait for the new process, as a crash needs one.
            deadline = time.monotonic() + s.settings.restart_sec + 15
            while not daemon.running and time.monotonic() < deadline and not self._stop.is_set():
                time.sleep(0.2)
            pid = daemon.proc.pid if daemon.proc is not None else None
            if not daemon.kill():
                self.note(f"{LABELS[kind]}: not running, skipped")
                return
            self.note(f"{LABELS[kind]} (pid {pid})")
        elif kind == "redis_wipe":
            self.note(LABELS[kind] + " ...")
            self.wipes_at.append(self.now())
            s.redis.restart(keep_data=False)
        elif kind == "redis_aof_restart":
            self.note(fault.describe() + " ...")
            if fault.param:
                s.redis.stop(kill=True)
                s.redis.start()
            else:
                s.redis.restart(keep_data=True)
        elif kind == "poison_too_long":
            key = f"CHAOS-LONG-{len(self.poison_keys) + 1:03d}"
            stamp = source_now()
            insert_too_long(s.standin, key)
            self.stamped.append((time.time(), stamp))
            self.poison_keys.append(key)
            self.poison_at[key] = self.now()
            self.note(f"{LABELS[kind]}: {key}")
        elif kind == "poison_null_key":
            marker = f"CHAOS-NULL-{len(self.poison_markers) + 1:03d}"
            stamp = source_now()
            insert_null_key(s.standin, marker)
            self.stamped.append((time.time(), stamp))
            self.poison_markers.append(marker)
            self.poison_at[marker] = self.now()
            self.note(f"{LABELS[kind]}: CLIENTE={marker}")
        elif kind == "pg_outage":
            self.note(fault.describe())
            s.pg.stop("immediate" if fault.param else "fast")
            self._open[kind] = s.pg.start_again
            self._began[kind] = self.now()
        elif kind in ("pg_frozen", "redis_frozen"):
            pids = (s.pg if kind == "pg_frozen" else s.redis).freeze()
            self.note(f"{fault.describe()} (pids {pids})")
            self._open[kind] = lambda: thaw(pids)
            self._began[kind] = self.now()
        else:
            if kind == "standin_drop":
                s.standin.set_fault(drop_after_rows=int(fault.param))
            elif kind == "standin_hang":
                rows = None if fault.param < 0 else int(fault.param)
                s.standin.set_fault(hang=True, drop_after_rows=rows)
            else:
                s.standin.set_fault(delay=fault.param)
            self.note(fault.describe())
            self._open[kind] = s.standin.clear_faults
            self._began[kind] = self.now()
        self.done[kind] += 1

    def _end(self, kind: str) -> None:
        end = self._open.pop(kind, None)
        if end is not None:
            end()
            began = self._began.pop(kind, None)
            if began is not None:  # the original windows; issue 16's record their own
                self.windows_seen.append((kind, began, self.now()))
            self.note(f"end of {LABELS[kind]}")

    def _window(self, fault: Fault, end: Callable[[], None]) -> None:
        """Open a window of the issue-16 kinds; its end is recorded for overlap checks."""
        began = self.now()

        def finish() -> None:
            end()
            self.windows_seen.append((fault.kind, began, self.now()))

        self._open[fault.kind] = finish
        self.note(fault.describe())

    def quiet_since(self, began: float, kinds: tuple[str, ...]) -> float | None:
        """When the last window of `kinds` open since `began` ended (`began` if none was);
        None while one is still open."""
        if any(k in kinds for k in self._open):
            return None
        ends = [e for k, _, e in self.windows_seen if k in kinds and e >= began]
        return max([began, *ends])

    # -- issue 16's kinds ----------------------------------------------------------------------

    def _servers_down(self, fault: Fault) -> None:
        """Redis stops; both daemons are restarted while it is down (boot order, a remote
        server restarting). Before Redis returns they must be running, READY, and say in
        their STATUS what they wait for."""
        s = self.stack
        s.redis.stop()
        for daemon in (s.producer, s.consumer):
            daemon.kill()
        restarted_at = time.monotonic()

        def end() -> None:
            for daemon in (s.producer, s.consumer):
                if daemon.killed_at > restarted_at:
                    # Killed again inside the window (an instant fault): judge the restart
                    # after that kill, still with Redis down.
                    deadline = time.monotonic() + daemon.restart_sec + 15.0
                    while not daemon.ready and time.monotonic() < deadline:
                        time.sleep(0.2)
                if not daemon.ready:
                    self.findings.append(
                        f"servers down at start: facusync-{daemon.name} was "
                        f"{'running but not READY' if daemon.running else 'not running'} after "
                        f"{self.now() - began:.0f} s with Redis down (STATUS: "
                        f"{daemon.status_line!r})")
                elif "redis" not in daemon.status_line.lower():
                    self.findings.append(
                        f"servers down at start: facusync-{daemon.name}'s STATUS does not say it "
                        f"waits for Redis: {daemon.status_line!r}")
            s.redis.start()

        began = self.now()
        self._window(fault, end)

    def _writer_skew(self, fault: Fault) -> None:
        """The ERP writes with a clock `param` seconds behind SQL Server's: new rows only
        (an update would move a version backwards), some committed late, so that they arrive
        more than SYNC_OVERLAP after their version. They trail the newest version written
        before the skew by less than SYNC_OVERLAP; a row written at SQL Server's clock
        meanwhile (a poison row) can put the newest version seen further ahead, and the late
        rows within 10 s after it are then outside the guarantee (check_polling tells them
        apart)."""
        workload = self.workload
        if workload is None:
            self.note(f"{LABELS[fault.kind]}: no workload, skipped")
            return
        overlap = self.stack.settings.sync_overlap
        saved = (workload.insert_ratio, workload.late_ratio, workload.late_by)
        late_by = overlap - fault.param + 10  # param + late_by = SYNC_OVERLAP + 10 s
        workload.clock_offset = -timedelta(seconds=fault.param)
        workload.insert_ratio, workload.late_ratio = 1.0, 0.0

        def late_rows() -> None:
            workload.late_by = timedelta(seconds=late_by)
            workload.insert_ratio, workload.late_ratio = 0.8, 0.2

        # Once the newest version seen is a skewed one (param s), plus the late rows' lag.
        timer = threading.Timer(fault.param + late_by - overlap + 3, late_rows)
        timer.daemon = True
        timer.start()

        def end() -> None:
            timer.cancel()
            workload.clock_offset = timedelta(0)
            workload.insert_ratio, workload.late_ratio, workload.late_by = saved

        self._window(fault, end)

    def _slow_source(self, fault: Fault) -> None:
        """Every read answers after `param` s: slower than the source lock's TTL, within
        MSSQL_QUERY_TIMEOUT. The changes made meanwhile must still reach PostgreSQL while it
        lasts (before: every cycle ended in LockLost and started again, forever)."""
        s = self.stack
        began, wall = self.now(), source_now()
        s.standin.set_slow_reads(fault.param)

        def end() -> None:
            s.standin.set_slow_reads(0.0)
            quiet = self.quiet_since(began, ("pg_outage", "pg_frozen", "redis_frozen",
                                             "servers_down", "standin_hang",
                                             "standin_drop"))
            needed = 2 * fault.param + s.settings.restart_sec + 5
            if quiet is None or self.now() - quiet < needed:
                self.note(f"{LABELS[fault.kind]}: not judged (another outage left less than "
                          f"{needed:.0f} s of it)")
                return
            newest = newest_real_version(s)
            if newest is None or newest < wall:
                self.findings.append(
                    f"slow source: no change made during the {self.now() - began:.0f} s of reads "
                    f"answering in {fault.param:g} s (lock TTL {LOCK_TTL:g} s, "
                    f"MSSQL_QUERY_TIMEOUT {s.settings.query_timeout} s) reached PostgreSQL; "
                    f"newest version there {newest}")

        self._window(fault, end)

    def _pg_lock_wait(self, fault: Fault) -> None:
        """A DBA's VACUUM FULL / ALTER TABLE: datos_vista locked longer than WatchdogSec."""
        try:
            conn = psycopg2.connect(self.stack.pg.dsn(DATABASE), connect_timeout=5)
            with conn.cursor() as cur:
                cur.execute(f"SET lock_timeout = '{int(WATCHDOG_SEC)}s'")
                cur.execute("LOCK TABLE datos_vista IN ACCESS EXCLUSIVE MODE")
        except psycopg2.Error as exc:
            self.note(f"{LABELS[fault.kind]}: could not take the lock ({exc}), skipped")
            return

        def end() -> None:
            with contextlib.suppress(psycopg2.Error):
                conn.rollback()
            with contextlib.suppress(psycopg2.Error):
                conn.close()

        self._window(fault, end)

    def _column_renamed(self, fault: Fault) -> None:
        """The ERP team renames a view column, then renames it back. While it is gone the
        producer keeps syncing the rest and names the missing column in its STATUS."""
        s = self.stack
        s.standin.rename_column(*RENAMED)
        began = self.now()

        def end() -> None:
            producer = s.producer
            needed = 3 * s.settings.sync_interval + 5

            def settled() -> bool:
                # Some cycles with every server answering and the producer up, since the
                # rename (seeds 503250 and 996492: the stand-in stalled or dropped until a
                # second before the window's end, so no cycle had seen the rename yet).
                quiet = self.quiet_since(began, OUTAGE_KINDS)
                return (quiet is not None and self.now() - quiet > needed
                        and producer.ready and producer.up_for > needed)

            # With no outage open, wait (the rename staying) until some cycles have run. Not
            # with one open: this thread is the one that would end it.
            deadline = time.monotonic() + needed + s.settings.restart_sec + 5
            while (self.quiet_since(began, OUTAGE_KINDS) is not None and not settled()
                   and time.monotonic() < deadline):
                time.sleep(0.5)
            line = producer.status_line.lower()
            # Backing off because another server is down (a restart during an outage needs
            # PostgreSQL to find its columns): nothing to judge.
            elsewhere = "backing off" in line and "sql server" not in line
            if not settled() or elsewhere:
                self.note(f"{LABELS[fault.kind]}: not judged (outages or restarts left less "
                          f"than {needed:g} s of it)")
            elif RENAMED[0].lower() not in line:
                self.findings.append(
                    f"column renamed: {self.now() - began:.0f} s after {RENAMED[0]} was renamed, "
                    f"the producer's STATUS does not name it: {producer.status_line!r}")
            s.standin.rename_column(RENAMED[0], None)

        self._window(fault, end)

    def _redis_wipe_mid_cycle(self, fault: Fault) -> None:
        """`resync --all` makes the next cycle append the whole view chunk by chunk; Redis
        restarts without its data as soon as that cycle has appended something."""
        s = self.stack
        out = cli(s.env, "resync", "--all", "--yes", "--lock-wait", "30", timeout=60)
        if out.returncode != 0:
            self.note(f"{LABELS[fault.kind]}: resync failed ({out.stderr.strip()[:200]}), skipped")
            return
        client = redis.Redis(host=s.redis.host, port=s.redis.port, password=s.redis.password,
                             socket_timeout=2)
        stream = Keys("facusync:").stream
        try:
            start = int(client.xlen(stream))
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and int(client.xlen(stream)) <= start:
                time.sleep(0.01)
            grown = int(client.xlen(stream)) - start
        except redis.RedisError:
            grown = -1
        finally:
            client.close()
        self.note(f"{LABELS[fault.kind]}: the cycle had appended {grown} entries ...")
        self.wipes_at.append(self.now())
        s.redis.restart(keep_data=False)

    def _future_row(self, fault: Fault) -> None:
        """A PC a day ahead, or a sentinel date: synced once; later changes keep flowing."""
        stamp = datetime(9999, 12, 31, 23, 59, 59) if fault.param else source_now() + timedelta(days=1)
        key = f"CHAOS-FUTURE-{self.done[fault.kind] + 1:03d}"
        self.stack.standin.insert([{"CONDUCE": key, "ULTIMA_MODIFICACION": stamp}])
        self.note(f"{fault.describe()}: {key}")


    def finish(self) -> None:
        """Stop injecting and repair whatever is still broken."""
        self._stop.set()
        self._thread.join(120)
        for kind in list(self._open):
            self._end(kind)


ISSUE16_BEGIN: dict[str, Callable[[Injector, Fault], None]] = {
    "servers_down": Injector._servers_down,
    "writer_skew": Injector._writer_skew,
    "slow_source": Injector._slow_source,
    "pg_lock_wait": Injector._pg_lock_wait,
    "column_renamed": Injector._column_renamed,
    "redis_wipe_mid_cycle": Injector._redis_wipe_mid_cycle,
    "future_row": Injector._future_row,
}


def thaw(pids: list[int]) -> None:
    """SIGCONT a frozen server's processes (one gone meanwhile is skipped)."""
    signal_processes(pids, signal.SIGCONT)


def newest_real_version(stack: Stack) -> datetime | None:
    """The newest ULTIMA_MODIFICACION in PostgreSQL that is not in the future (local time)."""
    try:
        rows = stack.admin_query(
            "SELECT max(ultima_modificacion) FROM datos_vista"
            " WHERE ultima_modificacion < now() + interval '1 hour'")
    except psycopg2.Error:
        return None
    newest = rows[0][0] if rows else None
    return newest.astimezone().replace(tzinfo=None) if newest is not None else None
