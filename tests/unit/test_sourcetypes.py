"""The type rules and the text parsers behind situation 9 (facusync.sourcetypes)."""

from __future__ import annotations

from datetime import UTC, datetime, time

import pytest

from facusync.sourcetypes import parse_datetimeoffset, parse_time, type_problems


def test_time_text_is_read_to_the_microsecond_rounding_like_postgresql() -> None:
    assert parse_time("13:14:15.1234567") == time(13, 14, 15, 123457)
    assert parse_time("13:14:15.1234565") == time(13, 14, 15, 123456)  # half to even
    assert parse_time("18:00:00") == time(18, 0)
    assert parse_time("07:08:09.9999996") == time(7, 8, 10)
    with pytest.raises(ValueError):
        parse_time("25 o'clock")


def test_datetimeoffset_text_becomes_its_utc_instant() -> None:
    assert parse_datetimeoffset("2026-03-10 23:30:00.2500000 -04:00") == \
        datetime(2026, 3, 11, 3, 30, 0, 250000, tzinfo=UTC)
    assert parse_datetimeoffset("2026-11-01 01:30:00 +05:45") == \
        datetime(2026, 10, 31, 19, 45, tzinfo=UTC)
    with pytest.raises(ValueError):
        parse_datetimeoffset("2026-11-01 01:30:00")  # no offset: not a datetimeoffset


def test_type_rules_name_every_column_that_would_be_stored_wrong() -> None:
    pg = {"conduce": "character varying", "ultima_modificacion": "timestamp with time zone",
          "firma": "text", "hora": "time without time zone", "dto": "timestamp without time zone",
          "x": "text", "guid": "uuid"}
    view = {"CONDUCE": "nvarchar(30)", "ULTIMA_MODIFICACION": "datetime", "FIRMA": "varbinary(64)",
            "HORA": "time(7)", "DTO": "datetimeoffset(7)", "X": "xml", "GUID": "uniqueidentifier"}
    problems = type_problems(view, pg, "CONDUCE", "ULTIMA_MODIFICACION", "datos_vista")
    assert len(problems) == 3
    assert any("FIRMA is varbinary(64)" in p and "bytea" in p for p in problems)
    assert any("DTO is datetimeoffset(7)" in p for p in problems)
    assert any("X is xml" in p and "cannot sync" in p for p in problems)
    wrong_version = type_problems({"CONDUCE": "int", "ULTIMA_MODIFICACION": "datetimeoffset(7)"},
                                  pg, "CONDUCE", "ULTIMA_MODIFICACION", "datos_vista")
    assert any("MSSQL_KEY_COLUMN" in p for p in wrong_version)
    assert any("MSSQL_VERSION_COLUMN" in p for p in wrong_version)
