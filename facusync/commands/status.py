"""`facusync status`: one screen that says whether the sync works, and if not, why.

Exit codes, for monitoring: 0 healthy, 1 degraded, 2 down.

What makes it degraded or down, and the warnings, is decided in facusync.operations.status;
this prints the gathered facts and that verdict.

A daemon that stops cleanly says so (state ``stopped``); one that died just falls silent.
Consumers that stopped or fell silent are listed apart, marked, until their stats expire.
Times in ``--json`` are Unix seconds, every number a JSON number.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from facusync.config import Config
from facusync.errors import EX_DOWN
from facusync.operations.status import ago, collect, number
from facusync.stream import State


def render(data: dict[str, Any], now: float) -> str:
    """The one screen: the verdict and its reasons first, then each part of the pipeline."""
    lines: list[str] = []
    health = data["health"]
    lines.append(f"facusync status at {data['time']}: {health['state'].upper()}")
    for reason in health["reasons"]:
        lines.append(f"  ! {reason}")
    for warning in health.get("warnings", []):
        lines.append(f"  warning: {warning}")
    if "producer" in data:
        producer = data["producer"]
        beat = number(producer, "heartbeat")
        lines.append("Producer")
        said = (f"silent for {now - beat:.0f} s; it last said {producer['reported_state']}"
                if producer["state"] == "stale" and beat else producer.get("cause") or "")
        when = f" {ago(now - beat)}" if producer["state"] == State.STOPPED and beat else ""
        lines.append(f"  state        {producer['state']}{when}" + (f" ({said})" if said else ""))
        last = number(producer, "last_cycle_at")
        lines.append(f"  last cycle   {ago(now - last if last else None)}: "
                     f"read {producer.get('last_read', '-')}, "
                     f"queued {producer.get('last_queued', '-')}, "
                     f"unchanged {producer.get('last_unchanged', '-')}, "
                     f"{producer.get('last_duration_ms', '-')} ms")
        lines.append(f"  watermark    {producer.get('watermark') or '-'}")
        lines.append(f"  heartbeat    {ago(now - beat if beat else None)}")
        queue = data["queue"]
        lines.append("Queue")
        lines.append(f"  length {queue['length']} (pending {queue['pending']}, "
                     f"undelivered {queue['undelivered']}), "
                     f"oldest waiting {queue['oldest_age_s']:.0f} s, dead letters {queue['dead_letters']}")
        lines.append("Consumers")
        if not data["consumers"]:
            lines.append("  none has reported")
        # Live consumers first; the others stay listed (marked) until their stats expire.
        for name, consumer in sorted(data["consumers"].items(), key=lambda kv: (not kv[1]["alive"], kv[0])):
            beat = number(consumer, "heartbeat")
            last_batch = number(consumer, "last_batch_at")
            if not consumer["alive"]:
                what = "STOPPED" if consumer.get("state") == State.STOPPED else "SILENT, not running?"
                lines.append(f"  {name:<28} {what}: last heard {ago(now - beat if beat else None)}"
                             f", pending {consumer.get('pending', 0)}")
                continue
            lines.append(f"  {name:<28} last batch {consumer.get('last_batch_size', '-')} rows "
                         f"{ago(now - last_batch if last_batch else None)}, "
                         f"{consumer.get('rows_per_s', '-')} rows/s, pending {consumer.get('pending', 0)}, "
                         f"heartbeat {ago(now - beat if beat else None)}")
    if "postgresql" in data:
        pg = data["postgresql"]
        lines.append("PostgreSQL")
        lines.append(f"  rows {pg['rows']} (soft-deleted {pg['soft_deleted']}), committed watermark "
                     f"{pg['committed_watermark'] or '-'}")
        lines.append(f"  newest committed change {pg['newest_committed_change'] or '-'} "
                     f"({ago(pg['newest_change_age_s'])}), last commit {ago(pg['last_commit_age_s'])}")
        if "queue" in data:
            lines.append(f"  lag {data['queue']['oldest_age_s']:.0f} s (oldest change still waiting)")
    if "reconcile" in data:
        last_run = data["reconcile"]
        lines.append("Reconcile")
        if last_run.get("finished_at"):
            lines.append(f"  last run     {ago(last_run['last_run_age_s'])}: "
                         f"{last_run.get('upserts', '?')} upserts, "
                         f"{last_run.get('tombstones', '?')} tombstones"
                         + (" — REFUSED (mass-delete guard)" if last_run.get("refused") is True else ""))
        else:
            lines.append("  last run     never (no record in Redis)")
        lines.append(f"  expected     every {last_run['interval_s']:g} s (RECONCILE_INTERVAL), overdue after "
                     f"{2 * last_run['interval_s']:g} s")
        performance = data["performance"]
        lines.append("Recent performance")
        p50, p95 = performance["batch_ms_p50"], performance["batch_ms_p95"]
        lines.append(f"  {performance['rows_per_s_last_60s']} rows/s over the last minute; batch latency "
                     f"p50 {p50 if p50 is not None else '-'} ms, p95 {p95 if p95 is not None else '-'} ms")
    for target in ("redis_error", "postgresql_error"):
        if target in data:
            lines.append(f"DOWN: {data[target]['error']}")
    return "\n".join(lines)


def run(cfg: Config, args: argparse.Namespace) -> int:
    data, health = collect(cfg)
    if args.json:
        print(json.dumps(data, ensure_ascii=False, indent=2, default=str))
    else:
        print(render(data, time.time()))
    return health.code


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = sub.add_parser("status", help="is it working, and if not, why (exit 0/1/2)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.set_defaults(func=run, failure_code=EX_DOWN)
