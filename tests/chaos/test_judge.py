"""The polling judgement's boundary: which late rows issue 16's guarantee covers.

Server-free, so it runs with `make test`. Seed 7 of `make test-chaos` met the case: a poison
row written at SQL Server's clock during the writer skew put the newest version seen 63 s
ahead of late rows committed right after it; those are outside "within SYNC_OVERLAP of the
newest version seen" and reconcile, not polling, must repair them.
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta
from types import SimpleNamespace
from typing import Any

from devstack.standin.workload import Event
from tests.chaos.checks import late_beyond_overlap

T0 = datetime(2026, 11, 28, 19, 15, 10)


def judge(events: list[Event], stamped: list[tuple[float, datetime]]) -> set[str]:
    erp: Any = SimpleNamespace(workload=SimpleNamespace(events=events))
    injector: Any = SimpleNamespace(stamped=stamped)
    return late_beyond_overlap(erp, injector, 60.0)


def at(seconds: float) -> float:
    """time.time() of T0 + seconds (the source's clock is the local wall clock)."""
    return time.mktime(T0.timetuple()) + seconds


def text(value: datetime) -> str:
    return value.isoformat(sep=" ", timespec="milliseconds")


def test_late_rows_within_the_overlap_of_the_newest_version_are_judged() -> None:
    events = [Event("insert", "A", text(T0), at(0)),
              Event("late", "B", text(T0 - timedelta(seconds=59)), at(5))]
    assert judge(events, []) == set()


def test_a_row_written_at_the_clock_meanwhile_moves_the_boundary() -> None:
    events = [Event("insert", "A", text(T0), at(0)),
              Event("late", "B", text(T0 - timedelta(seconds=56)), at(14)),
              Event("late", "C", text(T0 - timedelta(seconds=50)), at(20))]
    poison = [(at(7.5), T0 + timedelta(seconds=7))]
    assert judge(events, poison) == {"B"}  # 63 s behind the poison row; C is 57 s behind


def test_a_row_dated_in_the_future_is_not_seen() -> None:
    events = [Event("insert", "A", text(T0), at(0)),
              Event("late", "B", text(T0 - timedelta(seconds=55)), at(2))]
    assert judge(events, [(at(1), datetime(9999, 12, 31))]) == set()


def test_a_later_change_of_the_key_is_what_counts() -> None:
    events = [Event("insert", "A", text(T0 + timedelta(seconds=10)), at(10)),
              Event("late", "B", text(T0 - timedelta(seconds=60)), at(11)),
              Event("update", "B", text(T0 + timedelta(seconds=12)), at(12))]
    assert judge(events, []) == set()
