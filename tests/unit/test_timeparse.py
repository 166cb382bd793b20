"""Dates and ages as an operator in the Dominican Republic types them (facusync.timeparse)."""

from __future__ import annotations

from datetime import datetime

import pytest

from facusync.errors import UsageError
from facusync.timeparse import parse_age, parse_moment

NOW = datetime(2026, 11, 28, 15, 30)


@pytest.mark.parametrize(("typed", "meant"), [
    ("01/11/2026 8:00", datetime(2026, 11, 1, 8, 0)),      # day first
    ("1/11/2026", datetime(2026, 11, 1)),
    ("01-11-2026 08:00:15", datetime(2026, 11, 1, 8, 0, 15)),
    ("01.11.2026", datetime(2026, 11, 1)),
    ("2026-11-01", datetime(2026, 11, 1)),                  # ISO: year first
    ("2026-11-01T08:00:00", datetime(2026, 11, 1, 8, 0)),
    ("2026/11/01 18:45", datetime(2026, 11, 1, 18, 45)),
    ("1 nov 2026", datetime(2026, 11, 1)),
    ("1 de noviembre de 2026 8:00", datetime(2026, 11, 1, 8, 0)),
    ("3 dic 2026", datetime(2026, 12, 3)),
    ("13/01/2026", datetime(2026, 1, 13)),
    ("7d", datetime(2026, 11, 21, 15, 30)),                 # an age counts back from now
    ("12h", datetime(2026, 11, 28, 3, 30)),
    (" 30m ", datetime(2026, 11, 28, 15, 0)),
])
def test_what_an_operator_types_means_one_moment(typed: str, meant: datetime) -> None:
    assert parse_moment(typed, NOW, "--since") == meant


@pytest.mark.parametrize(("typed", "complaint"), [
    ("1/11/26", "ambiguous"),        # 2026, or the 26th?
    ("11/01", "ambiguous"),          # which year, which reading?
    ("", "empty"),
    ("yesterday-ish 2026", "not a date"),
    ("soon", "not a date or an age"),
    ("31/02/2026", "not a date"),
    ("2026-11-01T08:00:00+02:00", "time zone"),
])
def test_unclear_input_is_refused_with_an_example(typed: str, complaint: str) -> None:
    with pytest.raises(UsageError) as caught:
        parse_moment(typed, NOW, "--since")
    message = str(caught.value)
    assert complaint in message
    assert message.startswith("--since")
    if complaint != "time zone":
        assert "01/11/2026 8:00" in message


def test_ages() -> None:
    assert parse_age("7d") == 7 * 86400
    assert parse_age("1.5h") == 5400
    assert parse_age("90") == 90
    assert parse_age("2026-11-01") is None


@pytest.mark.parametrize(("typed", "meant"), [
    ("nov 2026", datetime(2026, 11, 1)),
    ("noviembre de 2026", datetime(2026, 11, 1)),
    ("12/2026", datetime(2026, 12, 1)),
])
def test_a_month_without_a_day_means_its_first_day_not_todays(typed: str, meant: datetime) -> None:
    """dateutil fills a missing day from today: "nov 2026" typed on the 28th would mean the
    28th of November, and a purge would reach four weeks further than the operator meant."""
    assert parse_moment(typed, NOW, "--older-than") == meant


@pytest.mark.parametrize("typed", ["2026", "1999", " 2026 "])
def test_a_bare_year_is_not_read_as_seconds(typed: str) -> None:
    """`--older-than 2026` would otherwise mean 2026 seconds (34 minutes) ago, and purge every
    dead letter older than that instead of those from before 2026."""
    with pytest.raises(UsageError) as caught:
        parse_moment(typed, NOW, "--older-than")
    assert "ambiguous" in str(caught.value) and f"{typed.strip()}s" in str(caught.value)
