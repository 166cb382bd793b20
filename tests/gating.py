"""What the long suites' conftests share: skip a whole folder unless its suite is enabled, and
let a CI timeout's SIGTERM run the fixtures' teardown."""

from __future__ import annotations

import signal
from collections.abc import Iterable
from pathlib import Path

import pytest


def skip_folder_unless(enabled: bool, conftest: str, reason: str,
                       items: Iterable[pytest.Item]) -> None:
    """Mark every test below `conftest`'s folder as skipped unless its suite is enabled."""
    if enabled:
        return
    skip = pytest.mark.skip(reason=reason)
    here = Path(conftest).parent
    for item in items:
        if here in Path(str(item.path)).parents:
            item.add_marker(skip)


def sigterm_raises_keyboard_interrupt() -> None:
    """A CI timeout sends SIGTERM: raise instead, so that fixtures' teardown still runs."""

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupt)
