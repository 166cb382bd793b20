"""The end of a chaos run: draining the pipeline, and the checks that nothing was lost.

1. Before reconcile, polling alone must have carried every change that bumped the version;
   only silent updates and deletes, invisible to polling by design, may differ, and rows
   committed more than SYNC_OVERLAP behind the newest version the view held (issue 16
   promises polling only those within it; see late_beyond_overlap).
2. After reconcile, `facusync verify` finds no difference but the poison rows themselves (a
   too-long row is in the view and cannot be in PostgreSQL; a NULL key cannot be paired), and
   after the "ERP" corrects those rows and the pipeline carries them, zero differences and exit
   status 0.
3. The dead-letter stream holds exactly the poison rows, each once, for a data reason.
4. Every planner edit made through the NocoDB role is still there, and every synced conduce
   still has its one tracking row; `facusync status` shows no backlog.

Each check adds a sentence to ``Outcome.failures`` rather than raising, so one run reports
every problem it found, and the rows concerned are diagnosed.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import redis

from devstack.standin import schema, sqltypes
from devstack.standin.data import now as standin_now
from facusync.redisconn import GROUP, Keys
from tests.chaos.actors import EDITABLE, ErpWorkload, Planners
from tests.chaos.faults import Injector
from tests.chaos.stack import Stack, cli


@dataclass
class Outcome:
    """Everything the table and the verdict need."""

    failures: list[str] = field(default_factory=list)
    diagnoses: list[str] = field(default_factory=list)
    workload: dict[str, Any] = field(default_factory=dict)
    reconcile: dict[str, Any] = field(default_factory=dict)
    verify_before_reconcile: dict[str, Any] = field(default_factory=dict)
    polling_drift: Counter[str] = field(default_factory=Counter)
    suspects: list[str] = field(default_factory=list)  # keys to diagnose
    dead_before_reconcile: int = 0
    snapshots: dict[str, str] = field(default_factory=dict)  # suspect key -> both sides, then
    status: dict[str, Any] = field(default_factory=dict)
    verify_before_fix: dict[str, Any] = field(default_factory=dict)
    verify_final: dict[str, Any] = field(default_factory=dict)
    dead_letters: list[dict[str, Any]] = field(default_factory=list)
    phases: dict[str, float] = field(default_factory=dict)
    pg_rows: tuple[int, int] = (0, 0)
    edits_checked: int = 0

    def fail(self, text: str) -> None:
        print(f"chaos: FAILED CHECK: {text}", flush=True)
        self.failures.append(text)


def pg_count(stack: Stack) -> int:
    return int(stack.admin_query("SELECT count(*) FROM datos_vista")[0][0])



def _redis(stack: Stack) -> redis.Redis:
    return redis.Redis(host=stack.redis.host, port=stack.redis.port, password=stack.redis.password,
                       socket_timeout=5, socket_connect_timeout=5)



def drain(stack: Stack, *, since: float | None, timeout: float) -> bool:
    """Wait until everything changed before ``since`` is committed: the producer completed a
    cycle that started after it and enqueued the newest version in the view, and the stream is
    empty with nothing pending; twice in a row, a second apart. ``since=None``: only the queue.
    """
    keys = Keys("facusync:")
    newest = None
    if since is not None:
        row = stack.standin.execute(f"SELECT MAX(ULTIMA_MODIFICACION) FROM {schema.VIEW}")[0][0]
        newest = sqltypes.from_storage(sqltypes.DATETIME, row) if row else None
        if newest is not None:  # a row dated in the future never carries the watermark there
            newest = min(newest, datetime.now() - timedelta(seconds=1))

    def drained() -> bool:
        if not (stack.producer.ready and stack.consumer.ready):
            return False
        client = _redis(stack)
        try:
            if since is not None:
                stats = {k.decode(): v.decode() for k, v in client.hgetall(keys.producer_stats).items()}
                if stats.get("state") != "running" or float(stats.get("last_cycle_at") or 0) <= since:
                    return False
                if int(stats.get("last_read") or 0) == 0:
                    return False  # a skipped cycle (the source lock of a killed producer)
                watermark = client.get(keys.watermark)
                if newest is not None and (watermark is None
                                           or datetime.fromisoformat(watermark.decode()) < newest):
                    return False
            if int(client.xlen(keys.stream)) != 0:
                return False
            try:
                return int(client.xpending(keys.stream, GROUP)["pending"]) == 0
            except redis.ResponseError:
                return True  # no group: nothing can be pending
        finally:
            client.close()

    deadline = time.monotonic() + timeout
    streak = 0
    while time.monotonic() < deadline:
        try:
            streak = streak + 1 if drained() else 0
        except (redis.RedisError, OSError, ValueError):
            streak = 0
        if streak >= 2:
            return True
        time.sleep(1.0)
    return False



def verify(stack: Stack) -> tuple[int, dict[str, Any]]:
    out = cli(stack.env, "verify", "--json", "--examples", "100000")
    if out.returncode not in (0, 1):
        raise RuntimeError(f"facusync verify exited {out.returncode}: {out.stderr.strip()}")
    return out.returncode, json.loads(out.stdout)


# -- checks ---------------------------------------------------------------------------------------


def check_polling(stack: Stack, erp: ErpWorkload, injector: Injector, outcome: Outcome) -> None:
    """Before reconcile, polling alone must have carried every change that bumped the version
    (docs/DESIGN.md, invariant 1), whatever crashed meanwhile. Only what polling cannot see by design may
    differ: a row whose last change did not bump ULTIMA_MODIFICACION, and a deleted row.
    """
    client = _redis(stack)
    try:
        outcome.dead_before_reconcile = int(client.xlen(Keys("facusync:").dead))
    finally:
        client.close()
    _, report = verify(stack)
    outcome.verify_before_reconcile = report
    history: dict[str, list[str]] = {}
    for event in erp.workload.events:
        history.setdefault(event.conduce, []).append(event.op)

    def silent_last(key: str) -> bool:
        ops = history.get(key, [])
        bumps = [i for i, op in enumerate(ops) if op in ("insert", "late", "update")]
        return "update_nobump" in ops[(bumps[-1] + 1 if bumps else 0):]

    examples = report.get("examples", {})
    unexplained: list[str] = []
    beyond = late_beyond_overlap(erp, injector, stack.settings.sync_overlap)
    for key in examples.get("missing_in_pg", []):
        if key in beyond:
            outcome.polling_drift["late beyond SYNC_OVERLAP"] += 1
        elif key not in injector.poison_keys:
            unexplained.append(f"{key} missing in PostgreSQL")
    for e in examples.get("different", []):
        if silent_last(e["key"]):
            outcome.polling_drift["silent update"] += 1
        else:
            unexplained.append(f"{e['key']} different: {e['columns']}")
    for key in examples.get("extra_in_pg", []):
        if "delete" in history.get(key, []):
            outcome.polling_drift["delete"] += 1
        else:
            unexplained.append(f"{key} active in PostgreSQL, gone from the view, never deleted")
    for key in examples.get("deleted_in_pg_but_in_source", []):
        unexplained.append(f"{key} soft-deleted in PostgreSQL but in the view")
    outcome.polling_drift["unexplained"] = len(unexplained)
    if unexplained:
        outcome.suspects += [u.split()[0] for u in unexplained]
        for key in outcome.suspects[:10]:
            outcome.snapshots[key] = both_sides(stack, key)
        outcome.fail(f"polling lost {len(unexplained)} change(s) that bumped the version "
                     f"(before reconcile): {unexplained[:10]}")



def late_beyond_overlap(erp: ErpWorkload, injector: Injector, overlap: float) -> set[str]:
    """Rows committed with a version more than SYNC_OVERLAP behind the newest version the view
    already held. A row dated past the clock when written is not "seen" (the producer does
    not let it move its watermark either).

    Issue 16 promises polling every row within SYNC_OVERLAP of the newest version seen; these
    are outside it (reconcile repairs them, and check_verify still requires it).
    """
    written = [(e.committed_at, datetime.fromisoformat(e.version), e)
               for e in erp.workload.events if e.version is not None]
    written += [(at, version, None) for at, version in injector.stamped]
    newest: datetime | None = None
    beyond: set[str] = set()
    for at, version, event in sorted(written, key=lambda w: w[0]):
        if event is not None:  # only the key's last change counts
            beyond.discard(event.conduce)
            if (event.op == "late" and newest is not None
                    and (newest - version).total_seconds() > overlap):
                beyond.add(event.conduce)
        if version > datetime.fromtimestamp(at) + timedelta(seconds=1):
            continue  # dated in the future
        newest = version if newest is None else max(newest, version)
    return beyond


def check_verify(stack: Stack, injector: Injector, outcome: Outcome) -> None:
    """Before the poison is corrected, verify may report exactly the poison rows, nothing else."""
    _, report = verify(stack)
    outcome.verify_before_fix = report
    examples = report.get("examples", {})
    missing = set(examples.get("missing_in_pg", []))
    nulls = sorted(str(r.get("cliente")) for r in examples.get("null_keys_in_source", []))
    if missing != set(injector.poison_keys):
        lost = sorted(missing - set(injector.poison_keys))
        if lost:
            outcome.fail(f"verify: {len(lost)} row(s) of the view never reached PostgreSQL: {lost[:20]}")
        absent = sorted(set(injector.poison_keys) - missing)
        if absent:
            outcome.fail(f"verify: too-long poison rows unexpectedly in PostgreSQL: {absent}")
    if nulls != sorted(injector.poison_markers):
        outcome.fail(f"verify: NULL-key rows {nulls}, expected {sorted(injector.poison_markers)}")
    for kind in ("different", "extra_in_pg", "deleted_in_pg_but_in_source"):
        if report.get(kind):
            keys = [e["key"] if isinstance(e, dict) else e for e in examples.get(kind, [])]
            outcome.fail(f"verify: {report[kind]} row(s) {kind.replace('_', ' ')}: {keys[:20]}")


def check_dead_letters(stack: Stack, injector: Injector, outcome: Outcome) -> None:
    """Exactly the poison rows, each once, each for a data reason.

    Once means once even across Redis data losses: a poison row held by a consumer while Redis
    loses its data comes back from that batch and from the producer's re-read, and the
    consumer registers dead letters by signature so that the second copy is not added (this
    suite found that duplicate; see facusync.stream).
    """
    out = cli(stack.env, "dead-letter", "list", "--json", "--limit", "100000")
    if out.returncode != 0:
        outcome.fail(f"facusync dead-letter list exited {out.returncode}: {out.stderr.strip()}")
        return
    entries: list[dict[str, Any]] = json.loads(out.stdout)
    outcome.dead_letters = entries
    seen: dict[str, list[dict[str, Any]]] = {}
    for entry in entries:
        try:
            row = json.loads(entry.get("row") or "{}")
        except ValueError:
            row = {}
        ident = entry.get("key") or str(row.get("cliente"))  # a NULL key: its marker
        seen.setdefault(ident, []).append(entry)
    expected = {k: "too long" for k in injector.poison_keys}
    expected.update({m: "key" for m in injector.poison_markers})
    for ident, reason in expected.items():
        got = seen.get(ident, [])
        if not got:
            outcome.fail(f"dead letters: poison row {ident} is missing")
        elif len(got) > 1:
            wipes = sum(1 for t in injector.wipes_at if t > injector.poison_at[ident])
            outcome.fail(f"dead letters: poison row {ident} is there {len(got)} times ({wipes} Redis "
                         f"data loss(es) since; original ids {[e.get('original_id') for e in got]})")
        for e in got:
            if reason not in e.get("error", ""):
                outcome.fail(f"dead letters: {ident} failed for an unexpected reason: {e.get('error')}")
    for ident in sorted(set(seen) - set(expected)):
        e = seen[ident][0]
        outcome.fail(f"dead letters: {ident or '(no key)'} is not a poison row (error {e.get('error')!r}, "
                     f"deliveries {e.get('deliveries')}, {len(seen[ident])} time(s))")


def check_planners(stack: Stack, planners: Planners, outcome: Outcome) -> None:
    """Every committed planner edit still holds its value (the sync never touches them)."""
    conduces = sorted({k for k, _ in planners.expected})
    if not conduces:
        outcome.fail("the planners committed no edit at all")
        return
    rows = stack.admin_query(
        "SELECT conduce, nota, ruta, trabajado, preparador FROM datos_seguimiento"
        " WHERE conduce = ANY(%s)", (conduces,))
    found = {r[0]: dict(zip(EDITABLE, r[1:], strict=True)) for r in rows}
    wrong = []
    for (conduce, col), exp in sorted(planners.expected.items()):
        actual = found.get(conduce, {}).get(col, "<row missing>")
        outcome.edits_checked += 1
        if actual not in exp.values:
            wrong.append(f"{conduce}.{col} = {actual!r}, expected {exp.values[-1]!r}")
    if wrong:
        outcome.fail(f"planner edits lost or changed: {len(wrong)} of {outcome.edits_checked}: {wrong[:10]}")


def check_tracking_rows(stack: Stack, outcome: Outcome) -> None:
    rows, deleted = stack.admin_query(
        "SELECT count(*), count(*) FILTER (WHERE eliminado_en_origen) FROM datos_vista")[0]
    outcome.pg_rows = (int(rows), int(deleted))
    orphans = stack.admin_query(
        "SELECT count(*) FROM datos_vista v LEFT JOIN datos_seguimiento s USING (conduce)"
        " WHERE s.id IS NULL")[0][0]
    tracking = stack.admin_query("SELECT count(*) FROM datos_seguimiento")[0][0]
    if orphans or tracking != rows:
        outcome.fail(f"tracking rows: {orphans} conduce(s) without one; {tracking} tracking rows "
                     f"for {rows} synced rows")


def fix_poison_and_verify(stack: Stack, injector: Injector, outcome: Outcome, timeout: float) -> None:
    """The ERP corrects the bad rows (bumping the version); the pipeline must carry them and
    `facusync verify` must then say IN SYNC with exit status 0."""
    for key in injector.poison_keys:
        stack.standin.update(key, cliente="Cliente corregido, S.R.L.")
    stamp = sqltypes.to_storage(sqltypes.DATETIME, standin_now())
    for i, marker in enumerate(injector.poison_markers, 1):
        stack.standin.execute(
            f"UPDATE {schema.VIEW} SET CONDUCE = ?, ULTIMA_MODIFICACION = ? "
            "WHERE CONDUCE IS NULL AND CLIENTE = ?", (f"CHAOS-FIXED-{i:03d}", stamp, marker))
    time.sleep(0.1)
    if not drain(stack, since=time.time(), timeout=timeout):
        outcome.fail("the pipeline did not drain after the poison rows were corrected")
    code, report = verify(stack)
    outcome.verify_final = report
    if code != 0 or report.get("differences") != 0:
        outcome.fail(f"final verify: exit {code}, {report.get('differences')} difference(s): "
                     f"{json.dumps(report.get('examples'))[:2000]}")


def check_status(stack: Stack, outcome: Outcome) -> None:
    """`facusync status` after the drain: no backlog, and at worst degraded by the dead letters."""
    out = cli(stack.env, "status", "--json")
    try:
        data = json.loads(out.stdout)
    except ValueError:
        outcome.fail(f"facusync status exited {out.returncode} without JSON: {out.stderr.strip()}")
        return
    outcome.status = data.get("health", {})
    reasons = [r for r in outcome.status.get("reasons", []) if "dead letter" not in r]
    queue = data.get("queue", {})
    if out.returncode > 1 or reasons or queue.get("length") or queue.get("pending"):
        outcome.fail(f"facusync status after the drain: exit {out.returncode}, reasons {reasons}, "
                     f"queue length {queue.get('length')}, pending {queue.get('pending')}")


def check_daemons(stack: Stack, outcome: Outcome) -> None:
    """Exits the chaos did not cause (a crash, a watchdog abort) are findings."""
    for daemon in (stack.producer, stack.consumer):
        for e in daemon.unexpected_exits():
            outcome.fail(f"facusync-{daemon.name}: {e.describe()} at "
                         f"{time.strftime('%H:%M:%S', time.localtime(e.at))}")


def diagnose(stack: Stack, erp: ErpWorkload, injector: Injector, outcome: Outcome) -> None:
    """For each row verify found wrong: its history in the workload, both sides now, and the
    faults within 30 s of each of its changes."""
    examples = outcome.verify_before_fix.get("examples", {})
    keys: list[str] = list(outcome.suspects)
    keys += [k for k in examples.get("missing_in_pg", []) if k not in injector.poison_keys]
    for kind in ("different", "extra_in_pg", "deleted_in_pg_but_in_source"):
        keys += [e["key"] if isinstance(e, dict) else e for e in examples.get(kind, [])]
    keys = list(dict.fromkeys(keys))
    if not keys:
        return
    t0 = time.time() - injector.now()  # wall time of the chaos start
    fault_times = []
    for line in injector.timeline:
        try:
            fault_times.append((float(line.split("s", 1)[0].split("=")[1]), line))
        except (IndexError, ValueError):
            continue
    for key in keys[:10]:
        lines = [f"---- diagnosis of {key}"]
        events = [e for e in erp.workload.events if e.conduce == key]
        for e in events:
            at = e.committed_at - t0
            lines.append(f"  workload: t={at:6.1f}s {e.op} version={e.version}")
            for ft, line in fault_times:
                if abs(ft - at) <= 30:
                    lines.append(f"      near: {line}")
        if key in outcome.snapshots:
            lines.append("  after the drain, before reconcile:")
            lines.append(outcome.snapshots[key])
        lines.append("  at the end:")
        lines.append(both_sides(stack, key))
        outcome.diagnoses.append("\n".join(lines))


def both_sides(stack: Stack, key: str) -> str:
    view = stack.standin.row(key)
    pg = stack.admin_query(
        "SELECT (ultima_modificacion AT TIME ZONE %s)::text, cliente, numero_factura,"
        " codigo_cliente, facturado, eliminado_en_origen, created_at::text, updated_at::text"
        " FROM datos_vista WHERE conduce = %s", (stack.env["SOURCE_TIMEZONE"], key))
    shown = {k: (str(v) if isinstance(v, datetime) else v) for k, v in (view or {}).items()}
    return f"    view:       {shown}\n    PostgreSQL: {pg[0] if pg else None}"
