"""Misbehaviour on request: the faults a test asks the running server for.

The harness rewrites a small JSON control file; each connection reads it again at each
login and each batch, so a fault takes effect without restarting the server.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .transport import Transport

log = logging.getLogger("standin.server")


@dataclass(frozen=True)
class Faults:
    """Misbehaviour requested by a test; read at each login and each batch."""

    refuse_logins: bool = False
    delay: float = 0.0
    drop_after_rows: int | None = None
    hang: bool = False
    # (column, shown as): the ERP team renamed a view column; the data stays where it is.
    rename_columns: tuple[tuple[str, str], ...] = ()
    # Seconds before answering a batch that reads rows (a loaded server, a slow link); logins,
    # TOP 0 and metadata queries answer at once.
    slow_reads: float = 0.0
    clock_offset: float = 0.0


class FaultFile:
    """Reads the control JSON again only when the file was replaced or changed."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._stamp: tuple[int, int, int] | None = None
        self._faults = Faults()
        self._lock = threading.Lock()

    def current(self) -> Faults:
        if self.path is None:
            return self._faults
        try:
            st = os.stat(self.path)
            stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            stamp = None
        with self._lock:
            if stamp != self._stamp:
                self._stamp = stamp
                self._faults = self._load() if stamp else Faults()
            return self._faults

    def _load(self) -> Faults:
        assert self.path is not None
        try:
            data: dict[str, Any] = json.loads(self.path.read_text() or "{}")
        except (OSError, ValueError):
            log.warning("unreadable control file %s, ignoring it", self.path)
            return Faults()
        drop = data.get("drop_after_rows")
        return Faults(
            refuse_logins=bool(data.get("refuse_logins", False)),
            delay=float(data.get("delay", 0.0) or 0.0),
            drop_after_rows=None if drop is None else int(drop),
            hang=bool(data.get("hang", False)),
            rename_columns=tuple((str(old), str(new))
                                 for old, new in (data.get("rename_columns") or {}).items()),
            slow_reads=float(data.get("slow_reads", 0.0) or 0.0),
            clock_offset=float(data.get("clock_offset", 0.0) or 0.0),
        )


def reads_rows(batch: str) -> bool:
    """A batch that reads rows of a table (what a slow server is slow at)."""
    text = batch.upper()
    return " FROM " in text and "TOP 0" not in text and "DM_EXEC_DESCRIBE" not in text


def stall(link: Transport, faults: FaultFile) -> None:
    """Stop answering while the 'hang' fault is set; keep draining the socket."""
    log.info("spid %d: hanging (fault)", link.spid)
    link.drain_while(lambda: faults.current().hang)
    log.info("spid %d: hang fault cleared, resuming", link.spid)
