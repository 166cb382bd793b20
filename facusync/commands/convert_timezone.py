"""`facusync convert-timezone --from ZONE`: move the stored times to the SOURCE_TIMEZONE now set.

For an installation whose SOURCE_TIMEZONE was wrong and has been corrected: the daemons refuse
to start while the zone recorded with the data differs (facusync.zone). Stop them, run this,
start them again. Every stored source time is re-read as ZONE local time and stored as
SOURCE_TIMEZONE local time, in one transaction; the planners' table is not touched.
"""

from __future__ import annotations

import argparse

from facusync.config import Config
from facusync.errors import EX_OK
from facusync.pgconn import connect_pg
from facusync.zone import convert_zone


def run(cfg: Config, args: argparse.Namespace) -> int:
    conn = connect_pg(cfg, application="facusync-convert-timezone")
    try:
        count = convert_zone(conn, cfg, args.from_zone)
    finally:
        conn.close()
    print(f"{count} row(s) moved from {args.from_zone} to {cfg.source_timezone} local time; "
          "start the daemons again, then `facusync verify` should report 0 differences")
    return EX_OK


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = sub.add_parser(
        "convert-timezone",
        help="after correcting SOURCE_TIMEZONE: move the stored times to the new zone",
        description="Re-read every stored source time as --from local time and store it as "
                    "SOURCE_TIMEZONE local time, in one transaction. Stop facusync-producer "
                    "and facusync-consumer first; they refuse to run until this is done.")
    parser.add_argument("--from", dest="from_zone", required=True, metavar="ZONE",
                        help="the zone the times were stored with (the daemons' error names it)")
    parser.set_defaults(func=run)
