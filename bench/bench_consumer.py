#!/usr/bin/env python3
"""Consumer write-path benchmark: rows/s of the real consumer loop vs. a plain COPY.

Starts a private PostgreSQL 15 (durable: fsync and synchronous_commit on, like production)
and Redis 7, then for each batch size:

- ``copy``      the ceiling: one COPY of N pre-built rows into an empty copy of datos_vista;
- ``insert``    N upserts of new keys through the consumer (stream -> staging -> upsert);
- ``update``    the same N keys again with a newer version and other values;
- ``unchanged`` the same N rows re-sent (overlap re-read): nothing may be written;
- ``2x insert`` two consumer processes sharing N new keys (the ratio to one is printed).

``--staging`` compares the library's staging table (``reuse``: one TEMP table per connection,
``ON COMMIT DELETE ROWS``) with the alternative it was chosen over (``drop``: one created per
batch, ``ON COMMIT DROP``), which lives here only (DropStagingSink).

Every consumer measurement runs the real ``Consumer`` loop (reader thread, one transaction
and one MULTI/EXEC per batch) and counts from the start of its first batch to its last
commit, so process start-up is not measured. Run from the repository root::

    .venv/bin/python -m bench.bench_consumer [--rows 100000] [--batch-sizes 200,1000,5000]
        [--staging reuse,drop] [--json out.json] [--no-durable]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg2.extensions

from bench import writepath
from bench.common import create_database
from devstack.servers import PostgresServer, RedisServer
from facusync.config import Config
from facusync.consumer import Consumer
from facusync.message import Change, encode_row, upsert_fields
from facusync.redisconn import Keys, connect_redis
from facusync.service import Service
from facusync.sink import Sink, WriteResult

ROOT = Path(__file__).resolve().parents[1]

BASE = datetime(2026, 3, 1, 8, 0, 0)


def make_row(i: int, version: datetime, tag: str) -> dict[str, Any]:
    return {
        "conduce": f"CD{i:010d}",
        "fecha_emision": version - timedelta(days=1),
        "facturado": i % 2 == 0,
        "numero_factura": f"F{i:09d}" if i % 2 == 0 else None,
        "codigo_cliente": f"CL{i % 5000:06d}",
        "cliente": f"Cliente {tag} número {i % 5000}",
        "ultima_modificacion": version,
    }


def fill(cfg: Config, rows: int, version: datetime, tag: str, start: int = 0) -> None:
    client = connect_redis(cfg)
    stream = Keys(cfg.redis_prefix).stream
    pipe = client.pipeline(transaction=False)
    for i in range(start, start + rows):
        fields = upsert_fields(f"CD{i:010d}", version, encode_row(make_row(i, version, tag)), "")
        pipe.xadd(stream, fields)  # type: ignore[arg-type]
        if len(pipe) >= 5000:
            pipe.execute()
    pipe.execute()
    client.close()


class DropStagingSink(Sink):
    """The write path with its staging table created per batch (``ON COMMIT DROP``) instead of
    once per connection: the alternative the library's Sink was measured against."""

    def _create_stage(self, conn: psycopg2.extensions.connection) -> None:
        """Nothing at connect: each batch creates its own."""

    def _attempt(self, changes: list[Change], size: int, low_water: datetime | None, *,
                 bisect: bool) -> WriteResult:
        if self.conn is not None:  # else the library's own "not connected" error
            with self.conn.cursor() as cur:
                cur.execute(self.statements.stage_table("ON COMMIT DROP"))
        return super()._attempt(changes, size, low_water, bisect=bisect)


STAGING: dict[str, type[Sink]] = {"reuse": Sink, "drop": DropStagingSink}


def staging_consumer(cfg: Config, staging: str) -> Consumer:
    """The real consumer loop, writing through the staging strategy named."""
    consumer = Consumer(cfg, Service("bench"), name=f"bench-{time.time_ns()}")
    sink = STAGING[staging](cfg, consumer=consumer.name)
    sink.watermark_cap = consumer.sink.watermark_cap
    consumer.sink = consumer.writer.sink = sink
    return consumer


def consume(cfg: Config, staging: str) -> dict[str, float]:
    consumer = staging_consumer(cfg, staging)
    consumer.run(once=True)
    return {"rows": consumer.stats.totals["rows"], "first": consumer.stats.first_batch_at or 0.0,
            "last": consumer.stats.last_commit or 0.0}


def rate(parts: list[dict[str, float]]) -> float:
    rows = sum(p["rows"] for p in parts)
    span = max(p["last"] for p in parts) - min(p["first"] for p in parts)
    return rows / span if span > 0 else 0.0


def copy_ceiling(cfg: Config, rows: int) -> float:
    """One COPY of pre-built text rows into an empty table shaped like datos_vista."""
    lines = []
    for i in range(rows):
        r = make_row(i, BASE, "copy")
        lines.append("\t".join([
            r["conduce"], r["fecha_emision"].isoformat(), "t" if r["facturado"] else "f",
            r["numero_factura"] or "\\N", r["codigo_cliente"], r["cliente"],
            r["ultima_modificacion"].isoformat()]))
    return writepath.copy_ceiling(cfg, "\n".join(lines) + "\n", rows)


def fresh(pg: PostgresServer, rds: RedisServer, name: str, batch: int) -> Config:
    return create_database(pg, name, {
        "MSSQL_HOST": "127.0.0.1", "MSSQL_USER": "x", "MSSQL_PASSWORD": "placeholder-not-used",
        "PG_HOST": pg.host, "PG_PORT": str(pg.port), "PG_DATABASE": name, "PG_USER": pg.user,
        "PG_PASSWORD": pg.password, "REDIS_HOST": rds.host, "REDIS_PORT": str(rds.port),
        "REDIS_PASSWORD": rds.password, "REDIS_PREFIX": f"bench{name}:",
        "BATCH_SIZE": str(batch), "LOG_LEVEL": "WARNING", "LOG_FORMAT": "text",
    })


def env_text(cfg: Config, pg: PostgresServer, rds: RedisServer) -> str:
    return "\n".join([
        "MSSQL_HOST=127.0.0.1", "MSSQL_USER=x", "MSSQL_PASSWORD=unused",
        f"PG_HOST={pg.host}", f"PG_PORT={pg.port}", f"PG_DATABASE={cfg.pg_database}",
        f"PG_USER={pg.user}", f"PG_PASSWORD={pg.password}", f"REDIS_HOST={rds.host}",
        f"REDIS_PORT={rds.port}", f"REDIS_PASSWORD={rds.password}",
        f"REDIS_PREFIX={cfg.redis_prefix}", f"BATCH_SIZE={cfg.batch_size}",
        "LOG_LEVEL=WARNING", "LOG_FORMAT=text", "",
    ])


def parallel(cfg: Config, pg: PostgresServer, rds: RedisServer, workers: int,
             staging: str) -> float:
    with tempfile.NamedTemporaryFile("w", suffix=".env", delete=False) as f:
        f.write(env_text(cfg, pg, rds))
        env_file = f.name
    procs = [subprocess.Popen([sys.executable, "-m", "bench.bench_consumer", "--worker", env_file,
                               "--staging", staging], stdout=subprocess.PIPE, cwd=ROOT)
             for _ in range(workers)]
    parts = [json.loads(p.communicate()[0]) for p in procs]
    Path(env_file).unlink()
    return rate(parts)


def run_worker(env_file: str, staging: str) -> None:
    from facusync.config import load_config
    from facusync.logsetup import setup_logging

    cfg = load_config(env_file)
    setup_logging("WARNING", "text", sys.stderr)
    print(json.dumps(consume(cfg, staging)))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--batch-sizes", default="100,500,1000,2000,5000")
    parser.add_argument("--staging", default="reuse,drop",
                        help=f"staging strategies to compare, of {', '.join(STAGING)}")
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--no-durable", action="store_true",
                        help="fsync/synchronous_commit off (faster, less like production)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    unknown = set(args.staging.split(",")) - STAGING.keys()
    if unknown:
        parser.error(f"--staging {','.join(sorted(unknown))}: use {' or '.join(STAGING)}")
    if args.worker:
        run_worker(args.worker, args.staging.split(",")[0])
        return 0

    from facusync.logsetup import setup_logging
    setup_logging("WARNING", "text", sys.stderr)
    pg = PostgresServer(durable=not args.no_durable).start()
    rds = RedisServer().start()
    results: list[dict[str, Any]] = []
    try:
        for batch in [int(b) for b in args.batch_sizes.split(",")]:
            for staging in args.staging.split(","):
                name = f"b{batch}{staging}"
                cfg = fresh(pg, rds, name, batch)
                ceiling = copy_ceiling(cfg, args.rows)
                row: dict[str, Any] = {"batch_size": batch, "staging": staging,
                                       "rows": args.rows, "copy": round(ceiling)}
                fill(cfg, args.rows, BASE, "a")
                row["insert"] = round(rate([consume(cfg, staging)]))
                fill(cfg, args.rows, BASE + timedelta(seconds=1), "b")
                row["update"] = round(rate([consume(cfg, staging)]))
                fill(cfg, args.rows, BASE + timedelta(seconds=1), "b")
                row["unchanged"] = round(rate([consume(cfg, staging)]))
                fill(cfg, args.rows, BASE, "c", start=args.rows)
                row["insert_2x"] = round(parallel(cfg, pg, rds, 2, staging))
                row["insert_pct_copy"] = round(100 * row["insert"] / ceiling, 1)
                row["update_pct_copy"] = round(100 * row["update"] / ceiling, 1)
                row["scale_2x"] = round(row["insert_2x"] / row["insert"], 2)
                results.append(row)
                print_row(row, header=len(results) == 1)
    finally:
        pg.destroy()
        rds.destroy()
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


COLUMNS = ("batch_size", "staging", "copy", "insert", "update", "unchanged", "insert_2x",
           "insert_pct_copy", "update_pct_copy", "scale_2x")


def print_row(row: dict[str, Any], *, header: bool) -> None:
    if header:
        print(" ".join(f"{c:>15}" for c in COLUMNS))
    print(" ".join(f"{row[c]!s:>15}" for c in COLUMNS), flush=True)


if __name__ == "__main__":
    sys.exit(main())
