"""A Debian 12 host as an operator gets it: a booted container with its own network, in which
Debian's PostgreSQL and Redis run on their default ports, and SQL Server is the stand-in.

The stand-in's server runs inside the container (as a transient systemd service, from this
checkout mounted read-only); its SQLite file lives in a host directory mounted into the
container, so the test changes the "SQL Server" data from here with the usual StandIn
helpers while the server there answers the daemons.
"""

from __future__ import annotations

import contextlib
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import sqlglot

from devstack.standin.harness import StandIn
from tests.system.conftest import DEB_DIR_IN_CONTAINER, REPO
from tests.system.nspawn import Container, wait_for

SRC_IN_CONTAINER = "/mnt/facusync-src"
PYLIB_IN_CONTAINER = "/mnt/facusync-pylib"
STANDIN_IN_CONTAINER = "/mnt/facusync-standin"
STANDIN_PORT = 1433
ENV_FILE = "/etc/facusync/facusync.env"
SERVICES = ("facusync-producer.service", "facusync-consumer.service")


class ContainedStandIn(StandIn):
    """The stand-in, its data here, its server in the container on 127.0.0.1:1433."""

    def __init__(self, workdir: Path, box: Container) -> None:
        super().__init__(workdir, port=STANDIN_PORT, password=secrets.token_urlsafe(12))
        self.box = box

    def start(self, timeout: float = 30.0) -> None:
        inside = STANDIN_IN_CONTAINER
        self.box.run("systemd-run", "--unit=standin", "--collect",
                     f"--property=WorkingDirectory={SRC_IN_CONTAINER}",
                     f"--setenv=PYTHONPATH={SRC_IN_CONTAINER}:{PYLIB_IN_CONTAINER}",
                     f"--setenv=STANDIN_PASSWORD={self.password}",  # a throwaway test login
                     "/usr/bin/python3", "-m", "devstack.standin", "serve", "--host", self.host,
                     "--port", str(STANDIN_PORT), "--port-file", f"{inside}/standin.port",
                     "--db", f"{inside}/{self.db_path.name}", "--user", self.user,
                     "--database", self.database, "--control", f"{inside}/{self.control_path.name}")
        wait_for("the stand-in listening in the container", self.port_file.exists, timeout,
                 detail=lambda: self.box.run("journalctl", "-u", "standin", "--no-pager", "-n", "20",
                                             check=False).stdout)

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.box.run("systemctl", "stop", "standin", check=False, timeout=30)


@contextlib.contextmanager
def debian_host(image: Path, deb_dir: Path, more_ro: dict[Path, str] | None = None,
                ) -> Iterator[tuple[Container, ContainedStandIn]]:
    """A booted private-network container with the stand-in answering in it."""
    data = Path(tempfile.mkdtemp(prefix="facusync-standin-"))
    data.chmod(0o755)
    binds_ro = {deb_dir: DEB_DIR_IN_CONTAINER, REPO: SRC_IN_CONTAINER,
                Path(sqlglot.__file__).parent: f"{PYLIB_IN_CONTAINER}/sqlglot", **(more_ro or {})}
    box = Container(image, binds_ro=binds_ro, binds={data: STANDIN_IN_CONTAINER},
                    private_network=True)
    try:
        box.boot(timeout=120)
        standin = ContainedStandIn(data, box)
        standin.start()
        yield box, standin
    finally:
        try:
            box.destroy_showing_journal()
        finally:
            shutil.rmtree(data, ignore_errors=True)


def psql(box: Container, sql: str, database: str = "syncdb") -> str:
    """SQL as Debian's superuser, the way an admin runs it (peer authentication)."""
    return box.run("runuser", "-u", "postgres", "--", "psql", "-X", "-q", "-A", "-t",
                   "-v", "ON_ERROR_STOP=1", "-d", database, "-c", sql, timeout=60).stdout.strip()


def pg_rows(box: Container) -> int:
    return int(psql(box, "SELECT count(*) FROM datos_vista") or 0)


def edit_env_file(box: Container, values: dict[str, str]) -> str:
    """What the operator does in the editor: the shipped file, with each CHANGE_ME replaced
    by the value given for its variable (and other given variables changed in place)."""
    lines = []
    for line in box.run("cat", ENV_FILE).stdout.splitlines():
        key = line.split("=", 1)[0]
        if "=" in line and not line.startswith("#") and key in values:
            line = f"{key}={values[key]}"
        lines.append(line)
    text = "\n".join(lines) + "\n"
    left = [ln for ln in text.splitlines() if "CHANGE_ME" in ln and not ln.startswith("#")]
    assert not left, f"the README's values leave placeholders: {left}"
    box.write(ENV_FILE, text)  # keeps mode 0640 root:_facusync
    return text
