"""Logging: one JSON object per line on stdout for journald, readable text on a terminal.

Structured values (counts, durations, watermark, lag) travel as ``extra=`` fields so they can
be filtered with ``journalctl -o cat | jq`` without parsing prose.
"""

from __future__ import annotations

import logging
import sys
from datetime import datetime
from typing import Any

try:  # python-json-logger 3.x moved the class; Debian 12 ships 2.0.1
    from pythonjsonlogger.json import JsonFormatter
except ImportError:  # pragma: no cover - depends on the installed version
    from pythonjsonlogger.jsonlogger import JsonFormatter  # type: ignore[attr-defined,no-redef]

_STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}


def iso_time(record: logging.LogRecord) -> str:
    """The record's time in ISO 8601 with the machine's UTC offset, to the millisecond:
    a line read on another machine, or next to SQL Server's local times, is unambiguous."""
    return datetime.fromtimestamp(record.created).astimezone().isoformat(timespec="milliseconds")


class _JsonFormatter(JsonFormatter):  # type: ignore[misc]
    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return iso_time(record)


class _TextFormatter(logging.Formatter):
    """Human text with the structured extras appended as key=value."""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return iso_time(record)

    def format(self, record: logging.LogRecord) -> str:
        base = super().format(record)
        extras = {k: v for k, v in record.__dict__.items() if k not in _STANDARD}
        if extras:
            base += "  " + " ".join(f"{k}={v}" for k, v in extras.items())
        return base


def setup_logging(level: str = "INFO", fmt: str = "auto", stream: Any = None) -> None:
    """Configure the root logger once per process (daemons and CLI alike)."""
    stream = stream or sys.stdout
    handler = logging.StreamHandler(stream)
    use_text = fmt == "text" or (fmt == "auto" and hasattr(stream, "isatty") and stream.isatty())
    if use_text:
        handler.setFormatter(_TextFormatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    else:
        handler.setFormatter(
            _JsonFormatter(
                "%(asctime)s %(levelname)s %(name)s %(message)s",
                rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
                json_ensure_ascii=False,
            )
        )
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    for noisy in ("urllib3", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
