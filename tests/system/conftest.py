"""System test fixtures: the .deb, the cached Debian 12 root, the servers on the host, and one
booted container with the package installed, shared by the ordered steps of test_package.py.

These tests need root, debootstrap and systemd-nspawn and take a minute or two, so they run
only through `make test-system` (which sets FACUSYNC_SYSTEM_TEST=1); `make test` skips them.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from devstack.servers import PostgresServer, RedisServer
from tests.gating import sigterm_raises_keyboard_interrupt, skip_folder_unless
from tests.system.nspawn import Container, cleanup_stale

REPO = Path(__file__).resolve().parents[2]
ENABLED = os.environ.get("FACUSYNC_SYSTEM_TEST") == "1"
DEB_DIR_IN_CONTAINER = "/mnt/facusync-dist"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    skip_folder_unless(ENABLED, __file__, "system test: run `make test-system` (root, nspawn)", items)


def pytest_configure(config: pytest.Config) -> None:
    if ENABLED:
        sigterm_raises_keyboard_interrupt()


@pytest.fixture(scope="session")
def deb_path() -> Path:
    """The package under test: $FACUSYNC_DEB, as `make test-system` builds it."""
    given = os.environ.get("FACUSYNC_DEB")
    if not given:
        pytest.fail("FACUSYNC_DEB is not set: run `make test-system`")
    path = Path(given).resolve()
    if not path.is_file():
        pytest.fail(f"{path} does not exist: run `make deb`")
    return path


@pytest.fixture(scope="session")
def image() -> Path:
    """The cached Debian 12 root (built by scripts/nspawn-root once, reused afterwards)."""
    if os.geteuid() != 0:
        pytest.fail("the system test needs root (debootstrap, systemd-nspawn, cgroups)")
    # Its path (a cache directory named after its contents) is the script's last line.
    out = subprocess.run([str(REPO / "scripts" / "nspawn-root")], check=True, timeout=1800,
                         stdout=subprocess.PIPE, text=True).stdout
    cleanup_stale()
    return Path(out.split()[-1])


@pytest.fixture(scope="session")
def pg() -> Iterator[PostgresServer]:
    server = PostgresServer().start()
    try:
        server.psql("CREATE DATABASE facusync")
        yield server
    finally:
        server.destroy()


@pytest.fixture(scope="session")
def rds() -> Iterator[RedisServer]:
    server = RedisServer().start()
    try:
        yield server
    finally:
        server.destroy()


@pytest.fixture(scope="session")
def standin() -> Iterator[object]:
    """The SQL Server stand-in on the host's loopback, which the container shares."""
    from devstack.standin.harness import StandIn

    with tempfile.TemporaryDirectory(prefix="facusync-standin-") as tmp:
        server = StandIn(tmp)
        server.start()
        try:
            yield server
        finally:
            server.stop()


@pytest.fixture(scope="module")
def box(image: Path, deb_path: Path) -> Iterator[Container]:
    """One booted container for the whole scenario; always destroyed, even after a failure."""
    container = Container(image, binds_ro={deb_path.parent: DEB_DIR_IN_CONTAINER})
    try:
        container.boot(timeout=120)
        yield container
    finally:
        container.destroy_showing_journal()
