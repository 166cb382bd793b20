#!/usr/bin/env python3
"""The cost of TLS: the consumer write path and the backfill, plaintext and TLS in one run.

The same servers serve both: PostgreSQL 15 (durable) with ssl=on and a certificate from a
throwaway CA, Redis 7 with a plaintext port and a tls-port, and the SQL Server stand-in with a
certificate but without Force Encryption (SQL Server's default). Only the client settings
differ: plaintext is MSSQL_ENCRYPT=off, PG_SSLMODE=disable and Redis's plain port; TLS is
MSSQL_ENCRYPT=require, PG_SSLMODE=verify-full and REDIS_TLS=on, all verified against the CA
(the write path has no SQL Server hop). Each repetition measures both back to back (the order
alternates), and the ratio is the median of the per-repetition ratios. See bench/README.md.

    .venv/bin/python -m bench.tls [--quick] [--reps 3] [--rows 50000] [--backfill-rows 200000]
        [--json bench/results-tls.json]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import writepath
from bench.common import (
    PrivateServers,
    checkpoint,
    create_database,
    env_values,
    load_average,
    median,
    reset_tables,
    write_env_file,
    write_results,
)
from bench.pipeline import Pipeline
from devstack.servers import PostgresServer, RedisServer
from devstack.standin.harness import StandIn
from devstack.tlsca import TestCA
from facusync.logsetup import setup_logging
from facusync.redisconn import Keys, connect_redis

ROOT = Path(__file__).resolve().parents[1]

MODES = ("plaintext", "tls")


def mode_settings(mode: str, ca: TestCA, rds: RedisServer) -> dict[str, str]:
    """The client settings of one mode; everything else is identical."""
    if mode == "plaintext":
        return {"MSSQL_ENCRYPT": "off", "PG_SSLMODE": "disable", "REDIS_PORT": str(rds.port)}
    ca_file = str(ca.ca.cert)
    return {"MSSQL_ENCRYPT": "require", "MSSQL_CA_FILE": ca_file,
            "PG_SSLMODE": "verify-full", "PG_SSLROOTCERT": ca_file, "REDIS_TLS": "on",
            "REDIS_CA_FILE": ca_file, "REDIS_PORT": str(rds.tls_port)}


def write_path(pg: PostgresServer, rds: RedisServer, ca: TestCA, workdir: Path, *, rows: int,
               reps: int, log: Callable[[str], None]) -> dict[str, Any]:
    """rows/s of one consumer process draining a full stream, insert then update, per mode."""
    values = env_values(pg, rds, writepath.DATABASE, writepath.PREFIX)
    base = create_database(pg, writepath.DATABASE, values)
    client = connect_redis(base)
    keys = Keys(writepath.PREFIX)
    data = writepath.source_rows(rows)
    encoded = {"insert": writepath.encode_rows(data),
               "update": writepath.encode_rows(writepath.changed_rows(data))}
    out: dict[str, Any] = {m: {"insert": [], "update": []} for m in MODES}
    try:
        for rep in range(reps):
            for mode in MODES if rep % 2 == 0 else reversed(MODES):
                env_file = write_env_file(workdir / f"{mode}.env",
                                          {**values, **mode_settings(mode, ca, rds)})
                reset_tables(base)
                client.flushdb()
                for op in ("insert", "update"):
                    writepath.fill_stream(client, keys, encoded[op])
                    checkpoint(pg)
                    out[mode][op].append(round(writepath.consume(env_file, 1, rows, op)))
            log(f"    write path {rep + 1}/{reps}: " + ", ".join(
                f"{m} {out[m]['insert'][-1]:,}/{out[m]['update'][-1]:,}" for m in MODES)
                + " rows/s (insert/update)")
    finally:
        client.close()
        for mode in MODES:
            (workdir / f"{mode}.env").unlink(missing_ok=True)
    return out


def backfill(pg: PostgresServer, rds: RedisServer, ca: TestCA, workdir: Path, *, rows: int,
             reps: int, log: Callable[[str], None]) -> dict[str, Any]:
    """Seconds for the two daemons to copy `rows` from the stand-in into PostgreSQL, per mode."""
    pipe = Pipeline(pg, rds, workdir, mode_settings("plaintext", ca, rds), log)
    cert = ca.issue("sqlserver")
    pipe.standin = StandIn(workdir / "standin", log_level="WARNING", encryption="off",
                           certificate=(cert.cert, cert.key))
    out: dict[str, Any] = {m: [] for m in MODES}
    try:
        pipe.setup(rows)
        for rep in range(reps):
            for mode in MODES if rep % 2 == 0 else reversed(MODES):
                pipe.overrides = mode_settings(mode, ca, rds)
                pipe.configure()
                out[mode].append(pipe.backfill(rows, keep_running=False))
            log(f"    backfill {rep + 1}/{reps}: " + ", ".join(
                f"{m} {out[m][-1]['rows_per_s']:,} rows/s" for m in MODES))
    finally:
        pipe.close()
    return out


def summarize(results: dict[str, Any]) -> list[dict[str, Any]]:
    """One line per measurement: median rows/s of each mode and the median per-rep ratio."""
    lines = []
    series = {f"consumer write path, {op}": {m: results["write_path"][m][op] for m in MODES}
              for op in ("insert", "update")}
    series["backfill (producer + consumer), all three hops"] = {
        m: [b["rows_per_s"] for b in results["backfill"][m]] for m in MODES}
    for label, by_mode in series.items():
        ratio = median(t / p for p, t in zip(by_mode["plaintext"], by_mode["tls"], strict=True))
        lines.append({"measure": label, "plaintext_rows_per_s": round(median(by_mode["plaintext"])),
                      "tls_rows_per_s": round(median(by_mode["tls"])),
                      "tls_pct_of_plaintext": round(100 * ratio, 1)})
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke mode: tiny sizes, seconds")
    parser.add_argument("--reps", type=int, help="repetitions (default 3; quick 1)")
    parser.add_argument("--rows", type=int, help="write-path rows (default 50000)")
    parser.add_argument("--backfill-rows", type=int, help="default 200000")
    parser.add_argument("--json", help="default bench/results-tls.json (--quick: none)")
    args = parser.parse_args()
    reps = args.reps or (1 if args.quick else 3)
    rows = args.rows or (2000 if args.quick else 50_000)
    backfill_rows = args.backfill_rows or (5000 if args.quick else 200_000)
    setup_logging("WARNING", "text", sys.stderr)

    def log(message: str) -> None:
        print(message, flush=True)

    started = time.monotonic()
    results: dict[str, Any] = {"meta": {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
                                        "quick": args.quick, "reps": reps, "rows": rows,
                                        "backfill_rows": backfill_rows,
                                        "load_start": load_average()}}
    servers = PrivateServers("facusync-bench-tls-", tls=True)
    pg, rds, ca, workdir = servers.pg, servers.rds, servers.ca, servers.workdir
    assert ca is not None
    log(f"servers: PostgreSQL 15 (durable, ssl=on), Redis 7 (port and tls-port) and the SQL "
        f"Server stand-in (certificate, encryption not forced) in {workdir}")

    def measure() -> None:
        log(f"1. consumer write path: {rows:,} rows, plaintext and TLS, {reps} repetitions")
        results["write_path"] = write_path(pg, rds, ca, workdir, rows=rows, reps=reps, log=log)
        log(f"2. backfill of {backfill_rows:,} rows, plaintext and TLS, {reps} repetitions")
        results["backfill"] = backfill(pg, rds, ca, workdir, rows=backfill_rows, reps=reps, log=log)

    code = servers.run(measure)
    if code:
        return code
    results["meta"]["load_end"] = load_average()
    results["meta"]["seconds"] = round(time.monotonic() - started, 1)
    results["summary"] = summarize(results)
    print(f"\n| TLS cost (median of {reps}) | plaintext rows/s | TLS rows/s | TLS, % of plaintext |")
    print("| --- | ---: | ---: | ---: |")
    for line in results["summary"]:
        print(f"| {line['measure']} | {line['plaintext_rows_per_s']:,} | {line['tls_rows_per_s']:,} "
              f"| {line['tls_pct_of_plaintext']}% |")
    write_results(results, args.json or (None if args.quick else str(ROOT / "bench" / "results-tls.json")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
