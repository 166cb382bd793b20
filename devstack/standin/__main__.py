"""Command line: ``python -m devstack.standin serve|seed|workload ...``."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devstack.standin",
                                     description="SQL Server stand-in for facusync tests")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the TDS server")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=1433, help="0 picks a free port")
    serve.add_argument("--port-file", type=Path, help="write the listening port here when ready")
    serve.add_argument("--db", type=Path, required=True, help="SQLite file (created if missing)")
    serve.add_argument("--user", default=os.environ.get("STANDIN_USER", "facusync_ro"))
    serve.add_argument("--password", default=os.environ.get("STANDIN_PASSWORD"),
                       help="login password (or env STANDIN_PASSWORD)")
    serve.add_argument("--database", default="g_FACU")
    serve.add_argument("--control", type=Path, help="JSON fault-control file, re-read when changed")
    serve.add_argument("--packet-size", type=int, help="force a TDS packet size")
    serve.add_argument("--log-level", default="INFO")
    serve.add_argument("--encryption", choices=("not_sup", "off", "on"), default="not_sup",
                       help="SQL Server's setting: no certificate, certificate (login encrypted),"
                            " Force Encryption (whole session)")
    serve.add_argument("--cert", type=Path, help="server certificate (PEM) for off/on")
    serve.add_argument("--key", type=Path, help="its private key (PEM)")
    serve.add_argument("--tls-min", choices=("1.0", "1.1", "1.2", "1.3"), default="1.2")
    serve.add_argument("--tls-max", choices=("1.0", "1.1", "1.2", "1.3"), default="1.2")

    seed = sub.add_parser("seed", help="fill VW_VENTAS_SYNC with realistic rows")
    seed.add_argument("--db", type=Path, required=True)
    seed.add_argument("--rows", type=int, default=1000)
    seed.add_argument("--seed", type=int, default=0)
    seed.add_argument("--append", action="store_true", help="keep existing rows")

    work = sub.add_parser("workload", help="keep inserting/updating rows at a given rate")
    work.add_argument("--db", type=Path, required=True)
    work.add_argument("--rate", type=float, default=10.0, help="changes per second")
    work.add_argument("--seconds", type=float, default=60.0)
    work.add_argument("--seed", type=int, default=1)
    work.add_argument("--deletes", type=float, default=0.0, help="fraction of changes that delete")
    work.add_argument("--late", type=float, default=0.0, help="fraction committed late (old version)")
    work.add_argument("--record", type=Path, help="append one JSON line per change here")

    args = parser.parse_args(argv)
    if args.command == "serve":
        logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        if not args.password:
            parser.error("--password or STANDIN_PASSWORD is required")
        from .server import run
        from .settings import ServerConfig

        config = ServerConfig(db_path=args.db, user=args.user, password=args.password,
                              database=args.database, control=args.control,
                              packet_size=args.packet_size, encryption=args.encryption,
                              cert_file=args.cert, key_file=args.key, tls_min=args.tls_min,
                              tls_max=args.tls_max)
        run(config, args.host, args.port, args.port_file)
        return 0
    if args.command == "seed":
        import time

        from .seed import seed_view

        started = time.monotonic()
        count = seed_view(args.db, args.rows, seed=args.seed, replace=not args.append)
        print(f"seeded {count} rows into {args.db} in {time.monotonic() - started:.1f}s")
        return 0
    if args.command == "workload":
        from .workload import Workload

        workload = Workload(args.db, rate=args.rate, seed=args.seed, delete_ratio=args.deletes,
                            late_ratio=args.late, record=args.record)
        stats = workload.run(args.seconds)
        print(stats)
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
