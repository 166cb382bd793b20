"""Dead letters: what a refused stream entry looks like in the dead-letter stream.

A dead letter keeps the entry's original fields (so it can be inspected and re-queued as it
was) plus why and when it failed: ``error`` (PostgreSQL's first line, or the contract
violation), ``original_id``, ``consumer``, ``failed_at`` (Unix seconds) and ``deliveries``.
Bad data never stops the line (DESIGN invariant 4): the entry is acknowledged and deleted
from the change stream in the same MULTI/EXEC that writes its dead letter.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

META_FIELDS = ("error", "original_id", "consumer", "failed_at", "deliveries")


def dead_letter_fields(
    original: Mapping[bytes | str, bytes | str],
    *,
    error: str,
    original_id: str,
    consumer: str,
    deliveries: int,
) -> dict[str, bytes | str]:
    """The dead-letter entry for one refused stream entry."""
    fields: dict[str, bytes | str] = {}
    for name, value in original.items():
        key = name.decode("utf-8", "replace") if isinstance(name, bytes) else name
        if key not in META_FIELDS:
            fields[key] = value
    fields.update(
        error=error[:2000],
        original_id=original_id,
        consumer=consumer,
        failed_at=f"{time.time():.3f}",
        deliveries=str(deliveries),
    )
    return fields
