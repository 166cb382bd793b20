#!/usr/bin/env python3
"""`make bench`: throughput, latency, memory and idle cost of facusync against the ceiling.

One run, on private servers (PostgreSQL 15 with durable settings, Redis 7, the SQL Server
stand-in), so that every comparison is measured under the same conditions: quote the ratios,
which survive noise much better than the absolute numbers. Each number is the median of the
repetitions; each ratio is the median of the per-repetition ratios. See bench/README.md.

    .venv/bin/python -m bench.run [--quick] [--json bench/results.json] [--reps 3]
        [--rows 50000] [--backfill-rows 1000000] [--only write,pipeline]
        [--set CHUNK_SIZE=5000 --set FETCH_SIZE=10000 ...]

--quick is the smoke mode (seconds, tiny sizes): it checks that the benchmark still works,
its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

from bench import pipeline, writepath
from bench.common import PrivateServers, default_settings, load_average, median, write_results
from facusync.logsetup import setup_logging

ROOT = Path(__file__).resolve().parents[1]

TARGETS = {  # from issue 13
    "insert_pct_copy": 30.0, "update_pct_copy": 20.0, "two_consumers_x": 1.3, "vs_naive_x": 8.0,
    "backfill_s": 25.0, "backfill_pct_raw": 50.0, "rss_mb": 100.0, "idle_cpu_pct": 1.0,
    "metrics_cost_pct": 1.0,  # issue 18
}


def ratios(num: list[float], den: list[float]) -> float:
    """Median of per-repetition ratios (each pair measured minutes apart at most)."""
    return median(a / b for a, b in zip(num, den, strict=True) if b)


def summarize(results: dict[str, Any], defaults: dict[str, int]) -> dict[str, Any]:
    """Medians, ratios and the targets, from the raw per-repetition numbers."""
    s: dict[str, Any] = {}
    checks: list[dict[str, Any]] = []

    def check(name: str, measured: float, target: float, *, at_most: bool = False) -> None:
        ok = measured <= target if at_most else measured >= target
        checks.append({"target": name, "measured": round(measured, 2),
                       "goal": f"{'<=' if at_most else '>='} {target:g}", "met": bool(ok)})

    w = results.get("write_path")
    if w:
        copy = w["copy"]
        s["copy_rows_per_s"] = round(median(copy))
        per_batch = {}
        for batch, m in w["batches"].items():
            per_batch[batch] = {
                "insert_rows_per_s": round(median(m["insert"])),
                "update_rows_per_s": round(median(m["update"])),
                "insert_pct_copy": round(100 * ratios(m["insert"], copy), 1),
                "update_pct_copy": round(100 * ratios(m["update"], copy), 1),
            }
        s["batches"] = per_batch
        naive = w["naive"]
        s["naive_rows_per_s"] = {op: round(median(naive[op])) for op in ("insert", "update")}
        default = w["batches"][str(defaults["BATCH_SIZE"])]
        two = w["two_consumers"]
        s["two_consumers"] = {op: round(median(two[op])) for op in ("insert", "update")}
        s["two_vs_one_x"] = {op: round(ratios(two[op], default[op]), 2) for op in ("insert", "update")}
        s["vs_naive_x"] = {op: round(ratios(default[op], naive[op]), 1)
                           for op in ("insert", "update")}
        d = per_batch[str(defaults["BATCH_SIZE"])]
        check(f"insert % of COPY at BATCH_SIZE={defaults['BATCH_SIZE']}", d["insert_pct_copy"],
              TARGETS["insert_pct_copy"])
        check(f"update % of COPY at BATCH_SIZE={defaults['BATCH_SIZE']}", d["update_pct_copy"],
              TARGETS["update_pct_copy"])
        for op in ("insert", "update"):
            check(f"{op}: consumer / naive baseline (x)", s["vs_naive_x"][op], TARGETS["vs_naive_x"])
        for op in ("insert", "update"):
            check(f"{op}: two consumers / one (x)", s["two_vs_one_x"][op], TARGETS["two_consumers_x"])
        if "metrics" in w:
            s["metrics"] = metrics_cost(w["metrics"])
            for op in ("insert", "update"):
                check(f"{op}: metrics' CPU, % of the consumer's, scraped every 1 s",
                      s["metrics"][op]["cost_pct_scrape_1s"], TARGETS["metrics_cost_pct"], at_most=True)
    p = results.get("pipeline")
    if p:
        runs = p["backfill"]
        s["backfill"] = {
            "rows": p["rows"],
            "seconds": round(median(r["seconds"] for r in runs), 2),
            "rows_per_s": round(median(r["rows_per_s"] for r in runs)),
            "raw_read_rows_per_s": round(median(r["raw_read"]["rows_per_s"] for r in runs)),
            "pct_of_raw_read": round(median(r["pct_of_raw_read"] for r in runs), 1),
            "producer_peak_rss_mb": round(max(r["peak_rss_kb"]["producer_kb"] for r in runs) / 1024, 1),
            "consumer_peak_rss_mb": round(max(r["peak_rss_kb"]["consumer_kb"] for r in runs) / 1024, 1),
        }
        b = s["backfill"]
        scale = 1_000_000 / p["rows"]
        check(f"backfill of {p['rows']:,} rows (s{', scaled to 1M' if scale != 1 else ''})",
              b["seconds"] * scale, TARGETS["backfill_s"], at_most=True)
        check("backfill % of raw read speed", b["pct_of_raw_read"], TARGETS["backfill_pct_raw"])
        check("producer peak RSS (MB)", b["producer_peak_rss_mb"], TARGETS["rss_mb"], at_most=True)
        check("consumer peak RSS (MB)", b["consumer_peak_rss_mb"], TARGETS["rss_mb"], at_most=True)
        lat = p["latency"]
        s["latency"] = {k: lat[k] for k in ("p50_s", "p95_s", "p99_s", "max_s", "measured", "never_seen")}
        check("latency p99 (s) at SYNC_INTERVAL=1", lat["p99_s"], 1 + 1.0, at_most=True)
        if lat["never_seen"]:
            checks.append({"target": "every change seen in PostgreSQL", "measured": lat["never_seen"],
                           "goal": "0 missing", "met": False})
        future = p.get("latency_future_rows")
        if future:
            s["latency_future_rows"] = {k: future[k] for k in ("p50_s", "p95_s", "p99_s", "max_s",
                                                                "measured", "never_seen")}
            # "Unchanged": within one polling interval of the run before it.
            check("latency p99 (s), rows dated in the future present", future["p99_s"],
                  lat["p99_s"] + 1.0, at_most=True)
            if future["never_seen"]:
                checks.append({"target": "every change seen, future rows present",
                               "measured": future["never_seen"], "goal": "0 missing", "met": False})
        s["idle"] = p["idle"]
        for label, idle in p["idle"].items():
            for daemon in ("producer", "consumer"):
                check(f"idle CPU % of {daemon} ({label.replace('_', ' ')})", idle[daemon],
                      TARGETS["idle_cpu_pct"], at_most=True)
    s["targets"] = checks
    return s


def metrics_cost(m: dict[str, Any]) -> dict[str, Any]:
    """The metrics' cost on the consumer, two ways, from the same run.

    End to end: on against off, paired in measuring order (off, on, on, off per repetition);
    on this shared machine its spread is several percent either way. By parts: the CPU of the
    per-batch hook and of one scrape, measured alone, over the consumer's own CPU per row (its
    `off` runs): the share the metrics add at a given scrape interval.
    """
    hook = median(c["hook_us_per_batch"] for c in m["cost"])
    scrape = median(c["scrape_cpu_ms"] for c in m["cost"])
    out: dict[str, Any] = {"scrape_every_s": m["scrape_every_s"], "batch_size": m["batch_size"],
                           "scrapes_median": median(m["on"]["scrapes"]),
                           "hook_us_per_batch": hook, "scrape_cpu_ms": scrape}
    for op in ("insert", "update"):
        on, off = m["on"], m["off"]
        cpu_ratios = [a / b for a, b in zip(on[f"{op}_cpu_us_per_row"], off[f"{op}_cpu_us_per_row"],
                                            strict=True)]
        cpu_row = median(off[f"{op}_cpu_us_per_row"])
        rate = median(off[op])

        def share(every: float, cpu_row: float = cpu_row, rate: float = rate) -> float:
            return round(100 * (hook / float(m["batch_size"]) + 1000 * scrape / (every * rate)) / cpu_row, 3)

        out[op] = {
            "rows_per_s_off": round(rate), "rows_per_s_on": round(median(on[op])),
            "rows_per_s_change_pct": round(100 * (ratios(on[op], off[op]) - 1), 2),
            "cpu_us_per_row_off": round(cpu_row, 2),
            "cpu_us_per_row_on": round(median(on[f"{op}_cpu_us_per_row"]), 2),
            "cpu_change_pct": round(100 * (median(cpu_ratios) - 1), 2),
            "cpu_change_pct_range": [round(100 * (min(cpu_ratios) - 1), 1),
                                     round(100 * (max(cpu_ratios) - 1), 1)],
            "cost_pct_scrape_1s": share(1.0), "cost_pct_scrape_15s": share(15.0),
        }
    return out


def print_table(results: dict[str, Any], s: dict[str, Any]) -> None:
    meta = results["meta"]
    print(f"\nfacusync benchmark  {meta['date']}  {meta['cpus']} CPUs  load average "
          f"{meta['load_start']} -> {meta['load_end']}  {meta['seconds']:.0f} s")
    w = results.get("write_path")
    if w:
        print(f"\n1. consumer write path ({w['rows']:,} rows; median of {w['reps']}; rows/s; "
              f"% = median ratio to COPY in the same repetition)")
        print(f"   {'':<26}{'insert':>10}{'% COPY':>9}{'update':>10}{'% COPY':>9}")
        print(f"   {'COPY ceiling':<26}{s['copy_rows_per_s']:>10,}")
        for batch, m in sorted(s["batches"].items(), key=lambda kv: int(kv[0])):
            print(f"   {'consumer BATCH_SIZE=' + batch:<26}{m['insert_rows_per_s']:>10,}"
                  f"{m['insert_pct_copy']:>8}%{m['update_rows_per_s']:>10,}{m['update_pct_copy']:>8}%")
        n = s["naive_rows_per_s"]
        print(f"   {'naive (BRPOP, executemany)':<26}{n['insert']:>10,}{'':>9}{n['update']:>10,}")
        c = s["two_consumers"]
        print(f"   {'two consumers, default':<26}{c['insert']:>10,}{'':>9}{c['update']:>10,}")
        print(f"   two / one: insert {s['two_vs_one_x']['insert']}x, update {s['two_vs_one_x']['update']}x"
              + f";  default batch / naive: insert {s['vs_naive_x']['insert']}x, update "
              f"{s['vs_naive_x']['update']}x")
        if "metrics" in s:
            m = s["metrics"]
            print(f"   metrics on vs off (BATCH_SIZE={m['batch_size']}, scraped every "
                  f"{m['scrape_every_s']:g} s, {m['scrapes_median']:g} scrapes per run; "
                  "median of paired ratios)")
            for op in ("insert", "update"):
                c = m[op]
                low, high = c["cpu_change_pct_range"]
                print(f"     {op}: {c['rows_per_s_on']:,} vs {c['rows_per_s_off']:,} rows/s "
                      f"({c['rows_per_s_change_pct']:+}%); consumer CPU {c['cpu_us_per_row_on']} vs "
                      f"{c['cpu_us_per_row_off']} µs/row ({c['cpu_change_pct']:+}%, pairs "
                      f"{low:+}% to {high:+}%)")
            print(f"     by parts: hook {m['hook_us_per_batch']} µs per batch, one scrape "
                  f"{m['scrape_cpu_ms']} ms CPU = "
                  + ", ".join(f"{op} {m[op]['cost_pct_scrape_1s']}% (scraped every 1 s), "
                              f"{m[op]['cost_pct_scrape_15s']}% (15 s)" for op in ("insert", "update"))
                  + " of the consumer's CPU")
    p = results.get("pipeline")
    if p:
        b = s["backfill"]
        print(f"\n2. backfill {b['rows']:,} rows, stand-in -> PostgreSQL, real daemons "
              f"(median of {p['reps']}; {json.dumps(p['settings']) if p['settings'] else 'defaults'})")
        print(f"   {b['seconds']} s, {b['rows_per_s']:,} rows/s = {b['pct_of_raw_read']}% of the raw read "
              f"({b['raw_read_rows_per_s']:,} rows/s); peak RSS producer {b['producer_peak_rss_mb']} MB, "
              f"consumer {b['consumer_peak_rss_mb']} MB")
        cpu = p["backfill"][-1]["cpu_pct"]
        print("   CPU % of one core during the last backfill: "
              + ", ".join(f"{k} {v}" for k, v in cpu.items()))
        lat = p["latency"]
        print(f"\n3. latency, commit in the source -> visible in PostgreSQL, SYNC_INTERVAL=1, "
              f"{lat['rate']:g} changes/s for {lat['seconds']:g} s ({lat['measured']} measured, "
              f"{lat['never_seen']} never seen)")
        print(f"   p50 {lat['p50_s']} s, p95 {lat['p95_s']} s, p99 {lat['p99_s']} s, max {lat['max_s']} s;"
              f" producer cycle {lat['producer_cycle_ms_p50']} ms (p50, re-reading "
              f"{lat['producer_rows_read_per_cycle_p50']:g} rows), consumer batch "
              f"{lat['consumer_batch_ms_p50']} ms")
        future = p.get("latency_future_rows")
        if future:
            print(f"   with a row dated tomorrow and one dated 9999-12-31 in the view: p50 "
                  f"{future['p50_s']} s, p95 {future['p95_s']} s, p99 {future['p99_s']} s, max "
                  f"{future['max_s']} s ({future['measured']} measured, {future['never_seen']} never seen)")
        print("\n4. idle CPU % of one core (nothing changes)")
        for label, idle in p["idle"].items():
            print(f"   {label}: producer {idle['producer']}, consumer {idle['consumer']} "
                  f"(stand-in {idle['standin']}, postgres {idle['postgres']}, redis {idle['redis']}; "
                  f"overlap re-read {idle['rows_reread_per_cycle']} rows per cycle)")
    print("\ntargets")
    for c in s["targets"]:
        print(f"   {'ok  ' if c['met'] else 'MISS'} {c['target']:<52} {c['measured']!s:>9}  {c['goal']}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke mode: tiny sizes, seconds")
    parser.add_argument("--json", help="where to write the results (default bench/results.json; "
                        "--quick writes none unless given, so a smoke run never replaces them)")
    parser.add_argument("--reps", type=int, help="repetitions (default 3; quick 1)")
    parser.add_argument("--rows", type=int, help="write-path rows (default 50000)")
    parser.add_argument("--naive-rows", type=int, help="naive-baseline rows (default rows/5)")
    parser.add_argument("--backfill-rows", type=int, help="default 1000000")
    parser.add_argument("--backfill-reps", type=int, help="default 2")
    parser.add_argument("--batch-sizes", help="besides the default (50,500,1000,2000; quick 50)")
    parser.add_argument("--idle-seconds", type=float)
    parser.add_argument("--latency-seconds", type=float)
    parser.add_argument("--latency-rate", type=float, default=100.0)
    parser.add_argument("--only", default="write,pipeline")
    parser.add_argument("--set", action="append", default=[], metavar="VAR=VALUE",
                        help="a setting for the daemons in sections 2-4 (e.g. CHUNK_SIZE=5000)")
    args = parser.parse_args()
    quick = args.quick
    reps = args.reps or (1 if quick else 3)
    rows = args.rows or (2000 if quick else 50_000)
    backfill_rows = args.backfill_rows or (5000 if quick else 1_000_000)
    overrides = dict(item.split("=", 1) for item in args.set)
    defaults = default_settings()
    batch_sizes = args.batch_sizes or ("50" if quick else "50,500,1000,2000")
    sizes = sorted({*(int(b) for b in batch_sizes.split(",") if b), defaults["BATCH_SIZE"]})
    only = set(args.only.split(","))

    setup_logging("WARNING", "text", sys.stderr)
    started = time.monotonic()
    results: dict[str, Any] = {"meta": {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "host": platform.node(),
        "cpus": os.cpu_count(), "python": platform.python_version(), "quick": quick,
        "load_start": load_average(), "defaults": defaults}}
    servers = PrivateServers("facusync-bench-")
    pg, rds, workdir = servers.pg, servers.rds, servers.workdir
    print(f"servers: PostgreSQL 15 (durable) and Redis 7 in {workdir}; load average "
          f"{results['meta']['load_start']}", flush=True)

    def measure() -> None:
        if "write" in only:
            print(f"1. consumer write path: {rows:,} rows, batch sizes {sizes}, {reps} repetitions",
                  flush=True)
            results["write_path"] = writepath.run(
                pg, rds, workdir, rows=rows, naive_rows=args.naive_rows or max(200, rows // 5),
                batch_sizes=sizes, default_batch=defaults["BATCH_SIZE"], reps=reps,
                log=lambda m: print(m, flush=True))
        if "pipeline" in only:
            print(f"2-4. backfill of {backfill_rows:,} rows, idle, latency", flush=True)
            results["pipeline"] = pipeline.run(
                pg, rds, workdir, rows=backfill_rows,
                reps=args.backfill_reps or (1 if quick else 2),
                idle_seconds=args.idle_seconds or (2.0 if quick else 30.0),
                latency_seconds=args.latency_seconds or (3.0 if quick else 60.0),
                latency_rate=args.latency_rate, overrides=overrides,
                log=lambda m: print(m, flush=True))

    code = servers.run(measure)
    if code:
        return code
    results["meta"]["load_end"] = load_average()
    results["meta"]["seconds"] = round(time.monotonic() - started, 1)
    results["summary"] = summarize(results, defaults)
    print_table(results, results["summary"])
    write_results(results, args.json or (None if quick else str(ROOT / "bench" / "results.json")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
