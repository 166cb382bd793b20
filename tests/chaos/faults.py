"""The fault schedule (drawn from the seed) and the thread that carries it out.

Two tracks, so that faults combine the way real incidents do (a crash during an outage):

- *windows* (one at a time): PostgreSQL stopped; the stand-in dropping connections after N
  rows of a result, stalling (before answering, or after N rows), or answering slowly;
- *instants*, at any time, also inside a window: SIGKILL of the producer or the consumer,
  Redis restarted losing everything or keeping its AOF, and the two kinds of poison row.

Every kind happens at least once in every run, whatever its length; longer runs draw more.
The schedule depends only on the seed, the length and the outage duration, so a failing run
can be replayed with the same faults at the same times (the interleaving with the daemons'
own timing is, of course, not replayable).
"""

from __future__ import annotations

import heapq
import random
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from tests.chaos.actors import insert_null_key, insert_too_long
from tests.chaos.stack import Stack

WINDOW_KINDS = ("pg_outage", "standin_drop", "standin_hang", "standin_slow")
INSTANT_KINDS = ("kill_producer", "kill_consumer", "redis_wipe", "redis_aof_restart",
                 "poison_too_long", "poison_null_key")
# Relative frequency of the extra faults a longer run draws beyond one of each kind.
WEIGHTS = {"kill_producer": 3, "kill_consumer": 3, "redis_wipe": 1, "redis_aof_restart": 1,
           "poison_too_long": 1, "poison_null_key": 1, "pg_outage": 0.5, "standin_drop": 1,
           "standin_hang": 1, "standin_slow": 1}
LABELS = {
    "kill_producer": "SIGKILL producer",
    "kill_consumer": "SIGKILL consumer",
    "redis_wipe": "Redis restart, data lost",
    "redis_aof_restart": "Redis restart with AOF",
    "pg_outage": "PostgreSQL stopped",
    "standin_drop": "stand-in drops mid-result",
    "standin_hang": "stand-in stalls",
    "standin_slow": "stand-in slow answers",
    "poison_too_long": "poison: value too long",
    "poison_null_key": "poison: NULL key",
}
SECONDS_PER_FAULT = 10.0  # on average, beyond the first of each kind
WARMUP, TAIL = 5.0, 5.0


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
        if self.duration:
            text += f" for {self.duration:.0f} s"
        return text


def plan(seed: int, seconds: float, pg_outage: float) -> list[Fault]:
    """The faults of a run of ``seconds``, in time order; the same for the same arguments."""
    rng = random.Random(seed)
    extra = max(0, round(seconds / SECONDS_PER_FAULT) - len(WEIGHTS))
    kinds = list(WEIGHTS) + rng.choices(list(WEIGHTS), weights=list(WEIGHTS.values()), k=extra)
    span = max(1.0, seconds - WARMUP - TAIL)
    windows: list[tuple[str, float, float]] = []
    for kind in [k for k in kinds if k in WINDOW_KINDS]:
        if kind == "pg_outage":
            windows.append((kind, pg_outage, float(rng.random() < 0.5)))  # 1: a crash
        elif kind == "standin_drop":
            windows.append((kind, rng.uniform(3, 10), float(rng.randrange(0, 400))))
        elif kind == "standin_hang":
            windows.append((kind, rng.uniform(4, 20), float(rng.choice([-1, rng.randrange(0, 400)]))))
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
    for kind in [k for k in kinds if k in INSTANT_KINDS]:
        # A Redis with AOF is restarted cleanly or crashes (appendfsync everysec: the last
        # second of writes may be lost, a consistent prefix of the history remains).
        param = float(rng.random() < 0.5) if kind == "redis_aof_restart" else 0.0
        faults.append(Fault(round(WARMUP + rng.uniform(0, span), 1), kind, 0.0, param))
    return sorted(faults, key=lambda f: (f.at, f.kind))


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
    error: str | None = None

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._open: dict[str, Callable[[], None]] = {}  # window kind -> how to end it
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
            insert_too_long(s.standin, key)
            self.poison_keys.append(key)
            self.poison_at[key] = self.now()
            self.note(f"{LABELS[kind]}: {key}")
        elif kind == "poison_null_key":
            marker = f"CHAOS-NULL-{len(self.poison_markers) + 1:03d}"
            insert_null_key(s.standin, marker)
            self.poison_markers.append(marker)
            self.poison_at[marker] = self.now()
            self.note(f"{LABELS[kind]}: CLIENTE={marker}")
        elif kind == "pg_outage":
            self.note(fault.describe())
            s.pg.stop("immediate" if fault.param else "fast")
            self._open[kind] = s.pg.start_again
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
        self.done[kind] += 1

    def _end(self, kind: str) -> None:
        end = self._open.pop(kind, None)
        if end is not None:
            end()
            self.note(f"end of {LABELS[kind]}")

    def finish(self) -> None:
        """Stop injecting and repair whatever is still broken."""
        self._stop.set()
        self._thread.join(120)
        for kind in list(self._open):
            self._end(kind)
