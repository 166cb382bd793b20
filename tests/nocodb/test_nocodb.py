"""NocoDB acceptance: planners edit tracking rows through a real NocoDB while the sync runs,
on every NocoDB version `make test-nocodb` installs (0.262.5 and 0.301.3).

The tests of one version run in file order and share its stack (tests/nocodb/stack.py); what
NocoDB answers is checked against PostgreSQL's data and PostgreSQL's log, never against
NocoDB's HTTP status alone.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from facusync.nocodb_workspace import COLUMN_ORDER, LOOKUPS, VIEW_TITLES
from tests.nocodb.conftest import MEASUREMENTS
from tests.nocodb.stack import (
    DATABASE,
    NOCODB_ROLE_PASSWORD,
    REPO,
    TZ_ROWS,
    Stack,
    run_setup,
    tracking_row,
    wait_for,
)

pytestmark = pytest.mark.timeout(900)

SOURCE_TZ = ZoneInfo("America/Santo_Domingo")
# --- the tests, in order --------------------------------------------------------------------


def test_setup_script_reports_tables_key_and_link(stack: Stack, tmp_path: Path) -> None:
    report = stack.setup_report
    assert report["passed"] and report["nocodb_version"] == stack.version
    assert report["base_action"] == "created" and report["source_action"] == "added"
    assert {c["what"] for c in report["checks"] if c["ok"]} >= {
        "datos_vista", "datos_seguimiento", "datos_seguimiento -> datos_vista", "v_planificacion",
        "metadata", "workspace"}
    # Re-run with an API token and the settings in a file: reuses the base and source,
    # checks again, prints no secret.
    settings = tmp_path / "nocodb.env"
    settings.write_text(f"# NocoDB\nNOCODB_URL={stack.nocodb.url}\nPG_HOST='{stack.pg.host}'\n"
                        f"PG_PORT={stack.pg.port}\nPG_DATABASE={DATABASE}\n")
    again = run_setup(stack.nocodb, stack.pg, "--check-only", "--env-file", str(settings),
                      coordinates=False, NOCODB_TOKEN=stack.token)
    assert again.returncode == 0, again.stderr + again.stdout
    assert "exists" in again.stdout and "primary key conduce" in again.stdout
    assert stack.token not in again.stdout + again.stderr
    # A wrong role password: NocoDB's connection test fails before anything is created.
    bad_password = "wrong-" + os.urandom(8).hex()
    bad = run_setup(stack.nocodb, stack.pg, "--base", "Otra", NOCODB_TOKEN=stack.token,
                    PG_NOCODB_ROLE_PASSWORD=bad_password)
    assert bad.returncode == 69, bad.stderr + bad.stdout
    assert "password authentication failed" in bad.stderr
    assert bad_password not in bad.stdout + bad.stderr
    _, bases = stack.nocodb.call("GET", "/api/v2/meta/bases")
    assert "Otra" not in [b["title"] for b in bases["list"]]


def test_nocodb_sees_primary_key_and_link(stack: Stack) -> None:
    _, vista = stack.api("GET", f"/api/v2/meta/tables/{stack.table('datos_vista')}")
    _, seg = stack.api("GET", f"/api/v2/meta/tables/{stack.table('datos_seguimiento')}")
    assert [c["column_name"] for c in vista["columns"] if c["pk"]] == ["conduce"]
    assert [c["column_name"] for c in seg["columns"] if c["pk"]] == ["id"]
    link = next(c for c in seg["columns"] if c["id"] == stack.link_field)
    assert link["uidt"] == "LinkToAnotherRecord"
    assert link["colOptions"]["type"] == "bt"
    assert link["colOptions"]["fk_related_model_id"] == stack.table("datos_vista")
    # conduce itself is a system column: NocoDB sets it only through the link.
    conduce = next(c for c in seg["columns"] if c["column_name"] == "conduce")
    assert conduce["system"] and conduce["uidt"] == "ForeignKey"
    back = [c for c in vista["columns"] if c["uidt"] == "Links"]
    assert back and back[0]["colOptions"]["fk_related_model_id"] == stack.table("datos_seguimiento")


def test_planner_edits_survive_concurrent_sync_updates(stack: Stack) -> None:
    conduce = stack.standin.rows()[5]["CONDUCE"]
    row_id = tracking_row(stack, conduce)["id"]
    final = {"nota": "Entregar antes de las 10; llamar al llegar", "ruta": "Ruta Norte 3",
             "trabajado": True, "preparador": "Ana Pérez"}
    statuses: list[int] = []

    def planner() -> None:
        """Saves one cell at a time, as NocoDB's grid does, several rounds."""
        for round_ in range(3):
            for name, value in final.items():
                value = value if round_ == 2 else (
                    not value if isinstance(value, bool) else f"{value} (borrador {round_})")
                status, _ = stack.api("PATCH", stack.row_path("datos_seguimiento", str(row_id)),
                                      {name: value})
                statuses.append(status)
                time.sleep(0.15)

    seen: set[str] = set()
    editor = threading.Thread(target=planner, name="planner")
    editor.start()
    versions = []
    try:
        for i in range(10):
            versions.append(stack.standin.update(conduce, cliente=f"Cliente versión {i}"))
            time.sleep(0.2)
            seen.update(r[0] for r in stack.query(
                "SELECT cliente FROM datos_vista WHERE conduce = %s", (conduce,)))
    finally:
        editor.join(timeout=120)
    assert statuses and all(s == 200 for s in statuses), statuses

    def synced() -> bool:
        rows = stack.query("SELECT cliente FROM datos_vista WHERE conduce = %s", (conduce,))
        return bool(rows[0][0] == "Cliente versión 9")

    wait_for("the consumer to apply the last update", synced, timeout=60,
             logs=stack.env_file.parent)
    # The consumer applied updates to this conduce while the planner was editing it.
    assert len({s for s in seen if s.startswith("Cliente versión")}) >= 2, seen
    # Both survive: the planner's four columns and the source's newest version.
    row = tracking_row(stack, conduce)
    assert {k: row[k] for k in final} == final
    (stored,) = stack.query("SELECT ultima_modificacion FROM datos_vista WHERE conduce = %s",
                            (conduce,))[0]
    assert stored.astimezone(SOURCE_TZ).replace(tzinfo=None) == versions[-1]
    # And NocoDB shows both.
    _, seen_seg = stack.api("GET", f"/api/v2/tables/{stack.table('datos_seguimiento')}/records/"
                                   f"{row_id}")
    assert {k: seen_seg[k] for k in final} == final
    _, seen_vista = stack.api("GET", f"/api/v2/tables/{stack.table('datos_vista')}/records/"
                                     f"{conduce}")
    assert seen_vista["cliente"] == "Cliente versión 9"


def refused_write_attempts(stack: Stack, conduce: str, other: str,
                           row_id: str) -> list[tuple[str, str, str, Any, str]]:
    """Every write path NocoDB offers that PostgreSQL must refuse: (what, method, path, body,
    the statement PostgreSQL's log must show refused)."""
    seg, vista, link = stack.table("datos_seguimiento"), stack.table("datos_vista"), stack.link_field
    bulk_v1 = f"/api/v1/db/data/bulk/noco/{stack.base_id}"
    return [
        ("edit datos_vista (grid cell, v1 row PATCH)", "PATCH",
         stack.row_path("datos_vista", conduce), {"cliente": "Cambiado en NocoDB"},
         'update "datos_vista"'),
        ("edit datos_vista (grid paste/clear, v1 bulk PATCH)", "PATCH", f"{bulk_v1}/{vista}",
         [{"conduce": conduce, "cliente": "Pegado en NocoDB"}], 'update "datos_vista"'),
        ("edit datos_vista (v2 bulk PATCH)", "PATCH", f"/api/v2/tables/{vista}/records",
         [{"conduce": conduce, "facturado": True}], 'update "datos_vista"'),
        # The grid first detaches the row's tracking rows (sets their conduce to NULL).
        ("delete datos_vista (grid, v1 row DELETE)", "DELETE", stack.row_path("datos_vista", conduce),
         None, 'update "datos_seguimiento" set "conduce" = $1 where "conduce" = $2'),
        ("delete datos_vista (v2 bulk DELETE)", "DELETE", f"/api/v2/tables/{vista}/records",
         [{"conduce": conduce}], 'delete from "datos_vista"'),
        ("move a note to another conduce (v2 link POST)", "POST",
         f"/api/v2/tables/{seg}/links/{link}/records/{row_id}", [{"conduce": other}],
         'update "datos_seguimiento" set "conduce" = (select'),
        ("unlink a note from its conduce (v2 link DELETE)", "DELETE",
         f"/api/v2/tables/{seg}/links/{link}/records/{row_id}", [{"conduce": conduce}],
         'update "datos_seguimiento" set "conduce" = NULL'),
        ("edit a tracking row's created_at (v1 row PATCH)", "PATCH",
         stack.row_path("datos_seguimiento", row_id), {"created_at": "2020-01-01 00:00:00+00"},
         'update "datos_seguimiento"'),
        ("delete a tracking row (grid, v1 row DELETE)", "DELETE",
         stack.row_path("datos_seguimiento", row_id), None, 'delete from "datos_seguimiento"'),
        ("delete a tracking row (v1 bulk DELETE)", "DELETE", f"{bulk_v1}/{seg}",
         [{"id": int(row_id)}], 'delete from "datos_seguimiento"'),
        ("delete a tracking row (v2 bulk DELETE)", "DELETE", f"/api/v2/tables/{seg}/records",
         [{"id": int(row_id)}], 'delete from "datos_seguimiento"'),
    ]


# Which of those paths answer 200 although PostgreSQL refused the write (and nothing changed),
# per NocoDB version, as measured by the test below; the README's "Refused writes" lists them.
SILENT_REFUSALS: dict[str, set[str]] = {
    "0.262.5": set(),
    "0.301.3": {"edit datos_vista (grid paste/clear, v1 bulk PATCH)",
                "edit datos_vista (v2 bulk PATCH)"},
}


def test_forbidden_writes_are_refused_by_postgresql(stack: Stack) -> None:
    conduce, other = (r["CONDUCE"] for r in stack.standin.rows()[10:12])
    row_id = str(tracking_row(stack, conduce)["id"])

    def snapshot() -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
        return (stack.query("SELECT * FROM datos_vista ORDER BY conduce"),
                stack.query("SELECT * FROM datos_seguimiento ORDER BY id"))

    before = snapshot()
    attempts = refused_write_attempts(stack, conduce, other, row_id)
    answers = {}
    for what, method, path, body, statement in attempts:
        offset = stack.pg_log_offset()
        answers[what] = stack.api(method, path, body)[0]

        def refused(statement: str = statement, offset: int = offset) -> bool:
            lines = stack.pg_log_since(offset).splitlines()
            return any("ERROR:" in line for line in lines) and any(
                statement in line for line in lines if "STATEMENT:" in line)

        # PostgreSQL refused exactly this statement.
        wait_for(f"PostgreSQL's log to show it refused: {what}", refused, timeout=5)
        MEASUREMENTS[f"{stack.version}: {what}"] = f"HTTP {answers[what]}"
    assert snapshot() == before, "PostgreSQL's data changed"
    silent = {what for what, status in answers.items() if status < 400}
    assert silent == SILENT_REFUSALS[stack.version], answers


def test_times_equal_the_source_local_times(stack: Stack) -> None:
    vista = stack.table("datos_vista")
    for conduce in (*TZ_ROWS, stack.standin.rows()[3]["CONDUCE"]):
        source = stack.standin.row(conduce)
        assert source is not None
        _, record = stack.api("GET", f"/api/v2/tables/{vista}/records/{conduce}")
        for column in ("fecha_emision", "ultima_modificacion"):
            shown = datetime.fromisoformat(record[column])
            assert shown.utcoffset() is not None, record[column]
            local = shown.astimezone(SOURCE_TZ).replace(tzinfo=None)
            # NocoDB shows whole seconds.
            assert local == source[column.upper()].replace(microsecond=0), (column, record[column])
    # The report view agrees.
    _, view = stack.api("GET", f"/api/v2/tables/{stack.table('v_planificacion')}/records"
                               "?where=(conduce,eq,TZ-NOCHE)")
    (row,) = view["list"]
    assert datetime.fromisoformat(row["ultima_modificacion"]).astimezone(SOURCE_TZ).replace(
        tzinfo=None) == datetime(2026, 11, 20, 23, 59, 59)


def test_soft_deleted_conduce_keeps_its_tracking_row(stack: Stack) -> None:
    conduce = stack.standin.rows()[20]["CONDUCE"]
    row_id = str(tracking_row(stack, conduce)["id"])
    status, _ = stack.api("PATCH", stack.row_path("datos_seguimiento", row_id),
                          {"nota": "Cliente pidió anular; confirmar con ventas"})
    assert status == 200
    stack.standin.delete(conduce)
    result = subprocess.run([sys.executable, "-m", "facusync.cli", "--env-file", str(stack.env_file),
                             "reconcile"], capture_output=True, text=True, cwd=REPO,
                            stdin=subprocess.DEVNULL, timeout=180)
    assert result.returncode == 0, result.stderr + result.stdout
    assert "1 tombstone" in result.stdout, result.stdout

    def flagged() -> bool:
        rows = stack.query("SELECT eliminado_en_origen FROM datos_vista WHERE conduce = %s",
                           (conduce,))
        return bool(rows and rows[0][0])

    wait_for("the consumer to apply the tombstone", flagged, timeout=60,
             logs=stack.env_file.parent)
    assert tracking_row(stack, conduce)["nota"] == "Cliente pidió anular; confirmar con ventas"
    # NocoDB shows the flagged conduce, its tracking row and the link between them.
    _, record = stack.api("GET", f"/api/v2/tables/{stack.table('datos_vista')}/records/{conduce}")
    assert record["eliminado_en_origen"] is True and record["eliminado_at"]
    _, notes = stack.api("GET", f"/api/v2/tables/{stack.table('datos_seguimiento')}/records"
                                f"?where=(conduce,eq,{conduce})")
    assert [n["nota"] for n in notes["list"]] == ["Cliente pidió anular; confirmar con ventas"]
    _, linked = stack.api("GET", f"/api/v2/tables/{stack.table('datos_seguimiento')}/links/"
                                 f"{stack.link_field}/records/{row_id}")
    assert linked["conduce"] == conduce, linked


# --- the planners' workspace ------------------------------------------------------------------


def view_rows(stack: Stack, view: str) -> list[dict[str, Any]]:
    """The rows a view shows, in its order, as NocoDB's grid loads them."""
    seg = stack.table("datos_seguimiento")
    view_id = stack.setup_report["views"][view]
    _, answer = stack.api("GET", f"/api/v1/db/data/noco/{stack.base_id}/{seg}/views/{view_id}"
                                 "?limit=1000")
    return list(answer["list"])


def workspace_state(stack: Stack) -> dict[str, Any]:
    """What the views are: lock, visible columns in order, filters, sorts, grouping."""
    seg = stack.table("datos_seguimiento")
    _, meta = stack.api("GET", f"/api/v1/db/meta/tables/{seg}")
    title_of = {c["id"]: c["title"] for c in meta["columns"]}
    system = {c["id"] for c in meta["columns"] if c.get("system")}
    _, views = stack.api("GET", f"/api/v1/db/meta/tables/{seg}/views")
    state: dict[str, Any] = {}
    for view in views["list"]:
        if view["title"] not in VIEW_TITLES:
            continue
        vid = view["id"]
        _, columns = stack.api("GET", f"/api/v1/db/meta/views/{vid}/columns")
        _, filters = stack.api("GET", f"/api/v1/db/meta/views/{vid}/filters")
        _, sorts = stack.api("GET", f"/api/v1/db/meta/views/{vid}/sorts")
        _, grid = stack.api("GET", f"/api/v1/db/meta/grids/{vid}/grid-columns")
        # System columns (the raw foreign key) never show in a grid, whatever their flag.
        shown = sorted((c for c in columns["list"] if c["show"] and c["fk_column_id"] not in system),
                       key=lambda c: c["order"])
        state[view["title"]] = {
            "lock": view["lock_type"],
            "columns": [title_of[c["fk_column_id"]] for c in shown],
            "filters": sorted((title_of[f["fk_column_id"]], f["comparison_op"], str(f["value"]))
                              for f in filters["list"]),
            "sorts": [(title_of[s["fk_column_id"]], s["direction"]) for s in sorts["list"]],
            "group_by": [title_of[g["fk_column_id"]] for g in grid if g.get("group_by")],
        }
    return state


def test_setup_builds_the_planners_workspace(stack: Stack) -> None:
    vista, seg = stack.table("datos_vista"), stack.table("datos_seguimiento")
    _, vista_meta = stack.api("GET", f"/api/v1/db/meta/tables/{vista}")
    assert [c["title"] for c in vista_meta["columns"] if c.get("pv")] == ["conduce"]
    _, seg_meta = stack.api("GET", f"/api/v1/db/meta/tables/{seg}")
    assert [c["title"] for c in seg_meta["columns"] if c.get("pv")] == ["conduce"]
    lookups = {c["title"] for c in seg_meta["columns"] if c["uidt"] == "Lookup"}
    assert lookups == set(LOOKUPS)
    state = workspace_state(stack)
    assert set(state) == set(VIEW_TITLES), state
    for title, view in state.items():
        assert view["lock"] == "locked", title
        assert view["columns"] == list(COLUMN_ORDER), (title, view["columns"])
    assert state["Pendientes"]["filters"] == [("eliminado_en_origen", "eq", "false"),
                                              ("trabajado", "eq", "false")], state["Pendientes"]
    assert state["Pendientes"]["sorts"] == [("fecha_emision", "desc")]
    assert state["Por ruta"]["group_by"] == ["ruta"]
    assert state["Eliminados en origen"]["filters"] == [("eliminado_en_origen", "eq", "true")]
    # "Pendientes" shows exactly the open, live conduces, newest first (PostgreSQL decides).
    expected = [r[0] for r in stack.query(
        "SELECT s.conduce FROM datos_seguimiento s JOIN datos_vista v USING (conduce) "
        "WHERE NOT s.trabajado AND NOT v.eliminado_en_origen "
        "ORDER BY v.fecha_emision DESC NULLS LAST, s.id")]
    shown = [row["conduce"] for row in view_rows(stack, "Pendientes")]
    assert sorted(shown) == sorted(expected) and len(expected) >= 20, (shown, expected)
    emitted = dict(stack.query("SELECT conduce, fecha_emision FROM datos_vista WHERE conduce = "
                               "ANY(%s)", (shown,)))
    assert [emitted[c] for c in shown] == sorted((emitted[c] for c in shown), reverse=True)
    # Editors see neither datos_vista nor the default views (NocoDB's UI only).
    _, rules = stack.nocodb.call("GET", f"/api/v1/db/meta/projects/{stack.base_id}/visibility-rules")
    hidden = {(r["fk_model_id"], r["title"]) for r in rules if r["disabled"].get("editor")}
    shown_views = {(r["fk_model_id"], r["title"]) for r in rules if not r["disabled"].get("editor")}
    assert shown_views == {(seg, title) for title in VIEW_TITLES}, shown_views
    assert any(model == vista for model, _ in hidden)


def test_rerun_repairs_a_changed_view_and_is_idempotent(stack: Stack) -> None:
    before = workspace_state(stack)
    seg = stack.table("datos_seguimiento")
    view_id = stack.setup_report["views"]["Pendientes"]
    # An admin (or a planner with a lock-free view) changes "Pendientes".
    stack.nocodb.call("PATCH", f"/api/v1/db/meta/views/{view_id}", {"lock_type": "collaborative"})
    _, filters = stack.nocodb.call("GET", f"/api/v1/db/meta/views/{view_id}/filters")
    for item in filters["list"]:
        stack.nocodb.call("DELETE", f"/api/v1/db/meta/filters/{item['id']}")
    _, meta = stack.nocodb.call("GET", f"/api/v1/db/meta/tables/{seg}")
    id_column = next(c["id"] for c in meta["columns"] if c["title"] == "id")
    _, columns = stack.nocodb.call("GET", f"/api/v1/db/meta/views/{view_id}/columns")
    for column in columns["list"]:
        if column["fk_column_id"] == id_column:
            stack.nocodb.call("PATCH", f"/api/v1/db/meta/views/{view_id}/columns/{column['id']}",
                              {"show": True})
    changed = workspace_state(stack)
    assert changed["Pendientes"] != before["Pendientes"]

    settings = {"NOCODB_EMAIL": stack.nocodb.admin_email,
                "NOCODB_PASSWORD": stack.nocodb.admin_password,
                "PG_NOCODB_ROLE_PASSWORD": NOCODB_ROLE_PASSWORD}
    repair = run_setup(stack.nocodb, stack.pg, **settings)
    assert repair.returncode == 0, repair.stderr + repair.stdout
    assert "view 'Pendientes' repaired" in repair.stdout, repair.stdout
    assert workspace_state(stack) == before
    again = run_setup(stack.nocodb, stack.pg, **settings)
    assert again.returncode == 0, again.stderr + again.stdout
    assert "done " not in again.stdout, again.stdout
    assert workspace_state(stack) == before


def test_read_only_source_refuses_edits_in_nocodb(stack: Stack) -> None:
    result = run_setup(stack.nocodb, stack.pg, "--json", "--read-only-source",
                       NOCODB_EMAIL=stack.nocodb.admin_email,
                       NOCODB_PASSWORD=stack.nocodb.admin_password,
                       PG_NOCODB_ROLE_PASSWORD=NOCODB_ROLE_PASSWORD)
    assert result.returncode == 0, result.stderr + result.stdout
    assert json.loads(result.stdout)["read_only_source"] == "added"
    _, base = stack.nocodb.call("GET", f"/api/v2/meta/bases/{stack.base_id}")
    (source,) = [s for s in base["sources"] if s["alias"] == "facusync (solo lectura)"]
    assert source["is_data_readonly"] and source["is_schema_readonly"]
    _, tables = stack.nocodb.call("GET", f"/api/v2/meta/bases/{stack.base_id}/tables")
    (vista,) = [t["id"] for t in tables["list"]
                if t["source_id"] == source["id"] and t["table_name"] == "datos_vista"]
    conduce = stack.standin.rows()[2]["CONDUCE"]
    before = stack.query("SELECT * FROM datos_vista WHERE conduce = %s", (conduce,))
    offset = stack.pg_log_offset()
    status, answer = stack.api("PATCH", f"/api/v1/db/data/noco/{stack.base_id}/{vista}/{conduce}",
                               {"cliente": "Cambiado en la fuente de solo lectura"})
    status_bulk, _ = stack.api("PATCH", f"/api/v2/tables/{vista}/records",
                               [{"conduce": conduce, "cliente": "Pegado"}])
    MEASUREMENTS[f"{stack.version}: edit datos_vista in the read-only source (v1 row, v2 bulk)"] = \
        f"HTTP {status}, {status_bulk}"
    # NocoDB itself refuses: PostgreSQL never sees the statement.
    assert status >= 400 and status_bulk >= 400, (status, answer)
    assert stack.query("SELECT * FROM datos_vista WHERE conduce = %s", (conduce,)) == before
    assert 'update "datos_vista"' not in stack.pg_log_since(offset)
    # Re-running reuses it.
    again = run_setup(stack.nocodb, stack.pg, "--read-only-source", "--json",
                      NOCODB_EMAIL=stack.nocodb.admin_email,
                      NOCODB_PASSWORD=stack.nocodb.admin_password,
                      PG_NOCODB_ROLE_PASSWORD=NOCODB_ROLE_PASSWORD)
    assert json.loads(again.stdout)["read_only_source"].startswith("exists")
