"""Verify: compare SQL Server and PostgreSQL row by row, and change nothing.

Kept apart from reconcile, which repairs: this only counts, so monitoring can call it at any
time. Rows still in flight in the queue count as differences ("right now", not "eventually").
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from facusync.columns import discover_columns
from facusync.compare import iter_pg_rows, iter_view_rows, merge
from facusync.config import Config
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
    in_source, in_pg = json.loads(source_json), json.loads(pg_json)
    return {column: [in_source.get(column), in_pg.get(column)]
            for column in sorted(set(in_source) | set(in_pg))
            if in_source.get(column) != in_pg.get(column)}


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
