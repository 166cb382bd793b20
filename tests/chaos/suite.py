"""One chaos run from start to verdict: set up, break things for N minutes, drain, reconcile,
check that nothing was lost (tests.chaos.checks), print the table.

A failure prints the seed (to replay the same schedule), what failed, a diagnosis of each
lost or different row (its workload history, both sides, the faults around it), and the last
lines of every daemon's and server's log. The work directory is kept then.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

from tests.chaos.actors import ErpWorkload, LagProbe, Planners
from tests.chaos.checks import (
    Outcome,
    check_daemons,
    check_dead_letters,
    check_planners,
    check_polling,
    check_status,
    check_tracking_rows,
    check_verify,
    diagnose,
    drain,
    fix_poison_and_verify,
    pg_count,
)
from tests.chaos.faults import LABELS, Fault, Injector, plan
from tests.chaos.stack import Settings, Stack, cli, wait_for


@dataclass
class Options:
    minutes: float = 3.0
    seed: int = 0
    pg_outage: float = 30.0
    rate: float = 8.0  # ERP changes per second
    seed_rows: int = 2000
    restart_sec: float = 5.0
    sync_overlap: float = 60.0
    late_by: float = 20.0  # how old the version of a row committed late is (inside the overlap)
    drain_timeout: float = 150.0
    keep: bool = False


class Stopped(Exception):
    """The run cannot go on (the reason is already among the failures)."""


def replay_command(opts: Options) -> str:
    return (f"python -m tests.chaos --minutes {opts.minutes:g} --seed {opts.seed} "
            f"--pg-outage {opts.pg_outage:g}")


def run(opts: Options) -> int:
    """The whole run; returns the exit status (0 only when every check passed)."""
    workdir = Path(tempfile.mkdtemp(prefix="facusync-chaos-"))
    seconds = opts.minutes * 60
    faults = plan(opts.seed, seconds, opts.pg_outage, opts.sync_overlap)
    print(f"chaos: seed {opts.seed}; replay with: {replay_command(opts)}", flush=True)
    print(f"chaos: {len(faults)} faults in {seconds:.0f} s; work directory {workdir}", flush=True)
    for f in faults:
        print(f"chaos:   at {f.at:6.1f}s  {f.describe()}", flush=True)
    stack = Stack(workdir, Settings(restart_sec=opts.restart_sec, sync_overlap=opts.sync_overlap))
    outcome = Outcome()
    injector: Injector | None = None
    probe: LagProbe | None = None
    planners: Planners | None = None
    erp: ErpWorkload | None = None
    t_start = time.monotonic()
    try:
        stack.start_servers(opts.seed_rows, opts.seed)
        stack.migrate()
        stack.start_daemons()
        if not wait_for(lambda: pg_count(stack) == opts.seed_rows, 180):
            raise RuntimeError(f"the initial sync of {opts.seed_rows} rows did not finish in 180 s")
        outcome.phases["set-up and initial sync"] = time.monotonic() - t_start

        cfg = stack.config()
        erp = ErpWorkload(stack.standin, rate=opts.rate, seed=opts.seed,
                          late_by=opts.late_by)
        planners = Planners(stack.nocodb_dsn, seed=opts.seed + 1)
        probe = LagProbe(cfg)
        injector = Injector(stack, faults, workload=erp.workload)
        t_chaos = time.monotonic()
        erp.start()
        planners.start()
        probe.start()
        injector.start(t_chaos)
        chaos(stack, erp, planners, injector, t_chaos + seconds, outcome)
        injector.finish()
        for finding in injector.findings:
            outcome.fail(finding)
        outcome.workload = erp.stop()
        planners.stop()
        t_stopped = time.time()
        injector.note("chaos over: every fault repaired, workload and planners stopped")
        outcome.phases["chaos"] = time.monotonic() - t_chaos

        if stack.producer.given_up or stack.consumer.given_up:
            raise Stopped("a daemon is down for good: the pipeline cannot drain")
        t = time.monotonic()
        if not drain(stack, since=t_stopped, timeout=opts.drain_timeout):
            outcome.fail(f"the pipeline did not drain within {opts.drain_timeout:g} s after the chaos")
        probe.stop()
        outcome.phases["drain"] = time.monotonic() - t
        check_polling(stack, erp, injector, outcome)
        t = time.monotonic()
        reconcile(stack, outcome)
        if not drain(stack, since=None, timeout=opts.drain_timeout):
            outcome.fail(f"the pipeline did not drain within {opts.drain_timeout:g} s after reconcile")
        outcome.phases["reconcile and drain"] = time.monotonic() - t
        t = time.monotonic()
        check_verify(stack, injector, outcome)
        check_dead_letters(stack, injector, outcome)
        check_planners(stack, planners, outcome)
        check_tracking_rows(stack, outcome)
        check_status(stack, outcome)
        fix_poison_and_verify(stack, injector, outcome, opts.drain_timeout)
        outcome.phases["checks"] = time.monotonic() - t
        check_daemons(stack, outcome)
        diagnose(stack, erp, injector, outcome)
    except Stopped as exc:
        outcome.fail(str(exc))
        check_daemons(stack, outcome)
    except Exception:
        outcome.fail("the run itself failed:\n" + traceback.format_exc())
    finally:
        if injector is not None:
            injector.finish()
        for actor in (probe, planners):
            if actor is not None:
                actor.stop()
        if erp is not None:
            erp.stop()
        stack.stop()
    outcome.phases["total"] = time.monotonic() - t_start
    report(opts, faults, injector, erp, planners, probe, stack, outcome)
    if outcome.failures:
        print(f"\nchaos: FAIL (seed {opts.seed}); replay with: {replay_command(opts)}")
        for failure in outcome.failures:
            print(f"  - {failure}")
        for text in outcome.diagnoses:
            print(text)
        print(stack.log_tails())
        print(f"chaos: the logs and data are kept in {workdir}")
        return 1
    print(f"\nchaos: PASS (seed {opts.seed})")
    if opts.keep:
        print(f"chaos: kept {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


# -- phases ---------------------------------------------------------------------------------------


def chaos(stack: Stack, erp: ErpWorkload, planners: Planners, injector: Injector, until: float,
          outcome: Outcome) -> None:
    """Wait for the end of the chaos; stop early if a part of the harness or a unit is gone."""
    while time.monotonic() < until:
        time.sleep(1.0)
        for daemon in (stack.producer, stack.consumer):
            if daemon.given_up:
                outcome.fail(daemon.given_up)
                return
        for what, error in (("the ERP workload", erp.error), ("the planners", planners.error),
                            ("the fault injector", injector.error)):
            if error:
                outcome.fail(f"{what} crashed:\n{error}")
                return


def reconcile(stack: Stack, outcome: Outcome) -> None:
    """`facusync reconcile`, without --force: the workload's deletes are few."""
    out = cli(stack.env, "reconcile", "--json")
    if out.returncode != 0:
        said = out.stderr.strip() or out.stdout.strip()
        outcome.fail(f"facusync reconcile exited {out.returncode}: {said}")
        return
    outcome.reconcile = json.loads(out.stdout)
    print("chaos: reconcile: " + json.dumps(outcome.reconcile), flush=True)


# -- the table ------------------------------------------------------------------------------------


def report(opts: Options, faults: list[Fault], injector: Injector | None, erp: ErpWorkload | None,
           planners: Planners | None, probe: LagProbe | None, stack: Stack, outcome: Outcome) -> None:
    planned: dict[str, int] = {}
    for f in faults:
        planned[f.kind] = planned.get(f.kind, 0) + 1
    done = injector.done if injector else {}
    out = ["", f"facusync chaos run: seed {opts.seed}, {opts.minutes:g} min, "
               f"PostgreSQL outages of {opts.pg_outage:g} s, workload {opts.rate:g} changes/s"]
    out.append(f"{'Faults injected':<34}{'planned':>8}{'done':>8}")
    for kind, label in LABELS.items():
        out.append(f"  {label:<32}{planned.get(kind, 0):>8}{done.get(kind, 0):>8}")
    out.append(f"  {'total':<32}{sum(planned.values()):>8}{sum(done.values()):>8}")
    w = outcome.workload
    out.append("Rows written")
    out.append(f"  view (ERP workload)             inserts {w.get('insert', 0)}, late inserts "
               f"{w.get('late', 0)}, updates {w.get('update', 0)}, silent updates "
               f"{w.get('update_nobump', 0)}, deletes {w.get('delete', 0)}; total {w.get('total', 0)}")
    if injector:
        out.append(f"  poison rows                     {len(injector.poison_keys)} too long, "
                   f"{len(injector.poison_markers)} NULL key")
    if planners:
        c = planners.counts
        out.append(f"  planner edits (NocoDB role)     {c['committed']} committed on "
                   f"{planners.edited_conduces} conduces, {c['ambiguous']} with an unanswered COMMIT, "
                   f"{c['failed'] - c['ambiguous']} refused during outages; "
                   f"{outcome.edits_checked} column values checked")
    out.append(f"  PostgreSQL datos_vista          {outcome.pg_rows[0]} rows, "
               f"{outcome.pg_rows[1]} soft-deleted")
    out.append("Daemons (systemd emulation)")
    for daemon in (getattr(stack, "producer", None), getattr(stack, "consumer", None)):
        if daemon is None:
            continue
        killed = sum(1 for e in daemon.exits if e.why.startswith("SIGKILL"))
        out.append(f"  facusync-{daemon.name:<23}{daemon.starts} starts, {killed} killed, "
                   f"{len(daemon.unexpected_exits())} unexpected exits, "
                   f"{daemon.watchdog_kills} watchdog aborts")
    if probe:
        out.append(f"Maximum lag (facusync status, every {probe.every:g} s, {probe.samples} samples; "
                   "outages included)")
        out.append(f"  oldest change waiting in the queue  {probe.max_queue_age:8.1f} s  "
                   f"(max backlog {probe.max_backlog})")
        out.append(f"  age of the newest committed change  {probe.max_newest_age:8.1f} s")
    r = outcome.reconcile
    if r:
        out.append(f"Reconcile: {r.get('upserts')} upserts ({r.get('undeletes')} un-deletes), "
                   f"{r.get('tombstones')} tombstones, {r.get('fingerprints_restored')} fingerprints "
                   f"restored, {r.get('left_in_dead_letters')} left in dead letters, "
                   f"{r.get('duration_s')} s")
    d = outcome.polling_drift
    if outcome.verify_before_reconcile:
        out.append(f"Drift after the drain, before reconcile: "
                   f"{outcome.verify_before_reconcile.get('differences')} difference(s): "
                   f"{d['silent update']} silent updates and {d['delete']} deletes (invisible to "
                   f"polling by design), {d['late beyond SYNC_OVERLAP']} late row(s) committed "
                   f"more than SYNC_OVERLAP behind the newest version (outside the guarantee), "
                   f"{d['unexplained']} unexplained; "
                   f"{outcome.dead_before_reconcile} dead letter(s) at that point")
    vb, vf = outcome.verify_before_fix, outcome.verify_final
    if vb:
        out.append(f"Final drift: verify {vb.get('differences')} difference(s) before the poison was "
                   f"corrected ({vb.get('missing_in_pg')} missing, {vb.get('null_keys_in_source')} NULL "
                   f"keys, {vb.get('different')} different, {vb.get('extra_in_pg')} extra); after: "
                   f"{vf.get('differences', '?')} of {vf.get('source_rows', '?')} rows")
    out.append(f"Dead letters: {len(outcome.dead_letters)} (poison rows: "
               f"{len(injector.poison_keys) + len(injector.poison_markers) if injector else 0})")
    if outcome.status:
        out.append(f"Status after the drain: {outcome.status.get('state')} "
                   f"({'; '.join(outcome.status.get('reasons', [])) or 'no reason'})")
    out.append("Time: " + ", ".join(f"{k} {v:.0f} s" for k, v in outcome.phases.items()))
    if injector and outcome.failures:
        out.append("Fault timeline")
        out.extend(f"  {line}" for line in injector.timeline)
    print("\n".join(out), flush=True)
