"""Rows/s the SQL Server stand-in delivers to pymssql: 7-column VW_VENTAS_SYNC rows read
with fetchmany, the server in its own process (as in the tests and the demo).

    .venv/bin/python -m bench.bench_standin [--rows 200000] [--batch 5000] [--repeat 3] [--debian]

Prints a table, then one JSON line (for scripts that collect benchmark results).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from devstack.standin.harness import StandIn

REPO = Path(__file__).resolve().parents[1]

QUERIES = {
    "key order (BIN2)": "SELECT [CONDUCE], [FECHA_EMISION], [FACTURADO], [NUMERO_FACTURA], [CODIGO_CLIENTE], "
                        "[CLIENTE], [ULTIMA_MODIFICACION] FROM [VW_VENTAS_SYNC] "
                        "ORDER BY [CONDUCE] COLLATE Latin1_General_BIN2",
    "version order (poll)": "SELECT [CONDUCE], [FECHA_EMISION], [FACTURADO], [NUMERO_FACTURA], "
                            "[CODIGO_CLIENTE], [CLIENTE], [ULTIMA_MODIFICACION] FROM [VW_VENTAS_SYNC] "
                            "WHERE [ULTIMA_MODIFICACION] >= '2000-01-01 00:00:00.000' "
                            "ORDER BY [ULTIMA_MODIFICACION], [CONDUCE]",
}


def read_all(server: StandIn, sql: str, batch: int) -> tuple[int, float, float]:
    """(rows, wall seconds, client CPU seconds) for one full read through pymssql."""
    import pymssql

    conn = pymssql.connect(**server.connect_kwargs(login_timeout=10, timeout=120))
    try:
        cursor = conn.cursor()
        cpu, started = time.process_time(), time.perf_counter()
        cursor.execute(sql)
        count = 0
        while True:
            rows = cursor.fetchmany(batch)
            if not rows:
                break
            count += len(rows)
        return count, time.perf_counter() - started, time.process_time() - cpu
    finally:
        conn.close()


def read_debian(server: StandIn, sql: str, batch: int) -> tuple[int, float, float]:
    """The same read with Debian's python3-pymssql 2.2.2 (a subprocess of /usr/bin/python3)."""
    probe = REPO / "devstack" / "standin" / "probe.py"
    env = dict(os.environ, STANDIN_PASSWORD=server.password)
    env.pop("PYTHONPATH", None)
    done = subprocess.run(
        ["/usr/bin/python3", "-I", str(probe), "--port", str(server.port), "--user", server.user,
         "--timeout", "120", "--batch", str(batch), "stream", sql],
        env=env, capture_output=True, text=True, timeout=600, check=True,
    )
    result = json.loads(done.stdout.strip().splitlines()[-1])
    if "error" in result:
        raise RuntimeError(result["message"])
    return int(result["rows"]), float(result["seconds"]), float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=5000, help="fetchmany size")
    parser.add_argument("--repeat", type=int, default=3, help="runs per query; the best is reported")
    parser.add_argument("--debian", action="store_true", help="also measure Debian's python3-pymssql")
    parser.add_argument("--packet-size", type=int, help="force the TDS packet size (default: the client's)")
    args = parser.parse_args()

    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-standin-") as workdir:
        server = StandIn(Path(workdir), log_level="WARNING", packet_size=args.packet_size)
        started = time.perf_counter()
        server.seed(args.rows)
        seed_seconds = time.perf_counter() - started
        clients = [("pymssql (venv)", read_all)]
        if args.debian:
            clients.append(("pymssql 2.2.2 (Debian)", read_debian))
        with server:
            for client, reader in clients:
                for label, sql in QUERIES.items():
                    runs = [reader(server, sql, args.batch) for _ in range(args.repeat)]
                    count, wall, cpu = min(runs, key=lambda run: run[1])
                    if count != args.rows:
                        raise RuntimeError(f"read {count} rows, expected {args.rows}")
                    cpu_per_row = None if cpu != cpu else round(cpu / count * 1e6, 2)  # NaN: unknown
                    results.append({"client": client, "query": label, "rows": count,
                                    "seconds": round(wall, 3), "rows_per_s": round(count / wall),
                                    "client_cpu_us_per_row": cpu_per_row})

    print(f"seeded {args.rows} rows in {seed_seconds:.1f}s; fetchmany({args.batch}), best of {args.repeat}")
    print(f"{'client':<24} {'query':<22} {'rows':>8} {'seconds':>8} {'rows/s':>9} {'client µs/row':>13}")
    for r in results:
        per_row = "-" if r["client_cpu_us_per_row"] is None else f"{r['client_cpu_us_per_row']:.2f}"
        print(f"{r['client']:<24} {r['query']:<22} {r['rows']:>8} {r['seconds']:>8.2f} "
              f"{r['rows_per_s']:>9} {per_row:>13}")
    print(json.dumps({"benchmark": "standin_fetchmany", "rows": args.rows, "batch": args.batch,
                      "seed_seconds": round(seed_seconds, 2), "results": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
