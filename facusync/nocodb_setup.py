"""`facusync nocodb-setup`: connect NocoDB to the sync database and build the planners'
workspace in it, as the restricted NocoDB role.

Through NocoDB's REST API (tested with NocoDB 0.262.5 and 0.301.3) it
  1. signs in (an API token, or the e-mail and password of a NocoDB super admin),
  2. asks NocoDB to test the connection to PostgreSQL as the NocoDB role,
  3. creates the base (unless one with that title exists) and adds PostgreSQL as its data
     source, schema-read-only (and, with --read-only-source, a second, data-read-only one),
  4. checks what NocoDB sees: both tables with their primary keys and the link between them,
  5. builds the planners' workspace (facusync/nocodb_workspace.py) unless --check-only,
  6. invites planners as editors (--invite),
and prints a report. Re-running it is safe and repairs what drifted. It runs on any host that
reaches NocoDB and reads its own settings (not facusync's): the NocoDB address, credentials and
the PostgreSQL address as NocoDB's server reaches it. Secrets come from the environment, an
--env-file or a prompt, never from the command line, and are never printed.

Exit status: 0 all checks passed, 1 a check failed, 69 NocoDB or PostgreSQL unreachable or
refusing, 77 NocoDB refused the credentials, 78 configuration missing.
"""

from __future__ import annotations

import argparse
import getpass
import json
import re
import sys
import urllib.parse
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from facusync.config import read_environment
from facusync.errors import (
    EX_CONFIG,
    EX_DEGRADED,
    EX_OK,
    EX_UNAVAILABLE,
    AccessError,
    ConfigError,
)
from facusync.nocodb_api import NocoDB, SetupFailure
from facusync.nocodb_workspace import VIEW_TITLES, build

TESTED_VERSIONS = ("0.262.5", "0.301.3")
DEFAULT_BASE = "Planificación"
DEFAULT_SOURCE = "facusync"
READ_ONLY_SOURCE = "facusync (solo lectura)"
REPORT_VIEW = "v_planificacion"
IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")

HELP_EPILOG = """\
variables (environment, or KEY=VALUE lines of --env-file; the environment wins):
  NOCODB_URL                NocoDB's address, e.g. http://127.0.0.1:8080
  NOCODB_TOKEN              an API token of a NocoDB super admin (Team & Settings > Tokens), or
  NOCODB_EMAIL, NOCODB_PASSWORD   a super admin's sign-in (also enables the metadata check)
  PG_HOST, PG_PORT, PG_DATABASE   the sync database, as NocoDB's server reaches it
  PG_NOCODB_ROLE            the NocoDB role (default facusync_nocodb)
  PG_NOCODB_ROLE_PASSWORD   its password (asked for when missing and stdin is a terminal)
  PG_TABLE_VISTA, PG_TABLE_SEGUIMIENTO   table names (default datos_vista, datos_seguimiento)

example:
  NOCODB_TOKEN=... PG_NOCODB_ROLE_PASSWORD=... facusync nocodb-setup \\
      --url http://127.0.0.1:8080 --pg-host 127.0.0.1 --pg-database syncdb \\
      --invite planificador@example.com
"""


@dataclass(frozen=True)
class Settings:
    url: str
    token: str
    email: str
    password: str
    base_title: str
    source_alias: str
    pg_host: str
    pg_port: int
    pg_database: str
    pg_user: str
    pg_password: str
    vista: str
    seguimiento: str
    check_only: bool
    read_only_source: bool
    invite: tuple[str, ...]
    timeout: float

    def secrets(self) -> list[str]:
        return [s for s in (self.token, self.password, self.pg_password) if s]


@dataclass
class Check:
    ok: bool
    what: str
    detail: str
    warning: bool = False


@dataclass
class Report:
    nocodb_version: str = ""
    signed_in_as: str = ""
    base_id: str = ""
    base_action: str = ""
    source_id: str = ""
    source_action: str = ""
    read_only_source: str = ""
    tables: dict[str, str] = field(default_factory=dict)
    link_field: dict[str, str] = field(default_factory=dict)
    views: dict[str, str] = field(default_factory=dict)
    actions: list[str] = field(default_factory=list)
    invites: dict[str, str] = field(default_factory=dict)
    checks: list[Check] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(c.ok or c.warning for c in self.checks)


# --- configuration --------------------------------------------------------------------------


def settings_from(args: argparse.Namespace, env: Mapping[str, str]) -> Settings:
    """Merge flags and the variables; report every missing value at once."""

    def pick(flag: str | None, name: str, default: str = "") -> str:
        return flag or env.get(name) or default

    problems = []
    url = pick(args.url, "NOCODB_URL").rstrip("/")
    parsed = urllib.parse.urlsplit(url)
    if not url:
        problems.append("NocoDB's address is missing: --url or NOCODB_URL")
    elif parsed.scheme not in ("http", "https") or not parsed.netloc:
        problems.append(f"--url {url!r} is not an http:// or https:// address")
    token = env.get("NOCODB_TOKEN", "")
    email = pick(args.email, "NOCODB_EMAIL")
    password = env.get("NOCODB_PASSWORD", "")
    if not token and not email:
        problems.append("no NocoDB credentials: set NOCODB_TOKEN (an API token), or --email/"
                        "NOCODB_EMAIL with NOCODB_PASSWORD")
    port_text = pick(args.pg_port, "PG_PORT", "5432")
    port = int(port_text) if port_text.isdigit() else 0
    if not 0 < port < 65536:
        problems.append(f"PostgreSQL port {port_text!r} is not a TCP port")
    pg_host = pick(args.pg_host, "PG_HOST")
    pg_database = pick(args.pg_database, "PG_DATABASE")
    if not pg_host:
        problems.append("PostgreSQL host missing: --pg-host or PG_HOST (as NocoDB's server "
                        "reaches it)")
    if not pg_database:
        problems.append("PostgreSQL database missing: --pg-database or PG_DATABASE")
    pg_user = pick(args.pg_user, "PG_NOCODB_ROLE", "facusync_nocodb")
    vista = pick(None, "PG_TABLE_VISTA", "datos_vista")
    seguimiento = pick(None, "PG_TABLE_SEGUIMIENTO", "datos_seguimiento")
    for name, value in (("PG_TABLE_VISTA", vista), ("PG_TABLE_SEGUIMIENTO", seguimiento)):
        if not IDENTIFIER.match(value):
            problems.append(f"{name}={value!r} is not a lower-case SQL identifier")
    for address in args.invite:
        if not re.fullmatch(r"[^@\s]+@[^@\s]+\.[^@\s]+", address):
            problems.append(f"--invite {address!r} is not an e-mail address")
    if problems:
        raise SetupFailure(EX_CONFIG, "invalid configuration:\n" +
                           "\n".join(f"  - {p}" for p in problems))

    if email and not token and not password:
        password = ask("NOCODB_PASSWORD", f"NocoDB password for {email}: ")
    pg_password = env.get("PG_NOCODB_ROLE_PASSWORD", "")
    if not pg_password and not args.check_only:
        pg_password = ask("PG_NOCODB_ROLE_PASSWORD", f"password of the PostgreSQL role {pg_user}: ")
    return Settings(
        url=url, token=token, email=email, password=password,
        base_title=pick(args.base, "NOCODB_BASE", DEFAULT_BASE),
        source_alias=pick(args.source_alias, "NOCODB_SOURCE", DEFAULT_SOURCE),
        pg_host=pg_host, pg_port=port, pg_database=pg_database, pg_user=pg_user,
        pg_password=pg_password, vista=vista, seguimiento=seguimiento,
        check_only=args.check_only, read_only_source=args.read_only_source,
        invite=tuple(args.invite), timeout=args.timeout,
    )


def ask(name: str, prompt: str) -> str:
    if not sys.stdin.isatty():
        raise SetupFailure(EX_CONFIG, f"{name} is missing (and stdin is not a terminal to ask "
                                      "for it)")
    return getpass.getpass(prompt)


# --- base and sources -----------------------------------------------------------------------


def connection(settings: Settings) -> dict[str, Any]:
    return {"host": settings.pg_host, "port": settings.pg_port, "user": settings.pg_user,
            "password": settings.pg_password, "database": settings.pg_database}


def test_connection(api: NocoDB, settings: Settings) -> None:
    """NocoDB's own server connects: it may reach PostgreSQL by another address than we do."""
    answer = api.call("POST", "/api/v2/meta/connection/test",
                      {"client": "pg", "connection": connection(settings)})
    if not isinstance(answer, dict) or answer.get("code") != 0:
        message = answer.get("message") if isinstance(answer, dict) else answer
        target = (f"{settings.pg_user}@{settings.pg_host}:{settings.pg_port}/"
                  f"{settings.pg_database}")
        raise SetupFailure(EX_UNAVAILABLE, f"NocoDB cannot connect to PostgreSQL as {target}: "
                                           f"{api.scrub(str(message))}")


def find_base(api: NocoDB, title: str) -> dict[str, Any] | None:
    for base in api.listed("/api/v2/meta/bases"):
        if base.get("title") == title:
            return base
    return None


def find_source(api: NocoDB, base_id: str, alias: str) -> dict[str, Any] | None:
    base = api.call("GET", f"/api/v2/meta/bases/{base_id}")
    for source in base.get("sources", []) if isinstance(base, dict) else []:
        if source.get("alias") == alias and not source.get("is_meta"):
            return dict(source)
    return None


def add_source(api: NocoDB, settings: Settings, base_id: str, alias: str, data_readonly: bool) -> str:
    """POST the source, wait for NocoDB's job adding it; returns its id."""
    body = {
        "alias": alias,
        "type": "pg",
        "config": {"client": "pg", "connection": connection(settings), "searchPath": ["public"]},
        # Keep PostgreSQL's names: the planners know the tables and columns by them.
        "inflection_column": "none",
        "inflection_table": "none",
        # Columns and tables change only through facusync's migrations, never from NocoDB.
        "is_schema_readonly": True,
        "is_data_readonly": data_readonly,
    }
    job = api.call("POST", f"/api/v2/meta/bases/{base_id}/sources", body)
    job_id = job.get("id") if isinstance(job, dict) else None
    if not job_id:
        raise SetupFailure(EX_UNAVAILABLE, "NocoDB did not start the job adding the source")
    api.wait_for_job(base_id, str(job_id), "add the source", settings.timeout)
    source = find_source(api, base_id, alias)
    if source is None:
        raise SetupFailure(EX_UNAVAILABLE, f"the source {alias!r} was added but NocoDB does not "
                                           "list it")
    return str(source["id"])


def ensure_source(api: NocoDB, settings: Settings, report: Report, alias: str,
                  data_readonly: bool) -> tuple[str, str]:
    """The source's id and what was done: found, or (unless --check-only) added."""
    source = find_source(api, report.base_id, alias)
    if source is not None:
        return str(source["id"]), "exists (reused; not re-created)"
    if settings.check_only:
        raise SetupFailure(EX_DEGRADED, f"base {settings.base_title!r} has no data source {alias!r}")
    if report.base_action == "exists":
        test_connection(api, settings)
    return add_source(api, settings, report.base_id, alias, data_readonly), "added"


# --- checks ---------------------------------------------------------------------------------


def inspect(api: NocoDB, settings: Settings, report: Report) -> dict[str, Any] | None:
    """What NocoDB sees in our source: tables, keys, the link, the view, metadata drift.
    Returns the link column of datos_seguimiento, or None when it is missing."""
    listed = {t["table_name"]: t for t in api.listed(f"/api/v2/meta/bases/{report.base_id}/tables")
              if t.get("source_id") == report.source_id}
    report.tables = {name: str(t["id"]) for name, t in listed.items()}
    metas: dict[str, dict[str, Any]] = {}
    for name in (settings.vista, settings.seguimiento):
        if name not in listed:
            report.checks.append(Check(False, name, "not listed by NocoDB: run `facusync "
                                       "migrate --refresh-grants`, then re-run this command"))
            continue
        metas[name] = api.call("GET", f"/api/v2/meta/tables/{listed[name]['id']}")
        pks = [c["column_name"] for c in metas[name]["columns"] if c.get("pk")]
        want = ["conduce"] if name == settings.vista else ["id"]
        if pks == want:
            report.checks.append(Check(True, name, f"table, primary key {pks[0]}"))
        else:
            report.checks.append(Check(False, name, f"primary key seen as {pks or 'none'}, "
                                       f"expected {want[0]}: without it NocoDB would update "
                                       "every row on an edit; check the NocoDB role's grants"))
    link = None
    if settings.seguimiento in metas and settings.vista in metas:
        vista_id = report.tables[settings.vista]
        links = [c for c in metas[settings.seguimiento]["columns"]
                 if c.get("uidt") in ("LinkToAnotherRecord", "Links")
                 and (c.get("colOptions") or {}).get("fk_related_model_id") == vista_id]
        if links:
            link = links[0]
            report.link_field = {"table": settings.seguimiento, "id": str(link["id"]),
                                 "title": str(link["title"])}
            kind = {"bt": "belongs to", "hm": "has many", "oo": "one to one"}.get(
                link["colOptions"].get("type"), link["colOptions"].get("type"))
            report.checks.append(Check(True, f"{settings.seguimiento} -> {settings.vista}",
                                       f"link field {link['title']!r} ({kind}); conduce is set "
                                       "through it"))
        else:
            report.checks.append(Check(False, f"{settings.seguimiento} -> {settings.vista}",
                                       "no link field: NocoDB did not see the foreign key on "
                                       "conduce; check the NocoDB role's REFERENCES grant"))
    if REPORT_VIEW in listed:
        report.checks.append(Check(True, REPORT_VIEW, "report view, read-only"))
    else:
        report.checks.append(Check(False, REPORT_VIEW, "not listed (run `facusync migrate`)",
                                   warning=True))
    if api.session:
        report.checks.append(metadata_check(api, settings, report))
    return link


def metadata_check(api: NocoDB, settings: Settings, report: Report) -> Check:
    """NocoDB's metadata against the database. NocoDB 0.262.5 answers the difference;
    0.301.3 starts a background job ({"id": …}) whose result is the difference."""
    diff = api.call("GET", f"/api/v2/meta/bases/{report.base_id}/meta-diff/{report.source_id}")
    if isinstance(diff, dict) and diff.get("id"):
        diff = api.wait_for_job(report.base_id, str(diff["id"]), "compare the metadata",
                                settings.timeout)
    if not isinstance(diff, list):
        return Check(False, "metadata", "NocoDB's answer to meta-diff is not a list of tables: "
                     "not checked", warning=True)
    changed = [d["table_name"] for d in diff if isinstance(d, dict) and d.get("detectedChanges")]
    if changed:
        return Check(False, "metadata", "NocoDB's metadata is behind the database for "
                     f"{', '.join(changed)}: open the base's data source in NocoDB and press "
                     "Sync", warning=True)
    return Check(True, "metadata", "NocoDB's metadata matches the database")


def check_workspace(api: NocoDB, settings: Settings, report: Report) -> None:
    """--check-only: the four views exist and are locked."""
    if settings.seguimiento not in report.tables:
        return
    views = {v["title"]: v for v in
             api.listed(f"/api/v1/db/meta/tables/{report.tables[settings.seguimiento]}/views")}
    for title in VIEW_TITLES:
        view = views.get(title)
        if view is None:
            report.checks.append(Check(False, f"view {title}", "missing: run without --check-only"))
        elif view.get("lock_type") != "locked":
            report.checks.append(Check(False, f"view {title}", "not locked: run without "
                                       "--check-only to repair it"))
        else:
            report.checks.append(Check(True, f"view {title}", "locked grid"))
            report.views[title] = str(view["id"])


# --- the run --------------------------------------------------------------------------------


def run(settings: Settings) -> Report:
    api = NocoDB(settings.url, settings.secrets())
    report = Report()
    report.signed_in_as = api.sign_in(settings.token, settings.email, settings.password)
    info = api.call("GET", "/api/v1/version")
    report.nocodb_version = str(info.get("currentVersion", "")) if isinstance(info, dict) else ""
    if report.nocodb_version not in TESTED_VERSIONS:
        report.checks.append(Check(False, "NocoDB version", f"{report.nocodb_version or 'unknown'}"
                                   f" is not one of the tested {', '.join(TESTED_VERSIONS)}",
                                   warning=True))
    base = find_base(api, settings.base_title)
    if base is None:
        if settings.check_only:
            raise SetupFailure(EX_DEGRADED, f"no base titled {settings.base_title!r} in NocoDB")
        test_connection(api, settings)  # before creating anything
        base = api.call("POST", "/api/v2/meta/bases", {"title": settings.base_title})
        report.base_action = "created"
    else:
        report.base_action = "exists"
    report.base_id = str(base["id"])
    report.source_id, report.source_action = ensure_source(api, settings, report,
                                                           settings.source_alias, False)
    link = inspect(api, settings, report)
    if settings.check_only:
        check_workspace(api, settings, report)
        return report
    if link is not None:
        try:
            work = build(api, report.base_id, report.tables, settings.vista,
                         settings.seguimiento, link, list(settings.invite))
        except ValueError as exc:
            report.checks.append(Check(False, "workspace", str(exc)))
        else:
            report.views, report.actions, report.invites = work.views, work.actions, work.invites
            report.checks.append(Check(True, "workspace", f"{len(work.views)} locked views on "
                                       f"{settings.seguimiento}; {settings.vista} hidden from editors"))
    if settings.read_only_source:
        report.read_only_source = ensure_source(api, settings, report, READ_ONLY_SOURCE, True)[1]
    return report


def print_report(settings: Settings, report: Report) -> None:
    print(f"NocoDB {report.nocodb_version or '(version unknown)'} at {settings.url}, signed in as "
          f"{report.signed_in_as}")
    print(f"base   {settings.base_title!r} ({report.base_id}): {report.base_action}")
    target = f"postgresql://{settings.pg_user}@{settings.pg_host}:{settings.pg_port}/{settings.pg_database}"
    print(f"source {settings.source_alias!r} -> {target} ({report.source_id}): {report.source_action}")
    if report.read_only_source:
        print(f"source {READ_ONLY_SOURCE!r} (data read-only): {report.read_only_source}")
    for action in report.actions:
        print(f"  done {action}")
    for email, outcome in report.invites.items():
        print(f"  invite {email}: {outcome}")
    for check in report.checks:
        mark = "ok  " if check.ok else ("warn" if check.warning else "FAIL")
        print(f"  {mark} {check.what}: {check.detail}")
    print("all checks passed" if report.passed else "some checks FAILED: see above")
    print("note: NocoDB shows the time columns in each browser's time zone (they are "
          "timestamptz); planners' browsers should be set to the source's time zone")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The `facusync nocodb-setup` subcommand; it runs without facusync's own configuration."""
    parser = sub.add_parser(
        "nocodb-setup", help="connect NocoDB and build the planners' workspace",
        description=(__doc__ or "").split("\n\n")[0], epilog=HELP_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="NocoDB's address (NOCODB_URL)")
    parser.add_argument("--email", help="sign in as this super admin (NOCODB_EMAIL); the "
                                        "password comes from NOCODB_PASSWORD or a prompt")
    # Also accepted before the subcommand (facusync's own --env-file); not facusync's settings.
    parser.add_argument("--env-file", default=argparse.SUPPRESS,
                        help="read these variables from this file (the environment wins)")
    parser.add_argument("--base", help=f"the base's title (NOCODB_BASE, default {DEFAULT_BASE})")
    parser.add_argument("--source-alias", help="the data source's name (NOCODB_SOURCE, default "
                                               f"{DEFAULT_SOURCE})")
    parser.add_argument("--pg-host", help="PostgreSQL host as NocoDB's server reaches it (PG_HOST)")
    parser.add_argument("--pg-port", help="PostgreSQL port (PG_PORT, default 5432)")
    parser.add_argument("--pg-database", help="the sync database (PG_DATABASE)")
    parser.add_argument("--pg-user", help="the NocoDB role (PG_NOCODB_ROLE, default "
                                          "facusync_nocodb)")
    parser.add_argument("--check-only", action="store_true",
                        help="create nothing: find the base, source and views and check them")
    parser.add_argument("--read-only-source", action="store_true",
                        help=f"also add {READ_ONLY_SOURCE!r}, a data-read-only source to browse "
                             "datos_vista")
    parser.add_argument("--invite", nargs="+", default=[], metavar="EMAIL",
                        help="add these planners to the base as editors")
    parser.add_argument("--timeout", type=float, default=120.0,
                        help="seconds to wait for NocoDB's background jobs (default 120)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.set_defaults(standalone=main)


def read_variables(env_file: str | None) -> dict[str, str]:
    """The environment over the --env-file's variables; a file that cannot be read is a
    configuration problem of this command (exit 78), whoever's permissions are at fault."""
    try:
        return read_environment(env_file)
    except (AccessError, ConfigError) as exc:
        reason = exc.__cause__.strerror if isinstance(exc.__cause__, OSError) else str(exc)
        raise SetupFailure(EX_CONFIG, f"cannot read --env-file {env_file}: {reason}") from None


def main(args: argparse.Namespace) -> int:
    """Run with the parsed arguments; the global --env-file is read here, not by facusync."""
    try:
        settings = settings_from(args, read_variables(args.env_file or None))
        report = run(settings)
    except SetupFailure as exc:
        print(f"facusync nocodb-setup: {exc}", file=sys.stderr)
        return exc.code
    if args.json:
        out = asdict(report)
        out["passed"] = report.passed
        print(json.dumps(out, indent=2, ensure_ascii=False))
    else:
        print_report(settings, report)
    return EX_OK if report.passed else EX_DEGRADED
