"""NocoDB acceptance fixtures' switch: these tests need the cached NocoDB installs and take
minutes, so they run only through `make test-nocodb` (which installs each NocoDB version and
sets FACUSYNC_NOCODB_TEST=1 and FACUSYNC_NOCODB_HOMES, the installs' directories separated by
spaces); `make test` runs them through that target. Every test runs once per version."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.gating import sigterm_raises_keyboard_interrupt, skip_folder_unless

if TYPE_CHECKING:
    from tests.nocodb.stack import Stack

ENABLED = os.environ.get("FACUSYNC_NOCODB_TEST") == "1"
HOMES = [Path(h) for h in os.environ.get("FACUSYNC_NOCODB_HOMES", "").split()]
# Filled by the fixtures and tests; shown at the end of the run.
MEASUREMENTS: dict[str, str] = {}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    skip_folder_unless(ENABLED, __file__, "NocoDB acceptance test: run `make test-nocodb`", items)


def pytest_configure(config: pytest.Config) -> None:
    if ENABLED:
        sigterm_raises_keyboard_interrupt()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if MEASUREMENTS:
        terminalreporter.section("NocoDB measurements")
        for key, value in MEASUREMENTS.items():
            terminalreporter.write_line(f"{key}: {value}")


def version_of(home: Path) -> str:
    complete = home / ".complete"
    return complete.read_text().strip() if complete.is_file() else home.name


@pytest.fixture(scope="session", params=HOMES or [Path("(not installed)")], ids=version_of)
def stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The whole stack on one NocoDB version, shared by every test of that version (pytest
    finishes one version's stack before it starts the next)."""
    from tests.nocodb.stack import open_stack

    home: Path = request.param
    if not (home / ".complete").is_file():
        pytest.fail("FACUSYNC_NOCODB_HOMES does not name finished installs: run `make test-nocodb`")
    with open_stack(home, tmp_path_factory.mktemp(f"nocodb-{version_of(home)}")) as opened:
        yield opened
