"""The planners' workspace in NocoDB, built (and repaired) by `facusync nocodb-setup`.

Planners work in one table, datos_seguimiento, through four locked grid views in Spanish.
The ERP's columns reach it as lookups through the link to datos_vista, so a planner sees
each conduce's data beside the four columns they type into, and never a cell PostgreSQL
would refuse. Every step compares what NocoDB has with what it should have and changes only
the difference: re-running repairs a view a planner (or an admin) changed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from facusync.nocodb_api import NocoDB

# The ERP columns planners see beside their own, as lookups through the link.
LOOKUPS = ("fecha_emision", "numero_factura", "codigo_cliente", "cliente", "facturado",
           "eliminado_en_origen")
PLANNER_COLUMNS = ("nota", "ruta", "trabajado", "preparador")
# After the display value (conduce, which NocoDB's grid always shows first): the ERP's columns,
# the planners' four, then the soft-delete flag.
COLUMN_ORDER = ("fecha_emision", "cliente", "codigo_cliente", "numero_factura",
                "facturado", *PLANNER_COLUMNS, "eliminado_en_origen")
# Roles that must not see datos_vista or the default views; owners and creators still do.
HIDDEN_FROM = ("editor", "commenter", "viewer")


@dataclass(frozen=True)
class ViewSpec:
    """One grid view: its filters (column, operator, value), sorts and grouping."""

    title: str
    filters: tuple[tuple[str, str, Any], ...] = ()
    sorts: tuple[tuple[str, str], ...] = (("fecha_emision", "desc"),)
    group_by: str | None = None


VIEWS = (
    ViewSpec("Pendientes", filters=(("trabajado", "eq", False), ("eliminado_en_origen", "eq", False))),
    ViewSpec("Por ruta", group_by="ruta"),
    ViewSpec("Todos"),
    ViewSpec("Eliminados en origen", filters=(("eliminado_en_origen", "eq", True),)),
)
VIEW_TITLES = tuple(v.title for v in VIEWS)


@dataclass
class Workspace:
    """What the build did, for the report: one line per thing it created or repaired."""

    actions: list[str] = field(default_factory=list)
    views: dict[str, str] = field(default_factory=dict)  # title -> view id
    invites: dict[str, str] = field(default_factory=dict)  # e-mail -> what happened


def build(api: NocoDB, base_id: str, tables: dict[str, str], vista: str, seguimiento: str,
          link: dict[str, Any], invite: list[str]) -> Workspace:
    """Display value, lookups, the four views, what editors see, invitations. `tables` maps
    the name of every table NocoDB lists in our source to its id; `vista` and `seguimiento`
    name ours (PG_TABLE_VISTA, PG_TABLE_SEGUIMIENTO)."""
    work = Workspace()
    vista_id, seguimiento_id = tables[vista], tables[seguimiento]
    set_display_value(api, vista_id, vista, work)
    set_display_value(api, seguimiento_id, seguimiento, work)
    columns = add_lookups(api, seguimiento_id, vista_id, link, work)
    for spec in VIEWS:
        work.views[spec.title] = build_view(api, seguimiento_id, spec, columns, work)
    # Should an editor reach the default view anyway, it is a locked "Todos".
    for view in api.listed(f"/api/v1/db/meta/tables/{seguimiento_id}/views"):
        if is_default_view(view, seguimiento):
            build_view(api, seguimiento_id, ViewSpec(str(view["title"])), columns, work)
    hide_from_editors(api, base_id, vista_id, set(tables.values()), work)
    for email in invite:
        work.invites[email] = invite_editor(api, base_id, email)
    return work


def is_default_view(view: dict[str, Any], table_title: Any) -> bool:
    """NocoDB 0.262.5 flags a table's default view; 0.301.3 does not, but it still carries
    the table's title (our views have Spanish titles of their own)."""
    return bool(view.get("is_default")) or view.get("title") == table_title


def columns_by_title(api: NocoDB, table_id: str) -> dict[str, dict[str, Any]]:
    meta = api.call("GET", f"/api/v1/db/meta/tables/{table_id}")
    return {str(c["title"]): dict(c) for c in meta["columns"]}


def set_display_value(api: NocoDB, table_id: str, table: str, work: Workspace) -> None:
    """Both tables name a row by its conduce: the link shows it, and the planners' grid
    starts with it."""
    conduce = columns_by_title(api, table_id)["conduce"]
    if not conduce.get("pv"):
        api.call("POST", f"/api/v1/db/meta/columns/{conduce['id']}/primary", {})
        work.actions.append(f"{table}: display value set to conduce")


def add_lookups(api: NocoDB, seguimiento_id: str, vista_id: str, link: dict[str, Any],
                work: Workspace) -> dict[str, dict[str, Any]]:
    """One lookup per ERP column, through the link; returns all of the table's columns."""
    vista = columns_by_title(api, vista_id)
    columns = columns_by_title(api, seguimiento_id)
    for title in LOOKUPS:
        existing = columns.get(title)
        if existing is not None:
            if existing.get("uidt") != "Lookup":
                raise ValueError(f"the tracking table already has a column {title!r} that is not "
                                 "a lookup")
            continue
        api.call("POST", f"/api/v1/db/meta/tables/{seguimiento_id}/columns", {
            "title": title, "column_name": title, "uidt": "Lookup",
            "fk_relation_column_id": link["id"], "fk_lookup_column_id": vista[title]["id"],
        })
        work.actions.append(f"lookup {title} added")
    return columns_by_title(api, seguimiento_id)


def build_view(api: NocoDB, table_id: str, spec: ViewSpec, columns: dict[str, dict[str, Any]],
               work: Workspace) -> str:
    """Create the grid if missing, unlock it, make it match `spec`, lock it again."""
    views = {v["title"]: v for v in api.listed(f"/api/v1/db/meta/tables/{table_id}/views")}
    view = views.get(spec.title)
    if view is None:
        view = api.call("POST", f"/api/v1/db/meta/tables/{table_id}/grids", {"title": spec.title})
        work.actions.append(f"view {spec.title!r} created")
    view_id = str(view["id"])
    changes: list[str] = []
    # NocoDB 0.301.3 refuses changes to a locked view even from its owner.
    if view.get("lock_type") == "locked":
        api.call("PATCH", f"/api/v1/db/meta/views/{view_id}", {"lock_type": "collaborative"})
    changes += show_columns(api, view_id, columns)
    changes += replace_if_different(
        api, f"/api/v1/db/meta/views/{view_id}/filters", "/api/v1/db/meta/filters",
        [{"fk_column_id": columns[name]["id"], "comparison_op": op, "value": value,
          "logical_op": "and"} for name, op, value in spec.filters],
        lambda f: (f.get("fk_column_id"), f.get("comparison_op"), normal(f.get("value"))),
        "filters")
    changes += replace_if_different(
        api, f"/api/v1/db/meta/views/{view_id}/sorts", "/api/v1/db/meta/sorts",
        [{"fk_column_id": columns[name]["id"], "direction": direction}
         for name, direction in spec.sorts],
        lambda s: (s.get("fk_column_id"), s.get("direction")), "sorts")
    changes += group_by(api, view_id, columns, spec.group_by)
    api.call("PATCH", f"/api/v1/db/meta/views/{view_id}", {"lock_type": "locked"})
    if view.get("lock_type") != "locked":
        changes.append("locked")
    if changes and spec.title in views:
        work.actions.append(f"view {spec.title!r} repaired: {', '.join(changes)}")
    return view_id


def normal(value: Any) -> Any:
    """A filter value as NocoDB stores it (booleans may come back as text)."""
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    return value


def show_columns(api: NocoDB, view_id: str, columns: dict[str, dict[str, Any]]) -> list[str]:
    """Only the columns planners need, in COLUMN_ORDER; ids, timestamps and the link hidden.
    System columns (the raw foreign key conduce) are never shown in a grid: left alone."""
    title_of = {c["id"]: title for title, c in columns.items() if not c.get("system")}
    changes = []
    for view_column in api.listed(f"/api/v1/db/meta/views/{view_id}/columns"):
        title = title_of.get(view_column["fk_column_id"])
        if title is None:
            continue
        show = title in COLUMN_ORDER
        order = COLUMN_ORDER.index(title) + 1 if show else len(COLUMN_ORDER) + 1
        if bool(view_column.get("show")) == show and (not show or view_column.get("order") == order):
            continue
        api.call("PATCH", f"/api/v1/db/meta/views/{view_id}/columns/{view_column['id']}",
                 {"show": show, "order": order})
        changes.append(f"{title} {'shown' if show else 'hidden'}")
    return changes


def replace_if_different(api: NocoDB, list_path: str, item_path: str, wanted: list[dict[str, Any]],
                         key: Callable[[dict[str, Any]], tuple[Any, ...]], what: str) -> list[str]:
    """Filters and sorts: when they differ from `wanted`, delete them all and add `wanted`."""
    existing = api.listed(list_path)
    if sorted(map(key, existing), key=repr) == sorted(map(key, wanted), key=repr):
        return []
    for item in existing:
        api.call("DELETE", f"{item_path}/{item['id']}")
    for item in wanted:
        api.call("POST", list_path, item)
    return [what]


def group_by(api: NocoDB, view_id: str, columns: dict[str, dict[str, Any]],
             name: str | None) -> list[str]:
    """Group the grid by one column (or by none)."""
    target = columns[name]["id"] if name else None
    changes = []
    for grid_column in api.listed(f"/api/v1/db/meta/grids/{view_id}/grid-columns"):
        wanted = grid_column["fk_column_id"] == target
        if bool(grid_column.get("group_by")) == wanted:
            continue
        api.call("PATCH", f"/api/v1/db/meta/grid-columns/{grid_column['id']}",
                 {"group_by": wanted, "group_by_order": 1 if wanted else None,
                  "group_by_sort": "asc" if wanted else None})
        changes.append(f"grouped by {name}" if wanted else "grouping removed")
    return changes


def hide_from_editors(api: NocoDB, base_id: str, vista_id: str, source_tables: set[str],
                      work: Workspace) -> None:
    """Editors see only the planners' views: every view of datos_vista and every default view
    of the source is hidden from them in NocoDB's UI (the API still answers; PostgreSQL is the
    guard). Another source (the data-read-only one) is left as it is."""
    path = f"/api/v1/db/meta/projects/{base_id}/visibility-rules"
    rules = api.call("GET", path)
    changed = []
    for rule in rules if isinstance(rules, list) else []:
        model = rule.get("fk_model_id")
        hide = model in source_tables and (model == vista_id or is_default_view(rule, rule.get("ptn")))
        disabled = rule.setdefault("disabled", {})
        if hide and not all(disabled.get(role) for role in HIDDEN_FROM):
            disabled.update({role: True for role in HIDDEN_FROM})
            changed.append(rule)
    if changed:
        api.call("POST", path, changed)
        work.actions.append(f"{len(changed)} view(s) hidden from editors")


def invite_editor(api: NocoDB, base_id: str, email: str) -> str:
    """Add a planner to the base as an editor; returns what happened, with the sign-up link
    (NocoDB's invitation) while the planner has not signed up yet."""
    path = f"/api/v1/db/meta/projects/{base_id}/users"
    done = "already in the base"
    user = base_user(api, path, email)
    if user is None or not user.get("roles"):
        api.call("POST", path, {"email": email, "roles": "editor"})
        user, done = base_user(api, path, email), "invited as editor"
    elif user.get("roles") != "editor":
        return f"already in the base as {user['roles']} (left alone)"
    token = (user or {}).get("invite_token")
    if token:
        return f"{done}; sign-up link {api.url}/dashboard/#/signup/{token}"
    return f"{done} as editor"


def base_user(api: NocoDB, path: str, email: str) -> dict[str, Any] | None:
    answer = api.call("GET", path)
    listed = answer.get("users", {}).get("list", []) if isinstance(answer, dict) else []
    for user in listed:
        if str(user.get("email", "")).lower() == email.lower():
            return dict(user)
    return None
