"""NocoDB acceptance fixtures' switch: these tests need the cached NocoDB install and take a
minute, so they run only through `make test-nocodb` (which installs NocoDB and sets
FACUSYNC_NOCODB_TEST=1 and FACUSYNC_NOCODB_HOME); `make test` skips them."""

from __future__ import annotations

import os

import pytest

from tests.processes import sigterm_raises_keyboard_interrupt, skip_folder_unless

ENABLED = os.environ.get("FACUSYNC_NOCODB_TEST") == "1"
# Filled by the test module's fixtures; shown at the end of the run.
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
