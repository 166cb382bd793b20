"""`facusync`, the admin command: check, migrate, status, verify, reconcile, resync, dead-letter,
nocodb-setup.

Each subcommand lives in its own module with a ``register(subparsers)`` function that sets
``func(cfg, args) -> int``. Failures of a server print one line naming it and why, never a
traceback; configuration errors exit 78.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from facusync import __version__
from facusync.config import DEFAULT_ENV_FILE, admin_env_file, load_config
from facusync.errors import (
    EX_CONFIG,
    EX_INTERRUPTED,
    EX_SOFTWARE,
    AccessError,
    ConfigError,
    FacusyncError,
)
from facusync.logsetup import setup_logging

COMMAND_MODULES = (
    "facusync.commands.check",
    "facusync.commands.migrate",
    "facusync.commands.reconcile",
    "facusync.commands.verify",
    "facusync.commands.status",
    "facusync.commands.resync",
    "facusync.commands.deadletter",
    "facusync.nocodb_setup",
    "facusync.commands.convert_timezone",
)

log = logging.getLogger("facusync.cli")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="facusync", description="Administer the SQL Server → Redis → PostgreSQL sync."
    )
    parser.add_argument("--version", action="version", version=f"facusync {__version__}")
    parser.add_argument("--env-file", help="read variables from this file (the environment wins;"
                        f" default {DEFAULT_ENV_FILE} when it exists)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `facusync` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    standalone = getattr(args, "standalone", None)
    if standalone is not None:  # nocodb-setup: its own settings, not the services'
        return int(standalone(args))
    try:
        cfg = load_config(admin_env_file(args.env_file))
    except ConfigError as exc:
        print(f"facusync: {exc}", file=sys.stderr)
        return EX_CONFIG
    except AccessError as exc:  # not a wrong setting: the wrong user
        print(f"facusync: {exc}", file=sys.stderr)
        return exc.exit_code
    # The admin command talks to people: text on a terminal, JSON when asked or piped.
    setup_logging("WARNING" if cfg.log_level == "INFO" else cfg.log_level, cfg.log_format,
                  sys.stderr)
    try:
        code: int = args.func(cfg, args)
        return code
    except FacusyncError as exc:
        print(f"facusync {args.command}: {exc}", file=sys.stderr)
        return getattr(args, "failure_code", None) or exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EX_INTERRUPTED
    except Exception as exc:  # last resort: one line, the traceback only at debug level
        log.debug("unexpected error", exc_info=True)
        print(f"facusync {args.command}: unexpected error: {type(exc).__name__}: {exc}",
              file=sys.stderr)
        return EX_SOFTWARE


if __name__ == "__main__":
    sys.exit(main())
