"""`facusync verify`: compare SQL Server and PostgreSQL row by row; change nothing.

Exit 0 only when both sides hold the same rows with the same values, so monitoring can call
it. Rows still in flight in the queue count as differences: run it when the queue is drained,
or read the numbers as "right now". The comparison is facusync.operations.verify.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict

from facusync.config import Config
from facusync.errors import EX_DEGRADED, EX_DOWN, EX_OK
from facusync.operations.verify import VerifyReport, compare


def print_report(report: VerifyReport) -> None:
    state = "IN SYNC" if report.differences == 0 else f"DRIFT: {report.differences} difference(s)"
    print(f"verify: {state}  ({report.duration_s:.1f} s)")
    print(f"  SQL Server rows           {report.source_rows:>10}")
    print(f"  PostgreSQL rows           {report.pg_rows:>10}  "
          f"(active {report.pg_active_rows}, soft-deleted {report.pg_soft_deleted})")
    rows = [
        ("missing in PostgreSQL", report.missing_in_pg, "missing_in_pg"),
        ("soft-deleted but in source", report.deleted_in_pg_but_in_source,
         "deleted_in_pg_but_in_source"),
        ("in PostgreSQL, gone from source", report.extra_in_pg, "extra_in_pg"),
        ("values differ", report.different, "different"),
        ("NULL keys in source", report.null_keys_in_source, "null_keys_in_source"),
    ]
    for label, count, kind in rows:
        print(f"  {label:<32}{count:>6}")
        for ex in report.examples.get(kind, []):
            print(f"      e.g. {json.dumps(ex, ensure_ascii=False, default=str)}")
    if report.differences:
        print("  fix: let the queue drain, then run `facusync reconcile`; see `facusync status`")


def run(cfg: Config, args: argparse.Namespace) -> int:
    report = compare(cfg, args.examples)
    if args.json:
        data = asdict(report)
        data["differences"] = report.differences
        data["in_sync"] = report.differences == 0
        print(json.dumps(data, ensure_ascii=False, indent=2, default=str))
    else:
        print_report(report)
    return EX_OK if report.differences == 0 else EX_DEGRADED


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = sub.add_parser("verify", help="compare SQL Server and PostgreSQL (read-only)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument("--examples", type=int, default=10, metavar="N",
                        help="show up to N examples of each difference (default 10)")
    parser.set_defaults(func=run, failure_code=EX_DOWN)
