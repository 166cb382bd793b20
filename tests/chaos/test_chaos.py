"""The chaos suite as a pytest test: one short run of `python -m tests.chaos`.

It takes minutes and starts servers of its own, so it runs only when asked:
`make test-chaos` (which sets FACUSYNC_CHAOS=1), or FACUSYNC_CHAOS=1 pytest tests/chaos.
FACUSYNC_CHAOS_MINUTES (default 3), FACUSYNC_CHAOS_SEED (replay a failure) and
FACUSYNC_CHAOS_PG_OUTAGE (seconds, default 30) shape the run.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ENABLED = os.environ.get("FACUSYNC_CHAOS") == "1"
MINUTES = float(os.environ.get("FACUSYNC_CHAOS_MINUTES") or 3)
SEED = os.environ.get("FACUSYNC_CHAOS_SEED") or ""
PG_OUTAGE = os.environ.get("FACUSYNC_CHAOS_PG_OUTAGE") or "30"
# Set-up, drain, reconcile and checks take about a minute; leave room for a slow host.
BUDGET = int(MINUTES * 60 + 600)


@pytest.mark.slow
@pytest.mark.skipif(not ENABLED, reason="chaos suite: run `make test-chaos` (takes minutes)")
@pytest.mark.timeout(BUDGET + 30)
def test_nothing_is_lost_under_crashes_outages_and_bad_data() -> None:
    cmd = [sys.executable, "-m", "tests.chaos", "--minutes", f"{MINUTES:g}", "--pg-outage", PG_OUTAGE]
    if SEED:
        cmd += ["--seed", SEED]
    # The run prints its seed, its fault timeline and its table; on failure also the diagnosis
    # and the daemons' last log lines (pytest shows them; `make test-chaos` runs with -s).
    result = subprocess.run(cmd, cwd=REPO, timeout=BUDGET, check=False)
    assert result.returncode == 0, "the chaos run failed: see its output above (seed, checks, logs)"
