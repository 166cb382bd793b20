"""Section 1: the consumer's write path, from a pre-filled stream into datos_vista.

Every repetition measures, back to back on the same servers and the same rows:

- ``copy``: the ceiling, one COPY of the rows into an empty copy of datos_vista
  (``LIKE … INCLUDING ALL``: same columns, defaults and indexes, no triggers);
- the real ``Consumer`` loop (reader thread, one transaction and one MULTI/EXEC per batch),
  in its own process like the daemon, at each BATCH_SIZE, first inserting the rows, then
  updating them (newer version, other values); timed from just before ``run()`` (imported,
  connected) to its last commit;
- the naive baseline of the first design: single BRPOPs from a Redis list, a per-row
  ``INSERT … ON CONFLICT`` through ``executemany``, a commit every 50 rows;
- two consumer processes of one group at the default batch size (against one: the
  default batch size's own measurement);
- the cost of the Prometheus metrics: one consumer at the default batch size with
  METRICS_CONSUMER_PORT set and its endpoint scraped every SCRAPE_EVERY seconds, against the
  same consumer without it, in the order off, on, on, off in every repetition (so a drift of
  the machine's load favours neither); rows/s and the consumer process's CPU time per row.

The stream is filled with the producer's own encoder and Lua append (facusync.enqueue), so
the entries are byte for byte what the producer writes. PostgreSQL is checkpointed before
each timed step, so no step pays for the dirty pages of the previous one.
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import redis

from devstack.servers import PostgresServer, RedisServer, free_port
from devstack.standin.seed import generate_rows
from facusync import metrics
from facusync.config import Config, load_config
from facusync.consumer import Consumer
from facusync.enqueue import EncodedRow, append_upserts, encode
from facusync.logsetup import setup_logging
from facusync.pgconn import connect_pg
from facusync.redisconn import Keys, connect_redis
from facusync.service import Service
from facusync.sink import WriteResult

from .common import ROOT, BenchError, checkpoint, create_database, env_values, reset_tables, write_env_file

NAMES = ("conduce", "fecha_emision", "facturado", "numero_factura", "codigo_cliente", "cliente",
         "ultima_modificacion")
KEY_INDEX, VERSION_INDEX = 0, 6
NAIVE_COMMIT_EVERY = 50
DATABASE = "bench_write"
PREFIX = "bw:"
SCRAPE_EVERY = 1.0  # seconds; Prometheus' default is 15 s, so this is pessimistic

Row = tuple[Any, ...]


# -- the rows -----------------------------------------------------------------------------------


def source_rows(count: int, seed: int = 7) -> list[Row]:
    """Rows as pymssql returns them from VW_VENTAS_SYNC (the stand-in's realistic data)."""
    base = datetime(2026, 3, 1)
    out = []
    for conduce, issued, invoiced, numero, code, name, version in generate_rows(
            count, seed=seed, start=base - timedelta(days=30), end=base):
        out.append((conduce, datetime.fromisoformat(str(issued)), bool(invoiced), numero, code,
                    name, datetime.fromisoformat(str(version))))
    return out


def changed_rows(rows: Sequence[Row]) -> list[Row]:
    """The same keys, one second newer, with other values: every one a real update."""
    return [(r[0], r[1], True, r[3] or f"B99{i:08d}", r[4], f"{r[5]} (actualizado)",
             r[6] + timedelta(seconds=1)) for i, r in enumerate(rows)]


def encode_rows(rows: Sequence[Row]) -> list[EncodedRow]:
    """The producer's encoding (JSON and fingerprint), done once and reused by every fill."""
    return [encode(NAMES, r, KEY_INDEX, VERSION_INDEX) for r in rows]


def fill_stream(client: redis.Redis, keys: Keys, rows: Sequence[EncodedRow], chunk: int = 2000) -> None:
    """Append the rows the way the producer does (fingerprint check, one Lua call per chunk)."""
    for i in range(0, len(rows), chunk):
        append_upserts(client, keys, rows[i:i + chunk], low_water=None, advance_watermark=False)


def copy_lines(rows: Sequence[Row]) -> str:
    def text(v: Any) -> str:
        if v is None:
            return "\\N"
        if isinstance(v, bool):
            return "t" if v else "f"
        return str(v)
    return "".join("\t".join(text(v) for v in r) + "\n" for r in rows)


# -- the measurements -----------------------------------------------------------------------------


def copy_ceiling(cfg: Config, payload: str, rows: int) -> float:
    """rows/s of one COPY (and its commit) into an empty copy of datos_vista."""
    conn = connect_pg(cfg)
    with conn.cursor() as cur:
        cur.execute("DROP TABLE IF EXISTS copy_target")
        cur.execute(f'CREATE TABLE copy_target (LIKE "{cfg.pg_table_vista}" INCLUDING ALL)')
        conn.commit()
        started = time.perf_counter()
        cur.copy_expert(f"COPY copy_target ({', '.join(NAMES)}) FROM STDIN", io.StringIO(payload))
        conn.commit()
        elapsed = time.perf_counter() - started
        cur.execute("DROP TABLE copy_target")
        conn.commit()
    conn.close()
    return rows / elapsed


def naive(cfg: Config, client: redis.Redis, rows: Sequence[Row]) -> float:
    """The first design (a Redis list): BRPOP one JSON row at a time, executemany per 50, commit."""
    key = PREFIX + "naive"
    client.delete(key)
    pipe = client.pipeline(transaction=False)
    for r in rows:
        pipe.lpush(key, json.dumps({n: (v.isoformat(sep=" ") if isinstance(v, datetime) else v)
                                    for n, v in zip(NAMES, r, strict=True)}))
        if len(pipe) >= 5000:
            pipe.execute()
    pipe.execute()
    tz = cfg.source_timezone
    statement = (
        f'INSERT INTO "{cfg.pg_table_vista}" AS t ({", ".join(NAMES)}) VALUES '
        "(%s, %s::timestamp AT TIME ZONE %s, %s, %s, %s, %s, %s::timestamp AT TIME ZONE %s) "
        "ON CONFLICT (conduce) DO UPDATE SET "
        + ", ".join(f"{n} = EXCLUDED.{n}" for n in NAMES[1:])
        + " WHERE t.ultima_modificacion < EXCLUDED.ultima_modificacion"
    )
    conn = connect_pg(cfg)
    cur = conn.cursor()
    pending: list[tuple[Any, ...]] = []
    started = time.time()
    last = started
    count = 0
    while True:
        item = client.brpop([key], timeout=1)
        if item is None:
            break
        m = json.loads(item[1])
        pending.append((m["conduce"], m["fecha_emision"], tz, m["facturado"], m["numero_factura"],
                        m["codigo_cliente"], m["cliente"], m["ultima_modificacion"], tz))
        if len(pending) >= NAIVE_COMMIT_EVERY:
            cur.executemany(statement, pending)
            conn.commit()
            count += len(pending)
            pending = []
            last = time.time()
    if pending:
        cur.executemany(statement, pending)
        conn.commit()
        count += len(pending)
        last = time.time()
    conn.close()
    if count != len(rows):
        raise BenchError(f"naive baseline applied {count} of {len(rows)} rows")
    return count / (last - started)


def consume(env_file: Path, workers: int, expect: int, op: str) -> float:
    """rows/s of `workers` consumer processes of one group, started together on a full stream."""
    return rows_per_s(run_workers(env_file, workers, expect, op))


def rows_per_s(parts: list[dict[str, Any]]) -> float:
    return float(sum(p["rows"] for p in parts)
                 / (max(p["last"] for p in parts) - min(p["start"] for p in parts)))


def consume_scraped(env_file: Path, expect: int, op: str, port: int | None) -> dict[str, float]:
    """One consumer; with a metrics port, scraped every SCRAPE_EVERY s while it works.

    Returns rows/s, the worker's CPU time per row (all its threads, the metrics server's
    included) and the number of scrapes answered.
    """
    done = threading.Event()
    scrapes = [0]

    def scraper() -> None:  # at once (the worker serves before it says ready), then steadily
        while port is not None:
            try:
                scrape(port)
            except OSError:
                return  # the worker finished and closed the port meanwhile
            scrapes[0] += 1
            if done.wait(SCRAPE_EVERY):
                return

    thread = threading.Thread(target=scraper, daemon=True)
    try:
        parts = run_workers(env_file, 1, expect, op, on_ready=thread.start)
    finally:
        done.set()
        if thread.is_alive():
            thread.join()
    if port is not None and scrapes[0] == 0:
        raise BenchError("the consumer's metrics endpoint was never scraped")
    return {"rows_per_s": rows_per_s(parts), "cpu_us_per_row": 1e6 * parts[0]["cpu_s"] / expect,
            "scrapes": scrapes[0]}


def scrape(port: int) -> bytes:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        return bytes(response.read())


def metrics_cost(env_file: Path) -> dict[str, float]:
    """The metrics' own CPU cost, in a fresh process (see cost_worker)."""
    out = subprocess.run([sys.executable, "-m", "bench.writepath", "--metrics-cost", str(env_file)],
                         capture_output=True, text=True, cwd=ROOT, timeout=300, check=False)
    if out.returncode != 0:
        raise BenchError(f"the metrics cost worker failed: {out.stderr.strip()[-500:]}")
    return dict(json.loads(out.stdout))


def cost_worker(env_file: str, batches: int = 20_000, scrapes: int = 300) -> int:
    """CPU time of the consumer's per-batch hook, and of one whole scrape (server and client
    both in this process, so it is counted twice over: an upper bound)."""
    cfg = load_config(env_file, environ={})
    registry = metrics.Metrics(cfg, "consumer")
    result = WriteResult(inserted=cfg.batch_size // 2, updated=cfg.batch_size // 2)
    version = datetime(2026, 3, 1)
    started = time.process_time()
    for _ in range(batches):
        registry.consumer_batch(result, 0, 0.05, version, version.timestamp())
    hook = time.process_time() - started
    port = free_port()
    server = metrics.serve(registry, "127.0.0.1", port)
    started = time.process_time()
    size = sum(len(scrape(port)) for _ in range(scrapes))
    cost = time.process_time() - started
    server.shutdown()
    print(json.dumps({"hook_us_per_batch": round(1e6 * hook / batches, 2),
                      "scrape_cpu_ms": round(1e3 * cost / scrapes, 3),
                      "scrape_bytes": size // scrapes}), flush=True)
    return 0


def run_workers(env_file: Path, workers: int, expect: int, op: str,
                on_ready: Callable[[], None] | None = None) -> list[dict[str, Any]]:
    """Start `workers` consumer processes, let them drain the stream together; their reports.

    Processes, like the daemon, also for one consumer: in the benchmark's own process, the
    garbage collector walking its million test objects slowed the consumer by a quarter.
    """
    procs = [subprocess.Popen([sys.executable, "-m", "bench.writepath", "--worker", str(env_file)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=ROOT, text=True)
             for _ in range(workers)]
    try:
        for p in procs:  # each has imported, connected and joined the group
            assert p.stdout is not None
            if p.stdout.readline().strip() != "ready":
                raise BenchError("a consumer worker failed to start")
        if on_ready is not None:
            on_ready()
        for p in procs:
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
        parts = [json.loads(p.communicate(timeout=600)[0]) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    rows = sum(p["rows"] for p in parts)
    done = sum(p["inserted" if op == "insert" else "updated"] for p in parts)
    if rows != expect or done != expect:
        raise BenchError(f"{workers} consumer(s) read {rows} entries and made {done} {op}s "
                         f"of {expect}")
    return parts


def worker(env_file: str) -> int:
    """One consumer process for `parallel`: connect, say ready, wait for go, drain."""
    cfg = load_config(env_file, environ={})
    setup_logging("WARNING", "text", sys.stderr)
    metrics.start(cfg, "facusync-consumer")  # as the daemon does: nothing without a port
    consumer = Consumer(cfg, Service("bench"), name=f"bench-w{time.time_ns()}")
    consumer.connect()
    print("ready", flush=True)
    sys.stdin.readline()
    started = time.time()
    cpu = time.process_time()
    consumer.run(once=True)
    cpu = time.process_time() - cpu
    totals = consumer.stats.totals
    print(json.dumps({"rows": totals["rows"], "inserted": totals["inserted"],
                      "updated": totals["updated"], "start": started,
                      "last": consumer.stats.last_commit or started, "cpu_s": cpu}), flush=True)
    return 0


# -- the section ------------------------------------------------------------------------------


def run(pg: PostgresServer, rds: RedisServer, workdir: Path, *, rows: int, naive_rows: int,
        batch_sizes: Sequence[int], default_batch: int, reps: int,
        log: Any = print) -> dict[str, Any]:
    """All write-path measurements, `reps` times round-robin; raw rows/s per repetition."""
    values = env_values(pg, rds, DATABASE, PREFIX)
    base = create_database(pg, DATABASE, values)
    client = connect_redis(base)
    keys = Keys(PREFIX)
    data = source_rows(rows)
    updates = changed_rows(data)
    payload = copy_lines(data)
    enc_data, enc_updates = encode_rows(data), encode_rows(updates)
    result: dict[str, Any] = {
        "rows": rows, "naive_rows": naive_rows, "reps": reps, "copy": [],
        "batches": {str(b): {"insert": [], "update": []} for b in batch_sizes},
        "naive": {"insert": [], "update": []},
        "two_consumers": {"insert": [], "update": []},
        "metrics": {"scrape_every_s": SCRAPE_EVERY, "batch_size": default_batch, "cost": [],
                    **{setting: {"insert": [], "update": [], "insert_cpu_us_per_row": [],
                                 "update_cpu_us_per_row": [], "scrapes": []}
                       for setting in ("off", "on")}},
    }

    def fresh() -> None:
        reset_tables(base)
        client.flushdb()

    def config(batch: int, **extra: str) -> Path:
        return write_env_file(workdir / "write.env", {**values, "BATCH_SIZE": str(batch), **extra})

    wall: dict[str, float] = {}

    def timed(step: str, fn: Any, *args: Any) -> Any:
        started = time.monotonic()
        try:
            return fn(*args)
        finally:
            wall[step] = round(wall.get(step, 0.0) + time.monotonic() - started, 1)

    def measure(target: dict[str, list[int]], op: str, fn: Any, *args: Any) -> None:
        timed("checkpoint", checkpoint, pg)
        target[op].append(round(timed(f"measure {fn.__name__}", fn, *args)))

    for rep in range(reps):
        timed("checkpoint", checkpoint, pg)
        result["copy"].append(round(timed("measure copy", copy_ceiling, base, payload, rows)))
        runs = [(str(b), b, 1, result["batches"][str(b)]) for b in batch_sizes]
        runs.append(("2 consumers", default_batch, 2, result["two_consumers"]))
        for _label, batch, workers, target in runs:
            env_file = config(batch)
            timed("reset", fresh)
            timed("fill", fill_stream, client, keys, enc_data)
            measure(target, "insert", consume, env_file, workers, rows, "insert")
            timed("fill", fill_stream, client, keys, enc_updates)
            measure(target, "update", consume, env_file, workers, rows, "update")
        for setting in ("off", "on", "on", "off"):
            port = free_port() if setting == "on" else None
            env_file = config(default_batch, **({"METRICS_CONSUMER_PORT": str(port)} if port else {}))
            target = result["metrics"][setting]
            timed("reset", fresh)
            for op, rows_in in (("insert", enc_data), ("update", enc_updates)):
                timed("fill", fill_stream, client, keys, rows_in)
                timed("checkpoint", checkpoint, pg)
                got = timed("measure metrics", consume_scraped, env_file, rows, op, port)
                target[op].append(round(got["rows_per_s"]))
                target[f"{op}_cpu_us_per_row"].append(round(got["cpu_us_per_row"], 2))
                target["scrapes"].append(got["scrapes"])
        result["metrics"]["cost"].append(timed("measure metrics", metrics_cost,
                                               config(default_batch)))
        timed("reset", fresh)
        measure(result["naive"], "insert", naive, base, client, data[:naive_rows])
        measure(result["naive"], "update", naive, base, client, updates[:naive_rows])
        log(f"    write path repetition {rep + 1}/{reps} done")
    result["wall_s"] = wall
    client.close()
    (workdir / "write.env").unlink(missing_ok=True)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description="consumer worker for bench/run.py")
    parser.add_argument("--worker", help="env file")
    parser.add_argument("--metrics-cost", help="env file")
    args = parser.parse_args()
    return cost_worker(args.metrics_cost) if args.metrics_cost else worker(args.worker)


if __name__ == "__main__":
    sys.exit(main())
