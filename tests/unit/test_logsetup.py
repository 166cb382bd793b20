"""Logging: one JSON object per line for journald, with structured extras; text on request."""

from __future__ import annotations

import io
import json
import logging
from datetime import UTC, datetime

from facusync.logsetup import setup_logging


def test_json_lines_carry_the_standard_and_structured_fields() -> None:
    out = io.StringIO()
    setup_logging("INFO", "json", out)
    log = logging.getLogger("facusync.test")
    log.info("cycle: %d read", 42, extra={"queued": 3, "watermark": "2026-11-27T12:00:00", "lag_s": 1.5})
    log.debug("not shown at INFO")
    lines = out.getvalue().splitlines()
    assert len(lines) == 1
    record = json.loads(lines[0])
    assert record["level"] == "INFO" and record["logger"] == "facusync.test"
    assert record["message"] == "cycle: 42 read" and record["time"]
    assert record["queued"] == 3 and record["watermark"] == "2026-11-27T12:00:00" and record["lag_s"] == 1.5


def test_text_format_for_people_and_level_filter() -> None:
    out = io.StringIO()
    setup_logging("WARNING", "text", out)
    log = logging.getLogger("facusync.test")
    log.info("hidden")
    log.warning("Redis unavailable", extra={"cause": "connection refused"})
    text = out.getvalue()
    assert "hidden" not in text
    assert "WARNING" in text and "Redis unavailable" in text and "cause=connection refused" in text
    assert not text.lstrip().startswith("{")


def test_auto_is_json_when_not_a_terminal() -> None:
    out = io.StringIO()  # not a tty, like journald's pipe
    setup_logging("INFO", "auto", out)
    logging.getLogger("facusync.test").info("ñandú")
    assert json.loads(out.getvalue())["message"] == "ñandú"


def test_times_carry_their_utc_offset() -> None:
    """A journal line's time must not depend on knowing the host's zone (issue 18)."""
    out = io.StringIO()
    setup_logging("INFO", "json", out)
    logging.getLogger("facusync.test").info("tick")
    stamp = datetime.fromisoformat(json.loads(out.getvalue())["time"])
    assert stamp.tzinfo is not None
    assert abs((stamp - datetime.now(UTC)).total_seconds()) < 60
    text = io.StringIO()
    setup_logging("INFO", "text", text)
    logging.getLogger("facusync.test").info("tock")
    assert datetime.fromisoformat(text.getvalue().split()[0]).tzinfo is not None
