"""Upgrading a running installation: the previous release's .deb, built from its git tag
(scripts/release-deb), set up as its own README said, with rows flowing, then the README's
`sh upgrade` block typed while the services run, then remove and reinstall.

Proves: the services are restarted by the upgrade, the env file and its mode are kept,
`migrate --admin` leaves every shipped migration applied, no row is lost or duplicated,
status is healthy after, a downgrade is refused, and remove + reinstall keep the
configuration. Run with `make test-system`.
"""

from __future__ import annotations

import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.system.conftest import DEB_DIR_IN_CONTAINER, REPO
from tests.system.debian import (
    ENV_FILE,
    SERVICES,
    ContainedStandIn,
    debian_host,
    edit_env_file,
    pg_rows,
    psql,
)
from tests.system.nspawn import Container, wait_for
from tests.system.terminal import readme_commands, type_command

PREVIOUS = "v0.1.0"
OLD_DIR_IN_CONTAINER = "/mnt/facusync-previous"
APT = {"DEBIAN_FRONTEND": "noninteractive"}
# What the README's upgrade step says to answer: yes to apt, and "N" (keep yours, the
# default) when dpkg asks about the env file because the shipped example changed.
UPGRADE_ANSWERS = [(r"\[Y/n\] $", "y"), (r"facusync\.env \(Y/I/N/O/D/Z\) \[default=N\] \? $", "N")]


@pytest.fixture(scope="module")
def previous_deb() -> Path:
    out = subprocess.run([str(REPO / "scripts" / "release-deb"), PREVIOUS], check=True,
                         stdout=subprocess.PIPE, text=True, timeout=1500).stdout
    return Path(out.split()[-1])


@pytest.fixture(scope="module")
def host(image: Path, deb_path: Path,
         previous_deb: Path) -> Iterator[tuple[Container, ContainedStandIn]]:
    with debian_host(image, deb_path.parent, {previous_deb.parent: OLD_DIR_IN_CONTAINER}) as pair:
        yield pair


def version(box: Container) -> str:
    return box.run("dpkg-query", "-W", "-f=${Version}", "facusync").stdout


def main_pids(box: Container) -> dict[str, str]:
    return {u: box.show(u, "MainPID")["MainPID"] for u in SERVICES}


def wait_active(box: Container, unit: str) -> None:
    wait_for(f"{unit} active", lambda: box.show(unit, "ActiveState", "MainPID")["ActiveState"]
             == "active", 60, detail=lambda: box.show(unit, "ActiveState", "SubState", "Result"))


@pytest.mark.timeout(600)
def test_upgrade_while_rows_flow(host: tuple[Container, ContainedStandIn],
                                 previous_deb: Path, deb_path: Path) -> None:
    box, standin = host
    standin.seed(200)
    # -- the previous release, as its README had it end up: daemons as facusync_sync ------
    box.run("apt-get", "install", "-y", f"{OLD_DIR_IN_CONTAINER}/{previous_deb.name}", env=APT,
            timeout=300)
    old_version = version(box)
    assert previous_deb.name == f"facusync_{old_version}_all.deb"
    superuser, sync_password = secrets.token_urlsafe(16), secrets.token_urlsafe(18)
    box.run("runuser", "-u", "postgres", "--", "createdb", "syncdb")
    box.run("runuser", "-u", "postgres", "--", "psql", "-q", "-c",
            f"ALTER USER postgres PASSWORD '{superuser}'")  # what 0.1.0's operator had to do
    common = {"MSSQL_HOST": standin.host, "MSSQL_PORT": str(standin.port),
              "MSSQL_USER": standin.user, "MSSQL_PASSWORD": standin.password,
              "MSSQL_DATABASE": standin.database, "PG_HOST": "localhost",
              "REDIS_PASSWORD": "", "SYNC_INTERVAL": "1"}
    edit_env_file(box, {**common, "PG_USER": "postgres", "PG_PASSWORD": superuser})
    text = box.run("cat", ENV_FILE).stdout
    box.write(ENV_FILE, text + f"PG_SYNC_ROLE_PASSWORD={sync_password}\n"
                               f"PG_NOCODB_ROLE_PASSWORD={sync_password}\n")
    box.run("facusync", "migrate", "--create-roles", timeout=120)
    edit_env_file(box, {**common, "PG_USER": "facusync_sync", "PG_PASSWORD": sync_password})
    box.run("systemctl", "start", *SERVICES, "facusync-reconcile.timer", timeout=120)
    wait_for("the seeded rows in PostgreSQL", lambda: pg_rows(box) == 200, 90,
             detail=lambda: pg_rows(box))
    env_before = box.run("sha256sum", ENV_FILE).stdout
    pids_before = main_pids(box)

    # -- rows keep coming while the README's upgrade is typed -----------------------------
    workload: Any = standin.workload(rate=20.0, seed=7).start()
    try:
        wait_for("rows flowing", lambda: pg_rows(box) > 210, 60, detail=lambda: pg_rows(box))
        for command in readme_commands(REPO / "README.md", "upgrade"):
            typed = type_command(box, command, cwd=DEB_DIR_IN_CONTAINER,
                                 answers=UPGRADE_ANSWERS, timeout=150)
            assert typed.status == 0, f"`{command}` exited {typed.status}:\n{typed.output[-3000:]}"
            assert "Traceback" not in typed.output
        assert version(box) == deb_path.name.split("_")[1] != old_version
        for unit in SERVICES:
            wait_active(box, unit)
        assert all(main_pids(box)[u] not in ("0", pids_before[u]) for u in SERVICES), \
            "the upgrade did not restart the services"
        assert box.run("sha256sum", ENV_FILE).stdout == env_before
        assert box.run("stat", "-c", "%a %U %G", ENV_FILE).stdout.split() == ["640", "root", "_facusync"]
        # Every migration the new package ships is applied.
        shipped = sorted(int(p.split("/")[-1][:3]) for p in box.run(
            "sh", "-c", "ls /usr/share/facusync/sql/*.sql").stdout.split())
        applied = [int(v) for v in psql(box, "SELECT version FROM schema_migrations ORDER BY 1").split()]
        assert applied == shipped
        # The daemons' own env file migrates too when nothing is pending (0.1.0: exit 78).
        plain = box.run("facusync", "migrate", check=False, timeout=120)
        assert plain.returncode == 0 and "schema is up to date" in plain.stdout, plain
        upgraded_with = pg_rows(box)
        wait_for("rows flowing after the upgrade", lambda: pg_rows(box) > upgraded_with, 60,
                 detail=lambda: pg_rows(box))
    finally:
        workload.stop()

    # -- nothing lost, nothing twice; healthy ---------------------------------------------
    wait_for("PostgreSQL holding every row of the view", lambda: pg_rows(box) == standin.count(),
             120, detail=lambda: (pg_rows(box), standin.count()))
    assert psql(box, "SELECT count(*) - count(DISTINCT conduce) FROM datos_vista") == "0"
    assert psql(box, "SELECT (SELECT count(*) FROM datos_seguimiento) - "
                     "(SELECT count(*) FROM datos_vista)") == "0"
    box.run("systemctl", "start", "facusync-reconcile.service", timeout=300)
    verify = box.run("facusync", "verify", check=False, timeout=120)
    assert verify.returncode == 0 and "verify: IN SYNC" in verify.stdout, verify.stdout
    wait_for("facusync status healthy", lambda: box.run("facusync", "status", check=False,
                                                        timeout=60).returncode == 0, 60,
             detail=lambda: box.run("facusync", "status", check=False, timeout=60).stdout)


def test_downgrade_is_refused(host: tuple[Container, ContainedStandIn], previous_deb: Path,
                              deb_path: Path) -> None:
    box, _ = host
    res = box.run("apt-get", "install", "-y", f"{OLD_DIR_IN_CONTAINER}/{previous_deb.name}",
                  env=APT, check=False, timeout=300)
    assert res.returncode != 0 and "downgrade" in (res.stdout + res.stderr).lower(), res
    assert version(box) == deb_path.name.split("_")[1]
    for unit in SERVICES:
        assert box.run("systemctl", "is-active", unit).stdout.strip() == "active"


def test_remove_and_reinstall_keep_the_configuration(
        host: tuple[Container, ContainedStandIn], deb_path: Path) -> None:
    box, standin = host
    env_before = box.run("sha256sum", ENV_FILE).stdout
    box.run("apt-get", "remove", "-y", "facusync", env=APT, timeout=300)
    for unit in SERVICES:
        assert box.run("systemctl", "is-active", unit, check=False).stdout.strip() != "active"
    assert box.run("sha256sum", ENV_FILE).stdout == env_before
    box.run("apt-get", "install", "-y", f"{DEB_DIR_IN_CONTAINER}/{deb_path.name}", env=APT,
            timeout=300)
    assert box.run("sha256sum", ENV_FILE).stdout == env_before
    assert box.run("stat", "-c", "%a %U %G", ENV_FILE).stdout.split() == ["640", "root", "_facusync"]
    box.run("systemctl", "start", *SERVICES, timeout=120)
    count = pg_rows(box)
    standin.insert([{"CONDUCE": "REINSTALL-1", "CLIENTE": "after the reinstall"}])
    wait_for("a row after the reinstall", lambda: pg_rows(box) == count + 1, 60,
             detail=lambda: pg_rows(box))
