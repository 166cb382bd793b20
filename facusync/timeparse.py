"""Times and ages as an operator types them, read the way the Dominican Republic writes dates.

`resync --since` and `dead-letter purge --older-than` are typed by people, not programs: a
sysadmin in Santo Domingo writes "01/11/2026 8:00" for the first of November (day first),
a developer writes "2026-11-01", anyone may write "7d". python-dateutil reads the many shapes
(Spanish and English month names included); this module adds the rules that make a typed
date mean one thing only:

* an age (``30m``, ``12h``, ``7d``, ``2w``) counts back from now;
* a date that starts with a four-digit year is year-month-day (ISO 8601);
* any other date is day first (``01/11/2026`` is 1 November) and must carry a four-digit
  year, so ``1/11/26`` or ``11/01`` (which reading is meant?) is refused with an example of
  what to type instead;
* a time zone in the text is refused: the source's times are local wall times.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import ClassVar

from dateutil import parser as dateparser

from facusync.errors import UsageError

_AGE = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw]?)$")
_AGE_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_YEAR_FIRST = re.compile(r"^\d{4}[-/.]")
_BARE_YEAR = re.compile(r"^\d{4}$")
_FOUR_DIGIT_YEAR = re.compile(r"(?<!\d)\d{4}(?!\d)")
EXAMPLES = "for example 01/11/2026 8:00 (day first), 2026-11-01 08:00 or 7d"


class _SpanishAndEnglish(dateparser.parserinfo):
    """Month and weekday names in Spanish as well as English ("1 nov 2026", "3 de dic")."""

    # dateutil's stubs allow at most three names a month; the parser itself takes any number.
    MONTHS: ClassVar[list[tuple[str, ...]]] = [  # type: ignore[assignment,misc]
        ("Jan", "January", "ene", "enero"), ("Feb", "February", "febrero"),
        ("Mar", "March", "marzo"), ("Apr", "April", "abr", "abril"), ("May", "mayo"),
        ("Jun", "June", "junio"), ("Jul", "July", "julio"), ("Aug", "August", "ago", "agosto"),
        ("Sep", "Sept", "September", "septiembre", "setiembre"), ("Oct", "October", "octubre"),
        ("Nov", "November", "noviembre"), ("Dec", "December", "dic", "diciembre"),
    ]
    JUMP: ClassVar[list[str]] = [  # type: ignore[misc]
        *dateparser.parserinfo.JUMP, "de", "del", "a", "las"]


_PARSER_INFO = _SpanishAndEnglish(dayfirst=True)


def parse_age(text: str) -> float | None:
    """Seconds in an age like ``30m``, ``12h``, ``7d``; None when the text is not an age."""
    match = _AGE.match(text.strip().lower())
    if not match:
        return None
    return float(match.group(1)) * _AGE_UNIT_SECONDS[match.group(2)]


def parse_moment(text: str, now: datetime, option: str) -> datetime:
    """The naive local time `text` means (an age counts back from `now`); UsageError if unclear.

    `option` names the command-line option in the error, so the operator knows what to fix.
    """
    typed = text.strip()
    age = parse_age(typed)
    if age is not None and _BARE_YEAR.match(typed):
        raise UsageError(f"{option} {typed!r} is ambiguous: write {typed}s for seconds, or "
                         f"01/01/{typed} for the year; {EXAMPLES}")
    if age is not None:
        try:
            return now - timedelta(seconds=age)
        except OverflowError:
            raise UsageError(f"{option} {typed!r} reaches back past the calendar: give a shorter "
                             f"age, {EXAMPLES}") from None
    if not typed:
        raise UsageError(f"{option} is empty: give a date, {EXAMPLES}")
    if not any(ch.isdigit() for ch in typed):
        raise UsageError(f"{option} {typed!r} is not a date or an age: {EXAMPLES}")
    year_first = bool(_YEAR_FIRST.match(typed))
    if not year_first and not _FOUR_DIGIT_YEAR.search(typed):
        raise UsageError(f"{option} {typed!r} is ambiguous: write the year with four digits, "
                         f"{EXAMPLES}")
    try:
        # What the text leaves out is the start of the year, not today's day ("nov 2026").
        moment = dateparser.parse(typed, parserinfo=_PARSER_INFO, dayfirst=not year_first,
                                  yearfirst=year_first, default=datetime(now.year, 1, 1))
    except (ValueError, OverflowError):
        raise UsageError(f"{option} {typed!r} is not a date or an age: {EXAMPLES}") from None
    if moment.tzinfo is not None:
        raise UsageError(f"{option} {typed!r} has a time zone: give the source's local time "
                         "without one")
    return moment
