"""What runs beside the daemons during the chaos: the ERP workload, the planners, the lag probe,
and the poison rows.

Each actor is a thread that records what it did, so the final checks compare against facts:
the planners remember every edit that committed (and the ones whose COMMIT had no answer, which
may or may not have happened), the lag probe keeps the worst values `facusync status` showed.
"""

from __future__ import annotations

import contextlib
import random
import threading
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import psycopg2
import psycopg2.extensions

from devstack.standin import schema, sqltypes
from devstack.standin.data import now
from devstack.standin.harness import StandIn
from devstack.standin.workload import Workload
from facusync.config import Config
from facusync.operations.status import collect
from tests.poison import widen_view_column

EDITABLE = ("nota", "ruta", "trabajado", "preparador")
# A tracking row as the trigger creates it: what a column holds before any planner edit.
UNTOUCHED: dict[str, Any] = {"nota": None, "ruta": None, "trabajado": False, "preparador": None}
PREPARADORES = ("Ana", "Luis", "Carmen", "José", "Marisol", "Pedro", "Yocasta", "Ramón")


class ErpWorkload:
    """The stand-in's workload generator in a thread of ours, so a crash of it is reported."""

    def __init__(self, standin: StandIn, *, rate: float, seed: int, late_by: float) -> None:
        self.workload: Workload = standin.workload(
            rate=rate, seed=seed, insert_ratio=0.3, nobump_ratio=0.15, delete_ratio=0.02,
            late_ratio=0.05, late_by=timedelta(seconds=late_by))
        self.error: str | None = None
        self._thread = threading.Thread(target=self._run, daemon=True, name="erp-workload")

    def _run(self) -> None:
        try:
            self.workload.run(float("inf"))
        except Exception:
            self.error = traceback.format_exc()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> dict[str, Any]:
        stats: dict[str, Any] = self.workload.stop()
        self._thread.join(15)
        return stats

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()


@dataclass
class Expected:
    """What one planner column of one conduce may hold: one value, or several after a COMMIT
    that got no answer (it may or may not have happened)."""

    values: list[Any]
    edits: int = 0


@dataclass
class Planners:
    """People editing datos_seguimiento through the NocoDB role, about once a second.

    An edit changes one to four of the editable columns of a conduce that has a tracking row.
    A failed UPDATE changed nothing; a failed COMMIT is ambiguous, so both the old and the new
    value are accepted for that column until the next edit that commits.
    """

    dsn: str
    seed: int
    rate: float = 1.0
    expected: dict[tuple[str, str], Expected] = field(default_factory=dict)
    counts: Counter[str] = field(default_factory=Counter)
    error: str | None = None

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self._hot: list[str] = []  # a few conduces edited again and again (the values change)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="planners")
        self._conn: psycopg2.extensions.connection | None = None
        self._keys: list[str] = []
        self._keys_at = 0.0

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)
        self._close()

    def _close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(psycopg2.Error):
                self._conn.close()
            self._conn = None

    def _connection(self) -> psycopg2.extensions.connection:
        if self._conn is None:
            self._conn = psycopg2.connect(self.dsn, connect_timeout=3,
                                          application_name="chaos-planners")
        return self._conn

    def _run(self) -> None:
        n = 0
        try:
            while not self._stop.wait(self.rng.expovariate(self.rate)):
                n += 1
                try:
                    self.edit(n)
                except psycopg2.Error:
                    self.counts["failed"] += 1
                    self._close()
        except Exception:
            self.error = traceback.format_exc()

    def _refresh_keys(self) -> None:
        if self._keys and time.monotonic() - self._keys_at < 15:
            return
        conn = self._connection()
        with conn.cursor() as cur:
            cur.execute("SELECT conduce FROM datos_seguimiento ORDER BY conduce")
            self._keys = [r[0] for r in cur.fetchall()]
        conn.rollback()
        self._keys_at = time.monotonic()

    def edit(self, n: int) -> None:
        """One planner's edit of a random conduce; remember it if (or as far as) it committed."""
        self._refresh_keys()
        if not self._keys:
            return
        rng = self.rng
        if len(self._hot) < 20:
            self._hot.append(rng.choice(self._keys))
        conduce = rng.choice(self._hot) if rng.random() < 0.4 else rng.choice(self._keys)
        columns = rng.sample(EDITABLE, rng.randint(1, len(EDITABLE)))
        values: dict[str, Any] = {}
        for col in columns:
            if col == "nota":
                values[col] = f"nota {n}: llamar antes de las {rng.randint(8, 17)}h"
            elif col == "ruta":
                values[col] = f"R-{rng.randint(1, 40):02d}"
            elif col == "trabajado":
                values[col] = rng.random() < 0.5
            else:
                values[col] = rng.choice(PREPARADORES)
        conn = self._connection()
        sets = ", ".join(f"{c} = %s" for c in columns)
        with conn.cursor() as cur:
            cur.execute(f"UPDATE datos_seguimiento SET {sets} WHERE conduce = %s",
                        [*values.values(), conduce])
            if cur.rowcount != 1:
                conn.rollback()
                self.counts["no_row"] += 1
                return
        try:
            conn.commit()
        except psycopg2.Error:
            # The server may have committed before the connection broke: either value is right.
            self.counts["ambiguous"] += 1
            for col, value in values.items():
                entry = self.expected.get((conduce, col))
                if entry is None:
                    self.expected[(conduce, col)] = Expected([UNTOUCHED[col], value], 1)
                else:
                    entry.values.append(value)
                    entry.edits += 1
            raise
        self.counts["committed"] += 1
        for col, value in values.items():
            entry = self.expected.setdefault((conduce, col), Expected([]))
            entry.values = [value]
            entry.edits += 1

    @property
    def edited_conduces(self) -> int:
        return len({k for k, _ in self.expected})


class LagProbe:
    """Samples `facusync status` (its collect(), in process) every few seconds; keeps the worst."""

    def __init__(self, cfg: Config, every: float = 2.0) -> None:
        self.cfg = cfg
        self.every = every
        self.max_queue_age = 0.0  # queue.oldest_age_s: the oldest change still waiting
        self.max_newest_age = 0.0  # postgresql.newest_change_age_s: freshness of the copy
        self.max_backlog = 0
        self.samples = 0
        self.failed = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="lag-probe")

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            try:
                data, _ = collect(self.cfg)
            except Exception:
                self.failed += 1
                continue
            if "queue" not in data and "postgresql" not in data:
                self.failed += 1  # both servers down: the sample says nothing about lag
                continue
            self.samples += 1
            if "queue" in data:  # Redis answered (PostgreSQL may be down: the queue grows)
                self.max_queue_age = max(self.max_queue_age, float(data["queue"]["oldest_age_s"]))
                self.max_backlog = max(self.max_backlog, int(data["queue"]["length"]))
            age = data.get("postgresql", {}).get("newest_change_age_s")
            if age is not None:
                self.max_newest_age = max(self.max_newest_age, float(age))


# -- poison rows ---------------------------------------------------------------------------------


def allow_null_keys(standin: StandIn) -> None:
    """Recreate the (still empty) view table with a nullable CONDUCE, as an outer join can yield.

    The stand-in declares CONDUCE NOT NULL; SQLite cannot drop a constraint, so the table is
    created again (before the server starts) with the same declared types.
    """
    cols = [schema.Column(c.name, c.type, True) if c.name == "CONDUCE" else c for c in schema.VIEW_COLUMNS]
    conn = schema.connect(standin.db_path)
    try:
        conn.execute("BEGIN IMMEDIATE")
        if conn.execute(f"SELECT COUNT(*) FROM {schema.VIEW}").fetchone()[0]:
            raise RuntimeError("allow_null_keys needs an empty view table")
        conn.execute(f"DROP TABLE {schema.VIEW}")
        schema.create_table(conn, schema.VIEW, cols, primary_key="CONDUCE")
        schema.create_view_indexes(conn)
        conn.execute("COMMIT")
    finally:
        conn.close()


def insert_null_key(standin: StandIn, marker: str) -> None:
    """A row whose CONDUCE is NULL, told apart from others by its CLIENTE (the marker)."""
    stamp = now()
    values = {"CONDUCE": None, "FECHA_EMISION": stamp, "FACTURADO": False, "NUMERO_FACTURA": None,
              "CODIGO_CLIENTE": "CL-99999", "CLIENTE": marker, "ULTIMA_MODIFICACION": stamp}
    record = [sqltypes.to_storage(c.type, values[c.name]) for c in schema.VIEW_COLUMNS]
    standin.execute(f"INSERT INTO {schema.VIEW} VALUES ({', '.join('?' * len(record))})", record)


def insert_too_long(standin: StandIn, conduce: str, length: int = 400) -> None:
    """A row whose CLIENTE does not fit datos_vista.cliente (varchar(150)).

    The view's column is declared wider first, as after a change in the ERP. Every time:
    the stand-in's workload re-initialises the declarations when it opens the database.
    """
    widen_view_column(standin, "CLIENTE", "nvarchar(1000)")
    standin.insert([{"CONDUCE": conduce, "CLIENTE": (conduce + " ") + "x" * length}])
