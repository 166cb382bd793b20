"""The fault schedule: replayable from its seed, every kind in every run, windows apart.

Fast and server-free, so it runs with `make test` (the chaos run itself is `make test-chaos`).
"""

from __future__ import annotations

import itertools

import pytest

from tests.chaos.faults import LABELS, MIN_SECONDS, WINDOW_KINDS, plan


@pytest.mark.parametrize("seconds", [MIN_SECONDS, 180, 3600])
@pytest.mark.parametrize("seed", [0, 1, 424242])
def test_a_plan_is_replayable_complete_and_fits(seed: int, seconds: int) -> None:
    faults = plan(seed, seconds, 30)
    assert faults == plan(seed, seconds, 30)
    assert {f.kind for f in faults} == set(LABELS)
    assert all(f.at > 0 and f.at + f.duration <= seconds for f in faults)
    windows = sorted((f for f in faults if f.kind in WINDOW_KINDS), key=lambda f: f.at)
    for before, after in itertools.pairwise(windows):
        assert before.at + before.duration <= after.at + 0.1, (before, after)
    assert [f.duration for f in faults if f.kind == "pg_outage"] == [30] * sum(
        1 for f in faults if f.kind == "pg_outage")
    assert len(faults) >= seconds / 12


def test_different_seeds_give_different_plans() -> None:
    assert plan(1, 180, 30) != plan(2, 180, 30)


@pytest.mark.parametrize("seconds", [60, MIN_SECONDS - 1])
def test_a_run_too_short_for_every_kind_is_refused_clearly(seconds: float) -> None:
    with pytest.raises(ValueError, match=r"too short.*at least 2\.8 minutes"):
        plan(0, seconds, 30)


def test_three_minutes_the_default_is_long_enough() -> None:
    assert MIN_SECONDS <= 180
