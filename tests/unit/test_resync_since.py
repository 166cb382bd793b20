"""`facusync resync --since` reads what an operator types, like `dead-letter purge --older-than`."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from facusync.config import config_from_mapping
from facusync.errors import UsageError
from facusync.operations.resync import since_target
from tests.unit.test_config import GOOD

CFG = config_from_mapping(dict(GOOD, SOURCE_TIMEZONE="America/Santo_Domingo"))


@pytest.mark.parametrize(("typed", "meant"), [
    ("01/11/2026 8:00", datetime(2026, 11, 1, 8, 0)),  # day first: the first of November
    ("2026-11-01", datetime(2026, 11, 1)),
    ("2026-11-01T08:00:00", datetime(2026, 11, 1, 8, 0)),  # what --since took before
    ("1 nov 2026", datetime(2026, 11, 1)),
])
def test_since_takes_a_date_as_typed(typed: str, meant: datetime) -> None:
    assert since_target(typed, CFG) == meant


def test_since_takes_an_age_on_the_sources_clock() -> None:
    source_now = datetime.now(CFG.tz).replace(tzinfo=None)
    target = since_target("7d", CFG)
    assert abs(target - (source_now - timedelta(days=7))) < timedelta(seconds=5)


@pytest.mark.parametrize(("typed", "complaint"), [
    ("1/11/26", "ambiguous"),
    ("yesterday", "not a date or an age"),
    ("2026-11-01T08:00:00+02:00", "time zone"),
])
def test_since_refuses_what_is_unclear(typed: str, complaint: str) -> None:
    with pytest.raises(UsageError, match=complaint) as caught:
        since_target(typed, CFG)
    assert "--since" in str(caught.value)
