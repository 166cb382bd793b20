"""`facusync check`: can we reach SQL Server, PostgreSQL and Redis, and how fast?

Prints OK/FAIL per target with the server version, round-trip
time and how the connection is protected (encrypted? TLS version? certificate verified?), or
the likely cause, naming the setting to change. Exit 0 only when all three answer. The
probes are facusync.operations.check.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict

from facusync.config import Config
from facusync.errors import EX_OK, EX_UNAVAILABLE
from facusync.operations.check import probe_all


def run(cfg: Config, args: argparse.Namespace) -> int:
    probes = probe_all(cfg)
    if args.json:
        print(json.dumps([asdict(p) for p in probes], ensure_ascii=False, indent=2))
    else:
        for p in probes:
            state = "OK  " if p.ok else "FAIL"
            rtt = f"{p.rtt_ms:7.1f} ms" if p.rtt_ms is not None else "        -"
            tls = f"; {p.tls.describe()}" if p.tls else ""
            print(f"{state} {p.target:<11} {p.address:<32} {rtt}  {p.detail}{tls}")
    return EX_OK if all(p.ok for p in probes) else EX_UNAVAILABLE


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = sub.add_parser("check", help="test the connections to SQL Server, PostgreSQL, Redis")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.set_defaults(func=run)
