"""`facusync verify`: compare SQL Server and PostgreSQL row by row; change nothing.

Exit 0 only when both sides hold the same rows with the same values, so monitoring can call
it. Rows still in flight in the queue count as differences: run it when the queue is drained,
or read the numbers as "right now".
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from facusync.columns import discover_columns
from facusync.compare import iter_pg_rows, iter_view_rows, merge
from facusync.config import Config
from facusync.errors import EX_DEGRADED, EX_OK
from facusync.pgconn import connect_pg
from facusync.source import ViewSource


@dataclass
class VerifyReport:
    """The counts on both sides and examples of each kind of difference."""

    source_rows: int = 0
    pg_rows: int = 0
    pg_active_rows: int = 0
    pg_soft_deleted: int = 0
    missing_in_pg: int = 0
    deleted_in_pg_but_in_source: int = 0
    extra_in_pg: int = 0
    different: int = 0
    null_keys_in_source: int = 0
    duration_s: float = 0.0
    examples: dict[str, list[Any]] = field(default_factory=dict)

    @property
    def differences(self) -> int:
        return (self.missing_in_pg + self.deleted_in_pg_but_in_source + self.extra_in_pg
                + self.different + self.null_keys_in_source)

    def example(self, kind: str, value: Any, limit: int) -> None:
        bucket = self.examples.setdefault(kind, [])
        if len(bucket) < limit:
            bucket.append(value)


def _diff_columns(source_json: str, pg_json: str) -> dict[str, list[Any]]:
    a, b = json.loads(source_json), json.loads(pg_json)
    return {k: [a.get(k), b.get(k)] for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


def compare(cfg: Config, limit: int = 10) -> VerifyReport:
    """Stream both sides in key order and count every kind of difference."""
    t0 = time.monotonic()
    report = VerifyReport()
    source = ViewSource(cfg)
    conn = connect_pg(cfg, application="facusync-verify")
    try:
        cols = discover_columns(cfg, source)
        conn.set_session(readonly=True)
        for key, v, p in merge(iter_view_rows(source, cols), iter_pg_rows(conn, cfg, cols)):
            if v is not None:
                report.source_rows += 1
            if p is not None:
                report.pg_rows += 1
                if p.deleted:
                    report.pg_soft_deleted += 1
                else:
                    report.pg_active_rows += 1
            if v is not None and v.key is None:
                report.null_keys_in_source += 1
                report.example("null_keys_in_source", json.loads(v.row_json), limit)
            elif p is None:
                report.missing_in_pg += 1
                report.example("missing_in_pg", key, limit)
            elif v is None:
                if not p.deleted:
                    report.extra_in_pg += 1
                    report.example("extra_in_pg", key, limit)
            elif p.deleted:
                report.deleted_in_pg_but_in_source += 1
                report.example("deleted_in_pg_but_in_source", key, limit)
            elif v.digest != p.encoded.digest:
                report.different += 1
                report.example("different", {"key": key, "columns": _diff_columns(
                    v.row_json, p.encoded.row_json)}, limit)
        conn.rollback()
    finally:
        conn.close()
        source.close()
    report.duration_s = round(time.monotonic() - t0, 2)
    return report


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
    parser.set_defaults(func=run, failure_code=2)
