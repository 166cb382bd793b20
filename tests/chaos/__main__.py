"""`python -m tests.chaos --minutes N [--seed S]`: one chaos run; exit 0 only if nothing was lost."""

from __future__ import annotations

import argparse
import os
import secrets
import sys
import time

# The stand-in, the workload and the daemons all read "local time": make it the production
# zone (the SOURCE_TIMEZONE default) for every process of the run, whatever the host's is.
os.environ["TZ"] = os.environ.get("FACUSYNC_CHAOS_TZ", "America/Santo_Domingo")
time.tzset()

from tests.chaos.faults import MIN_SECONDS  # noqa: E402  (after the time zone is set)
from tests.chaos.suite import Options, run  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.chaos", description=__doc__)
    parser.add_argument("--minutes", type=float, default=3.0, help="length of the chaos (default 3)")
    parser.add_argument("--seed", type=int, default=None,
                        help="replay the fault schedule of a previous run (default: a new seed)")
    parser.add_argument("--pg-outage", type=float, default=30.0, metavar="SECONDS",
                        help="how long PostgreSQL stays stopped each time (default 30)")
    parser.add_argument("--rate", type=float, default=8.0, help="ERP changes per second (default 8)")
    parser.add_argument("--seed-rows", type=int, default=2000, help="rows in the view at start")
    parser.add_argument("--restart-sec", type=float, default=5.0,
                        help="RestartSec of the emulated units (default 5, as in systemd/)")
    parser.add_argument("--sync-overlap", type=float, default=60.0, metavar="SECONDS",
                        help="SYNC_OVERLAP of the daemons (default 60; rows are committed 20 s "
                             "late, so 0 shows what the suite reports when polling loses rows)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory after a pass")
    args = parser.parse_args(argv)
    if args.minutes * 60 < MIN_SECONDS:
        parser.error(f"--minutes {args.minutes:g} is too short: every fault kind runs in every "
                     f"run, which takes at least {MIN_SECONDS / 60:.1f} minutes (use 3 or more)")
    seed = args.seed if args.seed is not None else secrets.randbelow(1_000_000)
    return run(Options(minutes=args.minutes, seed=seed, pg_outage=args.pg_outage, rate=args.rate,
                       seed_rows=args.seed_rows, restart_sec=args.restart_sec,
                       sync_overlap=args.sync_overlap, keep=args.keep))


if __name__ == "__main__":
    sys.exit(main())
