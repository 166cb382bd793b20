"""Realistic VW_VENTAS_SYNC rows: Dominican-style delivery notes with Spanish client names.

Rows are generated straight in storage format (tick-rounded datetime text, 0/1 bits)
so a million rows load in seconds.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import ClassVar

from . import schema

BUSINESSES = [
    "Ferretería", "Supermercado", "Colmado", "Farmacia", "Panadería", "Distribuidora",
    "Repuestos", "Librería", "Tienda", "Comercial", "Almacén", "Agroveterinaria", "Cafetería",
    "Constructora", "Inversiones", "Óptica", "Mueblería", "Zapatería", "Carnicería", "Depósito",
]
NAMES = [
    "Núñez", "La Peña", "Doña Inés", "San José", "Martínez", "Pérez", "Rodríguez", "Gómez",
    "Fernández", "Jiménez", "Muñoz", "Báez", "Castaño", "Ibáñez", "Ordóñez", "Hermanos Díaz",
    "El Cañón", "La Económica", "Santa Lucía", "Los Ángeles", "María José", "Ramón Güémez",
    "Asunción", "El Progreso", "Peña Gómez", "Quisqueya", "Ozama", "Higüey", "Baní",
    "San Cristóbal", "La Romana", "Bávaro", "Constanza", "Jarabacoa", "Moca", "Nagua",
]
SUFFIXES = ["", "", "", ", S.R.L.", ", S.R.L.", ", S.A.", " & Asociados", " e Hijos", ", EIRL"]

TICKS_PER_SECOND = 300


def client_pool(rng: random.Random, size: int) -> list[tuple[str, str]]:
    """(CODIGO_CLIENTE, CLIENTE) pairs; names repeat across codes like in real data."""
    pool = []
    for i in range(1, size + 1):
        name = f"{rng.choice(BUSINESSES)} {rng.choice(NAMES)}{rng.choice(SUFFIXES)}"
        pool.append((f"CL-{i:05d}", name))
    return pool


class TickFormatter:
    """Formats 'start + n ticks' as stored datetime text, fast (tables instead of strftime)."""

    _HMS: ClassVar[list[str]] = [
        f"{h:02d}:{m:02d}:{sec:02d}" for h in range(24) for m in range(60) for sec in range(60)
    ]
    _MS: ClassVar[list[str]] = [f".{(t * 1000 + 150) // 300:03d}" for t in range(TICKS_PER_SECOND)]

    def __init__(self, start: datetime) -> None:
        self.day0 = start.date()
        self.offset = start.hour * 3600 + start.minute * 60 + start.second
        self.days: dict[int, str] = {}

    def __call__(self, ticks: int) -> str:
        seconds, rem = divmod(ticks, TICKS_PER_SECOND)
        day, second = divmod(seconds + self.offset, 86400)
        text = self.days.get(day)
        if text is None:
            text = self.days[day] = (self.day0 + timedelta(days=day)).isoformat() + " "
        return text + self._HMS[second] + self._MS[rem]


def tick_text(base: datetime, ticks: int) -> str:
    """base (whole second) plus 1/300 s ticks, as stored datetime text."""
    return TickFormatter(base.replace(microsecond=0))(ticks)


def generate_rows(
    count: int,
    *,
    seed: int = 0,
    start: datetime | None = None,
    end: datetime | None = None,
    first_number: int = 1,
    tie_ratio: float = 0.03,
) -> Iterator[tuple[object, ...]]:
    """Rows in VIEW_COLUMNS order and storage format.

    ULTIMA_MODIFICACION lies between FECHA_EMISION and ``end``; a few rows share
    their version with the previous row, like an ERP batch update stamping many
    rows with one GETDATE().
    """
    rng = random.Random(seed)
    end = (end or datetime.now()).replace(microsecond=0)
    start = (start or end - timedelta(days=30)).replace(microsecond=0)
    span = max(1, int((end - start).total_seconds()) * TICKS_PER_SECOND)
    clients = client_pool(rng, max(20, min(5000, count // 20)))
    invoice = rng.randrange(1, 10_000_000)
    fmt = TickFormatter(start)
    random_ = rng.random
    expo = rng.expovariate
    lag = 1 / (6 * 3600 * TICKS_PER_SECOND)  # versions trail issue dates by ~6 h on average
    nclients = len(clients)
    last_version = None
    for number in range(first_number, first_number + count):
        issued = int(random_() * span)
        version = min(span - 1, issued + int(expo(lag)))
        version_text = fmt(version)
        if last_version is not None and random_() < tie_ratio:
            version_text = last_version
        last_version = version_text
        code, name = clients[int(random_() * nclients)]
        numero = None
        invoiced = random_() < 0.7
        if invoiced:
            invoice += 1
            numero = f"B01{invoice:08d}"
        yield (f"C-{number:07d}", fmt(issued), int(invoiced), numero, code, name, version_text)


def next_number(conn: object) -> int:
    """The number after the highest 'C-nnnnnnn' key already present."""
    row = conn.execute(  # type: ignore[attr-defined]
        f"SELECT MAX(CAST(SUBSTR(CONDUCE, 3) AS INTEGER)) FROM {schema.VIEW} WHERE CONDUCE LIKE 'C-%'"
    ).fetchone()
    return int(row[0] or 0) + 1


def seed_view(
    db: Path | str,
    rows: int,
    *,
    seed: int = 0,
    start: datetime | None = None,
    end: datetime | None = None,
    replace: bool = True,
) -> int:
    """Fill VW_VENTAS_SYNC with ``rows`` generated rows (replacing existing ones by default)."""
    schema.init_db(db)
    conn = schema.connect(db)
    try:
        conn.execute("BEGIN IMMEDIATE")
        if replace:
            conn.execute(f"DELETE FROM {schema.VIEW}")
        first = next_number(conn)
        placeholders = ", ".join("?" * len(schema.VIEW_COLUMNS))
        bulk = rows >= 50_000
        if bulk:  # rebuilding secondary indexes afterwards is much faster than maintaining them
            conn.execute("PRAGMA cache_size = -262144")
            for index in schema.VIEW_INDEXES:
                conn.execute(f"DROP INDEX IF EXISTS {index}")
        conn.executemany(
            f"INSERT INTO {schema.VIEW} VALUES ({placeholders})",
            generate_rows(rows, seed=seed, start=start, end=end, first_number=first),
        )
        if bulk:
            schema.create_view_indexes(conn)
        conn.execute("COMMIT")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    return rows
