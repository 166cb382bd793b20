"""NocoDB acceptance fixtures' switch: these tests need the cached NocoDB install and take a
minute, so they run only through `make test-nocodb` (which installs NocoDB and sets
FACUSYNC_NOCODB_TEST=1 and FACUSYNC_NOCODB_HOME); `make test` skips them."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

ENABLED = os.environ.get("FACUSYNC_NOCODB_TEST") == "1"
# Filled by the test module's fixtures; shown at the end of the run.
MEASUREMENTS: dict[str, str] = {}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if ENABLED:
        return
    skip = pytest.mark.skip(reason="NocoDB acceptance test: run `make test-nocodb`")
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.path)).parents:
            item.add_marker(skip)


def pytest_configure(config: pytest.Config) -> None:
    if ENABLED:
        # A CI timeout sends SIGTERM: raise instead, so that the fixtures' teardown stops
        # NocoDB, the daemons and the servers.
        def interrupt(signum: int, frame: object) -> None:
            raise KeyboardInterrupt(f"signal {signum}")

        signal.signal(signal.SIGTERM, interrupt)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if MEASUREMENTS:
        terminalreporter.section("NocoDB measurements")
        for key, value in MEASUREMENTS.items():
            terminalreporter.write_line(f"{key}: {value}")
