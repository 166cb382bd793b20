"""Reconcile and verify against the stand-in, a real Redis and a real PostgreSQL."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from typing import Any

import pytest

from facusync.config import Config, config_from_mapping
from facusync.message import decode
from facusync.operations.reconcile import MassDeleteRefused, Reconciler
from facusync.operations.verify import compare
from facusync.producer import Producer
from facusync.redisconn import Keys, connect_redis
from facusync.service import Service
from facusync.sink import connect_sink
from tests.steps import consume, pg, produce, sync

pytestmark = pytest.mark.timeout(240)


@pytest.fixture()
def cfg(pipeline_env: dict[str, str], standin: Any) -> Config:
    standin.seed(300, seed=11)
    config = config_from_mapping(pipeline_env)
    sync(config)
    assert compare(config).differences == 0
    return config


def test_one_reconcile_repairs_deletes_undeletes_and_silent_changes(cfg: Config, standin: Any) -> None:
    rows = standin.rows()
    gone = [r["CONDUCE"] for r in rows[:3]]
    silent = [r["CONDUCE"] for r in rows[3:5]]
    back = rows[5]
    # A planner's note on a conduce that is about to disappear from the view.
    pg(cfg, "UPDATE datos_seguimiento SET nota = 'llamar al cliente', trabajado = true WHERE conduce = %s",
       (gone[0],))
    # First make `back` soft-deleted, then bring it back with its old timestamp (a restore).
    standin.delete(back["CONDUCE"])
    Reconciler(cfg).run()
    consume(cfg)
    assert pg(cfg, "SELECT eliminado_en_origen FROM datos_vista WHERE conduce = %s",
              (back["CONDUCE"],)) == [(True,)]
    standin.insert_late(back, back["ULTIMA_MODIFICACION"])
    for key in gone:
        standin.delete(key)
    for key in silent:
        standin.update(key, bump=False, cliente="Cambio Silencioso, S.A.")
    sync(cfg)  # polling alone sees none of it
    before = compare(cfg)
    assert before.extra_in_pg == 3 and before.different == 2 and before.deleted_in_pg_but_in_source == 1

    result = Reconciler(cfg).run()
    assert result.tombstones == 3 and result.undeletes == 1 and result.upserts == 3
    consume(cfg)
    after = compare(cfg)
    assert after.differences == 0, after
    deleted = pg(cfg, "SELECT conduce FROM datos_vista WHERE eliminado_en_origen ORDER BY 1")
    assert [d[0] for d in deleted] == sorted(gone)
    assert pg(cfg, "SELECT nota, trabajado FROM datos_seguimiento WHERE conduce = %s", (gone[0],)) == [
        ("llamar al cliente", True)]
    assert pg(cfg, "SELECT count(*) FROM datos_seguimiento")[0][0] == 300
    # A second run finds nothing left to do.
    again = Reconciler(cfg).run()
    assert again.upserts == 0 and again.tombstones == 0


def test_verify_reports_tampering_exactly_then_zero_after_reconcile(cfg: Config, standin: Any) -> None:
    keys = [r["CONDUCE"] for r in standin.rows()]
    pg(cfg, "UPDATE datos_vista SET cliente = 'manipulado' WHERE conduce = %s", (keys[10],))
    pg(cfg, "UPDATE datos_vista SET facturado = NOT facturado WHERE conduce = %s", (keys[11],))
    pg(cfg, "DELETE FROM datos_seguimiento WHERE conduce = %s", (keys[12],))
    pg(cfg, "DELETE FROM datos_vista WHERE conduce = %s", (keys[12],))
    pg(cfg, "UPDATE datos_vista SET eliminado_en_origen = true WHERE conduce = %s", (keys[13],))
    pg(cfg, "INSERT INTO datos_vista (conduce, ultima_modificacion) VALUES ('ZZ-EXTRA', now())")
    report = compare(cfg, limit=5)
    assert (report.different, report.missing_in_pg, report.deleted_in_pg_but_in_source,
            report.extra_in_pg) == (2, 1, 1, 1)
    assert report.differences == 5 and report.source_rows == 300
    changed = {e["key"]: e["columns"] for e in report.examples["different"]}
    assert changed[keys[10]]["cliente"][1] == "manipulado"
    assert report.examples["missing_in_pg"] == [keys[12]]

    out = subprocess.run([sys.executable, "-m", "facusync.cli", "verify", "--json"],
                         env={**os.environ, **_env(cfg)}, capture_output=True, text=True, timeout=120)
    assert out.returncode == 1
    data = json.loads(out.stdout)
    assert data["differences"] == 5 and data["in_sync"] is False

    Reconciler(cfg).run()
    consume(cfg)
    assert compare(cfg).differences == 0
    out = subprocess.run([sys.executable, "-m", "facusync.cli", "verify"],
                         env={**os.environ, **_env(cfg)}, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "IN SYNC" in out.stdout


def _env(cfg: Config) -> dict[str, str]:
    return {
        "MSSQL_HOST": cfg.mssql_host, "MSSQL_PORT": str(cfg.mssql_port), "MSSQL_USER": cfg.mssql_user,
        "MSSQL_PASSWORD": cfg.mssql_password.reveal(), "MSSQL_DATABASE": cfg.mssql_database,
        "PG_HOST": cfg.pg_host, "PG_PORT": str(cfg.pg_port), "PG_DATABASE": cfg.pg_database,
        "PG_USER": cfg.pg_user, "PG_PASSWORD": cfg.pg_password.reveal(),
        "REDIS_HOST": cfg.redis_host, "REDIS_PORT": str(cfg.redis_port),
        "REDIS_PASSWORD": cfg.redis_password.reveal(), "REDIS_PREFIX": cfg.redis_prefix,
    }


def test_mass_delete_guard_holds(cfg: Config, standin: Any) -> None:
    for r in standin.rows()[:40]:  # 13% of the rows vanish at once
        standin.delete(r["CONDUCE"])
    with pytest.raises(MassDeleteRefused, match=r"refusing to tombstone 40 of 300 rows"):
        Reconciler(cfg).run()
    consume(cfg)
    assert pg(cfg, "SELECT count(*) FROM datos_vista WHERE eliminado_en_origen")[0][0] == 0
    out = subprocess.run([sys.executable, "-m", "facusync.cli", "reconcile"],
                         env={**os.environ, **_env(cfg)}, capture_output=True, text=True, timeout=120)
    assert out.returncode == 3 and "--force" in out.stderr
    assert Reconciler(cfg, force=True).run().tombstones == 40
    consume(cfg)
    assert pg(cfg, "SELECT count(*) FROM datos_vista WHERE eliminado_en_origen")[0][0] == 40


def test_an_empty_view_tombstones_nothing(cfg: Config, standin: Any) -> None:
    standin.execute("DELETE FROM VW_VENTAS_SYNC")
    with pytest.raises(MassDeleteRefused):
        Reconciler(cfg).run()
    consume(cfg)
    assert pg(cfg, "SELECT count(*) FROM datos_vista WHERE NOT eliminado_en_origen")[0][0] == 300


def test_reconcile_while_the_producer_runs_loses_nothing(cfg: Config, standin: Any) -> None:
    stop = threading.Event()
    errors: list[BaseException] = []

    def changes() -> None:
        i = 0
        try:
            while not stop.is_set():
                standin.insert([{"CONDUCE": f"RACE-{i:05d}", "CLIENTE": "Nuevo"}])
                standin.update(f"RACE-{i // 2:05d}", cliente=f"v{i}")
                if i % 7 == 0:
                    standin.update(f"RACE-{i // 3:05d}", bump=False, cliente=f"silent{i}")
                i += 1
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    def producing() -> None:
        producer = Producer(cfg, Service("race-producer"))
        try:
            while not stop.is_set():
                producer.run_once()
        finally:
            producer.source.close()

    threads = [threading.Thread(target=changes), threading.Thread(target=producing)]
    for t in threads:
        t.start()
    try:
        for _ in range(3):
            Reconciler(cfg, lock_wait=60).run()
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    assert not errors
    sync(cfg)
    Reconciler(cfg).run()  # the silent changes made after the last concurrent run
    consume(cfg)
    report = compare(cfg)
    assert report.differences == 0, report
    assert report.source_rows > 300


def test_reconcile_replaces_a_newer_version_in_postgresql(cfg: Config, standin: Any) -> None:
    """PostgreSQL holds newer versions than the view (restored from a backup, edited by hand):
    one reconcile makes it equal to the view, notes kept; verify reports in sync."""
    keys = [r["CONDUCE"] for r in standin.rows()[20:23]]
    pg(cfg, "UPDATE datos_seguimiento SET nota = 'entregar temprano' WHERE conduce = %s",
       (keys[0],))
    pg(cfg, "UPDATE datos_vista SET ultima_modificacion = ultima_modificacion + interval '2 days',"
            " cliente = 'de la copia' WHERE conduce = %s", (keys[0],))
    pg(cfg, "UPDATE datos_vista SET ultima_modificacion = ultima_modificacion + interval '1 hour'"
            " WHERE conduce = %s", (keys[1],))
    pg(cfg, "UPDATE datos_vista SET ultima_modificacion = ultima_modificacion + interval '1 day',"
            " eliminado_en_origen = true, eliminado_at = now() WHERE conduce = %s", (keys[2],))
    assert compare(cfg).differences == 3
    result = Reconciler(cfg).run()
    consume(cfg)
    assert compare(cfg).differences == 0
    assert result.replaced_newer == 3 and result.upserts == 3
    assert pg(cfg, "SELECT nota FROM datos_seguimiento WHERE conduce = %s", (keys[0],)) == [
        ("entregar temprano",)]
    assert Reconciler(cfg).run().upserts == 0


def test_reconcile_never_undoes_a_change_polling_delivered_meanwhile(cfg: Config,
                                                                    standin: Any) -> None:
    """Reconcile compared against version P; before its entry is applied, polling delivers a
    newer change of the same conduce: the compare-and-set entry must not overwrite it."""
    key = standin.rows()[30]["CONDUCE"]
    pg(cfg, "UPDATE datos_vista SET ultima_modificacion = ultima_modificacion + interval '1 day'"
            " WHERE conduce = %s", (key,))  # restored from a backup, newer than the view
    Reconciler(cfg).run()  # queues the view's row with expect = PostgreSQL's version
    # Meanwhile the row changes in the source and polling queues it; a second consumer takes
    # that later entry and commits it before reconcile's entry is applied.
    standin.update(key, cliente="Cambio Posterior, S.R.L.")
    produce(cfg)
    client = connect_redis(cfg)
    stream = Keys(cfg.redis_prefix).stream
    entries = client.xrange(stream)
    assert [f[b"src"] for _, f in entries] == [b"reconcile", b"poll"]
    assert b"expect" in entries[0][1]
    poll_id, poll_fields = entries[1]
    sink = connect_sink(cfg, "second")
    assert sink.write([decode(poll_id.decode(), poll_fields)]).updated == 1
    sink.close()
    client.xdel(stream, poll_id)  # committed, then deleted, as that consumer does
    client.close()
    consume(cfg)  # reconcile's entry: PostgreSQL no longer holds what it compared: skipped
    assert pg(cfg, "SELECT cliente FROM datos_vista WHERE conduce = %s", (key,)) == [
        ("Cambio Posterior, S.R.L.",)]
    assert compare(cfg).differences == 0


def test_a_key_spelled_differently_keeps_its_note(cfg: Config, standin: Any) -> None:
    """'C-0000004', 'c-0000004' and 'C-0000004 ' are one conduce for SQL Server (CI_AS): a
    change of spelling renames the row, its tracking row (with the planners' note) follows,
    nothing is soft-deleted and no second tracking row appears."""
    rows = standin.rows()[40:43]
    keys = [r["CONDUCE"] for r in rows]
    assert all(k.startswith("C-") for k in keys)
    for key in keys:
        pg(cfg, "UPDATE datos_seguimiento SET nota = %s WHERE conduce = %s", ("nota " + key, key))
    spelled = [keys[0].lower(), keys[1] + " ", keys[2].lower() + "  "]
    for key in keys:
        standin.delete(key)
    # The first comes back with a new version (polling sees it), the others silently.
    standin.insert([{**{k: v for k, v in rows[0].items() if k != "ULTIMA_MODIFICACION"},
                     "CONDUCE": spelled[0]}])
    standin.insert([{**row, "CONDUCE": key} for row, key in zip(rows[1:], spelled[1:],
                                                                   strict=True)])
    sync(cfg)
    Reconciler(cfg).run()
    consume(cfg)
    for key, new_key in zip(keys, spelled, strict=True):
        assert pg(cfg, "SELECT v.conduce, v.eliminado_en_origen, s.nota FROM datos_vista v"
                       " JOIN datos_seguimiento s USING (conduce)"
                       " WHERE lower(rtrim(v.conduce)) = lower(%s)", (key,)) == [
            (new_key, False, "nota " + key)]
    assert pg(cfg, "SELECT count(*) FROM datos_seguimiento")[0][0] == 300
    assert pg(cfg, "SELECT count(*) FROM datos_vista WHERE eliminado_en_origen")[0][0] == 0
    assert compare(cfg).differences == 0
    # An older message with the old spelling (the overlap re-read) changes nothing back.
    assert Reconciler(cfg).run().upserts == 0
