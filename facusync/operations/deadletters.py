"""Dead letters: list, show, retry and purge them, as an operator would.

Dead letters are stream entries the consumer could not write (or could not even read), kept
with the reason and the original payload. Once the cause is fixed (a column widened, a bad
row corrected at the source), a retry puts them back on the change stream; the consumer's
guard makes a replay harmless. The Redis side is DeadLetters in facusync.stream; here is what
an operator's request means: which letters, since when, how many.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from facusync.config import Config
from facusync.redisconn import Keys, connect_redis
from facusync.stream import DeadLetters
from facusync.timeparse import parse_age, parse_moment

Letter = tuple[str, dict[str, str]]  # stream entry id, the fields as they were sent + why


@contextlib.contextmanager
def opened(cfg: Config) -> Iterator[DeadLetters]:
    """The dead-letter stream, on a connection closed when done."""
    client = connect_redis(cfg)
    try:
        yield DeadLetters(client, Keys(cfg.redis_prefix))
    finally:
        client.close()


def failed_at(entry_id: str) -> str:
    """When the letter was written, in this host's local time (the id is in milliseconds)."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(int(entry_id.split("-")[0]) / 1000))


@dataclass(frozen=True)
class Page:
    """The oldest letters, and how many there are in all."""

    total: int
    letters: list[Letter]


def page(letters: DeadLetters, limit: int) -> Page:
    """The oldest ``limit`` letters first: they have waited longest for the operator."""
    return Page(total=letters.count(), letters=letters.entries(count=limit))


def show(letters: DeadLetters, entry_id: str) -> dict[str, object] | None:
    """One letter whole, its row as JSON rather than text; None when there is no such id."""
    found = letters.entries(entry_id, entry_id)
    if not found:
        return None
    fields: dict[str, object] = dict(found[0][1])
    if "row" in fields:
        with contextlib.suppress(ValueError):
            fields["row"] = json.loads(found[0][1]["row"])
    return {"id": entry_id, "failed": failed_at(entry_id), **fields}


@dataclass(frozen=True)
class Selection:
    """The letters an operator named; ``missing`` is the first id that names none."""

    letters: list[Letter] = field(default_factory=list)
    missing: str | None = None


def select(letters: DeadLetters, ids: Sequence[str] | None) -> Selection:
    """The letters with these ids, all of them when ``ids`` is None; stops at an unknown id."""
    if ids is None:
        return Selection(letters.entries())
    chosen: list[Letter] = []
    for entry_id in ids:
        found = letters.entries(entry_id, entry_id)
        if not found:
            return Selection(chosen, missing=entry_id)
        chosen.extend(found)
    return Selection(chosen)


def retry(letters: DeadLetters, chosen: list[Letter]) -> int:
    """Put the letters back on the change stream, as they were sent; how many."""
    if chosen:
        letters.requeue(chosen)
    return len(chosen)


def cutoff_ms(typed: str) -> int:
    """Unix milliseconds of --older-than. An age counts real seconds back from now: counted
    back on the wall clock, a clock change since would move it by an hour (and purge letters
    younger than asked). A date is this host's local time."""
    cutoff = parse_moment(typed, datetime.now(), "--older-than")  # refuses what is unclear
    age = parse_age(typed)
    if age is not None:
        return max(0, int((time.time() - age) * 1000))
    try:
        return max(0, int(cutoff.timestamp() * 1000))
    except (OverflowError, ValueError):  # before the first instant the calendar has here
        return 0


def older_than(letters: DeadLetters, typed: str | None) -> list[Letter]:
    """The letters written before AGE or date ``typed``; all of them when None."""
    if typed is None:
        return letters.entries()
    return letters.entries("-", f"{cutoff_ms(typed)}-0")


def purge(letters: DeadLetters, chosen: list[Letter]) -> int:
    """Delete the letters for good; how many."""
    if chosen:
        letters.purge(chosen)
    return len(chosen)
