"""A live ERP in miniature: keeps inserting, updating and deleting view rows at a rate.

Each change is one SQLite transaction; its commit time is recorded so a benchmark can
measure end-to-end latency (commit here -> row in PostgreSQL). The mix includes the
changes that make polling hard: updates that do not bump ULTIMA_MODIFICACION, deletes,
and rows committed "late" with a version in the past.
"""

from __future__ import annotations

import json
import random
import threading
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from . import schema, sqltypes
from .seed import BUSINESSES, NAMES, SUFFIXES, next_number


@dataclass
class Event:
    """One committed change."""

    op: str  # insert | update | update_nobump | delete | late
    conduce: str
    version: str | None  # ULTIMA_MODIFICACION as stored (None for update_nobump/delete)
    committed_at: float  # time.time() right after COMMIT returned

    def as_json(self) -> str:
        return json.dumps(asdict(self))


class Workload:
    """Generates changes at ``rate`` per second; use ``run(seconds)`` or ``start()``/``stop()``."""

    def __init__(
        self,
        db: Path | str,
        *,
        rate: float = 10.0,
        seed: int = 1,
        insert_ratio: float = 0.3,
        nobump_ratio: float = 0.1,
        delete_ratio: float = 0.0,
        late_ratio: float = 0.0,
        late_by: timedelta = timedelta(seconds=30),
        record: Path | str | None = None,
    ) -> None:
        self.db = Path(db)
        self.rate = rate
        self.rng = random.Random(seed)
        self.insert_ratio = insert_ratio
        self.nobump_ratio = nobump_ratio
        self.delete_ratio = delete_ratio
        self.late_ratio = late_ratio
        self.late_by = late_by
        # The writer's clock error: its ULTIMA_MODIFICACION is SQL Server's time plus this
        # (negative: an application server whose clock lags). Tests change it while running.
        self.clock_offset = timedelta(0)
        self.record = Path(record) if record else None
        self.events: list[Event] = []
        self._keys: list[str] = []
        self._next = 1
        self._invoice = self.rng.randrange(50_000_000, 90_000_000)
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    # -- the changes ----------------------------------------------------------

    def _open(self) -> Any:
        schema.init_db(self.db)
        conn = schema.connect(self.db)
        self._keys = [row[0] for row in conn.execute(f"SELECT CONDUCE FROM {schema.VIEW}")]
        self._next = next_number(conn)
        return conn

    def _client(self) -> tuple[str, str]:
        rng = self.rng
        name = f"{rng.choice(BUSINESSES)} {rng.choice(NAMES)}{rng.choice(SUFFIXES)}"
        return f"CL-{rng.randrange(1, 5000):05d}", name

    def step(self, conn: Any) -> Event:
        """Commit one random change and return what was done."""
        roll = self.rng.random()
        stamp = sqltypes.datetime_text(datetime.now() + self.clock_offset)
        if not self._keys or roll < self.insert_ratio:
            return self._insert(conn, stamp, late=False)
        roll -= self.insert_ratio
        if roll < self.late_ratio:
            return self._insert(conn, stamp, late=True)
        roll -= self.late_ratio
        if roll < self.delete_ratio:
            index = self.rng.randrange(len(self._keys))
            key = self._keys[index]
            self._keys[index] = self._keys[-1]
            self._keys.pop()
            conn.execute(f"DELETE FROM {schema.VIEW} WHERE CONDUCE = ?", (key,))
            return self._done("delete", key, None)
        roll -= self.delete_ratio
        key = self._keys[self.rng.randrange(len(self._keys))]
        bump = roll >= self.nobump_ratio
        if self.rng.random() < 0.5:
            self._invoice += 1
            sets, params = "FACTURADO = 1, NUMERO_FACTURA = ?", [f"B01{self._invoice:08d}"]
        else:
            code, name = self._client()
            sets, params = "CODIGO_CLIENTE = ?, CLIENTE = ?", [code, name]
        if bump:
            sets += ", ULTIMA_MODIFICACION = ?"
            params.append(stamp)
        conn.execute(f"UPDATE {schema.VIEW} SET {sets} WHERE CONDUCE = ?", [*params, key])
        return self._done("update" if bump else "update_nobump", key, stamp if bump else None)

    def _insert(self, conn: Any, stamp: str, *, late: bool) -> Event:
        key = f"C-{self._next:07d}"
        self._next += 1
        version = stamp
        if late:  # a transaction that stamped its rows long before committing
            version = sqltypes.datetime_text(datetime.now() + self.clock_offset - self.late_by)
        code, name = self._client()
        conn.execute(
            f"INSERT INTO {schema.VIEW} VALUES (?, ?, 0, NULL, ?, ?, ?)",
            (key, version, code, name, version),
        )
        self._keys.append(key)
        return self._done("late" if late else "insert", key, version)

    def _done(self, op: str, key: str, version: str | None) -> Event:
        event = Event(op, key, version, time.time())
        self.events.append(event)
        return event

    # -- pacing ---------------------------------------------------------------

    def run(self, seconds: float) -> dict[str, Any]:
        """Generate changes for ``seconds`` (or until ``stop()``); returns counts per op."""
        conn = self._open()
        sink = open(self.record, "a", encoding="utf-8") if self.record else None  # noqa: SIM115
        try:
            started = time.monotonic()
            done = 0
            while not self._stop.is_set():
                elapsed = time.monotonic() - started
                if elapsed >= seconds:
                    break
                due = done / self.rate if self.rate > 0 else elapsed
                if due > elapsed:
                    self._stop.wait(min(due - elapsed, 0.5))
                    continue
                event = self.step(conn)
                done += 1
                if sink is not None:
                    sink.write(event.as_json() + "\n")
                    sink.flush()
        finally:
            conn.close()
            if sink is not None:
                sink.close()
        return self.stats()

    def stats(self) -> dict[str, Any]:
        counts: dict[str, Any] = {}
        for event in self.events:
            counts[event.op] = counts.get(event.op, 0) + 1
        counts["total"] = len(self.events)
        return counts

    def start(self, seconds: float = float("inf")) -> Workload:
        """Run in a background thread until ``stop()`` (or ``seconds``)."""
        self._stop.clear()
        self._thread = threading.Thread(target=self.run, args=(seconds,), daemon=True,
                                        name="standin-workload")
        self._thread.start()
        return self

    def stop(self) -> dict[str, Any]:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        return self.stats()

    def __enter__(self) -> Workload:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
