"""Reconcile: find what polling cannot see (deletes, changes that did not bump the version).

An operation beside verify, resync and the dead letters: `facusync reconcile` (what the
reconcile timer runs) only parses, calls Reconciler.run() and prints.

How it works
    The whole view is read in key order and merged with datos_vista (see compare.py), values
    compared (not just versions). For each conduce:

    * missing in PostgreSQL, soft-deleted there, or with different values -> an upsert is
      queued (the producer's path and stream). This repairs changes that did not bump
      ULTIMA_MODIFICACION, rows lost downstream, and hand edits of datos_vista. When
      PostgreSQL holds a *newer* version than the view (a restore from a backup, a hand
      edit), the monotonic guard would refuse the view's row forever: that upsert carries
      ``expect`` = the version compared against, and the consumer replaces the row only if
      PostgreSQL still holds it, so a change polling delivered meanwhile is never undone. A row whose
      fingerprint already matches and that sits in the dead-letter stream is left to the
      operator (`facusync dead-letter retry`), so reconcile never dead-letters it twice;
    * equal in PostgreSQL but with a missing or stale fingerprint (Redis lost its data)
      -> only the fingerprint is restored, nothing is queued;
    * active in PostgreSQL but gone from the view -> a tombstone, after re-reading those keys
      from the view once more at the end, so a row inserted during the scan is not mistaken
      for a deleted one.

    Comparing with PostgreSQL, rather than with the fingerprints alone, also catches what the
    fingerprints cannot know about: a row that never reached PostgreSQL or was changed there.

Why it cannot race the producer
    Reconcile holds the producer's source lock (facusync.lock) for the whole run. The producer
    takes the same lock for each cycle (read + append), so the two never interleave: every
    entry in the stream reflects a read that happened after the reads of all entries before
    it. A stale reconcile read can therefore never be appended after a fresher producer read
    of the same row, and a tombstone is appended only after the final re-read proved the key
    absent. The producer simply skips cycles while reconcile runs (it logs why); its next
    cycle reads from its watermark minus the overlap, so nothing is skipped.

Mass-delete guard
    A broken view or a permissions change can make the view look empty. If more than
    RECONCILE_MAX_DELETE_PCT percent of PostgreSQL's active rows would be tombstoned, nothing
    is tombstoned and the run fails with a clear message unless ``--force`` is given.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from datetime import datetime

import psycopg2.extensions
import redis

from facusync.columns import discover_columns
from facusync.compare import PgRow, chunked, iter_pg_rows, iter_view_rows, merge
from facusync.config import Config
from facusync.enqueue import (
    EncodedRow,
    append_deletes,
    append_upserts,
    encode,
    restore_fingerprints,
)
from facusync.errors import EX_REFUSED, EX_TEMPFAIL, FacusyncError
from facusync.lock import LockLost, RedisLock
from facusync.message import format_version, key_identity
from facusync.pgconn import connect_pg
from facusync.redisconn import Keys, connect_redis
from facusync.source import ColumnMap, ViewSource
from facusync.stream import DeadLetters, Guard, Stream

log = logging.getLogger("facusync.reconcile")

CHUNK = 2000
LOCK_TTL = 30.0  # kept alive by the lock's own thread while a slow sorted read runs


class MassDeleteRefused(FacusyncError):
    """Too many tombstones at once: probably a broken view, not real deletes."""

    exit_code = EX_REFUSED


class LockBusy(FacusyncError):
    """The producer held the lock for longer than we were willing to wait."""

    exit_code = EX_TEMPFAIL


@dataclass
class ReconcileResult:
    """What one run found and did."""

    source_rows: int = 0
    pg_active_rows: int = 0
    upserts: int = 0
    replaced_newer: int = 0  # of the upserts: PostgreSQL held a newer version than the view
    undeletes: int = 0
    fingerprints_restored: int = 0
    tombstones: int = 0
    delete_candidates: int = 0
    left_in_dead_letters: int = 0
    refused: bool = False
    duration_s: float = 0.0
    finished_at: float = 0.0


class Reconciler:
    """One reconcile run; create, call run(), discard."""

    def __init__(self, cfg: Config, *, force: bool = False, lock_wait: float = 300.0,
                 dry_run: bool = False) -> None:
        self.cfg = cfg
        self.force = force
        self.lock_wait = lock_wait
        self.dry_run = dry_run
        self.keys = Keys(cfg.redis_prefix)

    def run(self) -> ReconcileResult:
        t0 = time.monotonic()
        client = connect_redis(self.cfg)
        source = ViewSource(self.cfg)
        conn = connect_pg(self.cfg, application="facusync-reconcile")
        lock = RedisLock(client, self.keys.source_lock, ttl=LOCK_TTL, owner="reconcile")
        try:
            cols = discover_columns(self.cfg, source)
            if not lock.acquire(wait=self.lock_wait, priority=True):
                raise LockBusy(f"the producer held the source lock for over {self.lock_wait:.0f} s "
                               f"(holder: {lock.holder()}); try again later")
            try:
                result = self._scan(client, source, conn, cols, lock)
            except LockLost as exc:
                raise LockBusy(f"{exc}: reconcile stopped (what it queued before is valid); "
                               "run it again") from None
        finally:
            lock.release()
            conn.close()
            source.close()
        result.duration_s = round(time.monotonic() - t0, 2)
        result.finished_at = time.time()
        self._record(client, result)
        client.close()
        return result

    def _scan(self, client: redis.Redis, source: ViewSource,
              conn: psycopg2.extensions.connection, cols: ColumnMap,
              lock: RedisLock) -> ReconcileResult:
        result = ReconcileResult()
        low_water = Stream(client, self.keys).watermark()
        dead_keys = DeadLetters(client, self.keys).keys_of_rows()
        pending: list[tuple[EncodedRow, PgRow | None]] = []
        candidates: list[tuple[str, str]] = []
        for key, v, p in merge(iter_view_rows(source, cols), iter_pg_rows(conn, self.cfg, cols)):
            if v is not None:
                result.source_rows += 1
            if p is not None and not p.deleted:
                result.pg_active_rows += 1
            if v is None:
                if p is not None and not p.deleted:
                    candidates.append((key, format_version(p.version)))
                continue
            pending.append((v, p))
            if len(pending) >= CHUNK:
                self._flush(client, pending, dead_keys, low_water, result, lock)
                pending = []
        self._flush(client, pending, dead_keys, low_water, result, lock)
        result.delete_candidates = len(candidates)
        self._tombstones(client, source, cols, candidates, low_water, result, lock)
        return result

    @staticmethod
    def _guard(lock: RedisLock) -> Guard:
        """Every write checks, in its own script, that the lock is still ours."""
        lock.extend()  # fails early (before reading fingerprints) if the renewer lost it
        return Guard(lock.key, lock.token)

    def _flush(self, client: redis.Redis, rows: list[tuple[EncodedRow, PgRow | None]],
               dead_keys: set[str], low_water: datetime | None, result: ReconcileResult,
               lock: RedisLock) -> None:
        if not rows:
            return
        guard = self._guard(lock)
        known = Stream(client, self.keys).known_digests([v.fp_field for v, _ in rows])
        send: list[EncodedRow] = []
        replace: dict[str, EncodedRow] = {}  # PostgreSQL holds a newer version than the view
        newer: dict[str, datetime] = {}
        restore: dict[str, str] = {}
        for (v, p), fp_text in zip(rows, known, strict=True):
            if p is not None and not p.deleted and p.encoded.digest == v.digest:
                if fp_text != v.digest:
                    restore[v.fp_field] = v.digest
                continue
            if fp_text == v.digest and (v.key or "") in dead_keys:
                result.left_in_dead_letters += 1
                continue
            if p is not None and p.deleted:
                result.undeletes += 1
            if p is not None and v.key is not None and v.version is not None \
                    and p.version > v.version:
                replace[v.key] = v
                newer[v.key] = p.version
            else:
                send.append(v)
        result.upserts += len(send) + len(replace)
        result.replaced_newer += len(replace)
        result.fingerprints_restored += len(restore)
        if self.dry_run:
            return
        restore_fingerprints(client, self.keys, restore, guard)
        if send:
            append_upserts(client, self.keys, send, low_water=low_water, advance_watermark=False,
                           src="reconcile", force=True, guard=guard)
        if replace:
            # The view is the authority on what it holds now: replace the newer version, but
            # only if PostgreSQL still holds the one compared here (message.py, ``expect``).
            log.warning("PostgreSQL holds a newer version than the view (restored from a "
                        "backup? edited by hand?); replacing it with the view's",
                        extra={"keys": sorted(replace)[:20], "count": len(replace)})
            append_upserts(client, self.keys, list(replace.values()), low_water=low_water,
                           advance_watermark=False, src="reconcile", force=True, expect=newer,
                           guard=guard)

    def _tombstones(self, client: redis.Redis, source: ViewSource, cols: ColumnMap,
                    candidates: list[tuple[str, str]], low_water: datetime | None,
                    result: ReconcileResult, lock: RedisLock) -> None:
        if not candidates:
            return
        limit = result.pg_active_rows * self.cfg.reconcile_max_delete_pct / 100.0
        if len(candidates) > limit and not self.force:
            result.refused = True
            result.finished_at = time.time()  # a refused run is a run: status shows when
            pct = 100.0 * len(candidates) / max(1, result.pg_active_rows)
            self._record(client, result)
            raise MassDeleteRefused(
                f"refusing to tombstone {len(candidates)} of {result.pg_active_rows} rows "
                f"({pct:.1f}% > RECONCILE_MAX_DELETE_PCT={self.cfg.reconcile_max_delete_pct:g}%): "
                "the view may be broken or its permissions changed. Check the view in SQL Server; "
                "if the deletes are real, run `facusync reconcile --force`"
            )
        gone: list[tuple[str, str]] = []
        for part in chunked(candidates, 500):
            lock.extend()
            # SQL Server finds 'C-1' for 'c-1 ' (CI_AS); so do we: a conduce whose spelling
            # changed is renamed by its upsert (sql/004), never tombstoned with its note.
            still = {key_identity(str(r[cols.key_index]))
                     for r in source.read_keys(cols, [k for k, _ in part])}
            gone.extend((k, ver) for k, ver in part if key_identity(k) not in still)
            reappeared = [k for k, _ in part if key_identity(k) in still]
            if reappeared and not self.dry_run:
                rows = [encode(cols.names, r, cols.key_index, cols.version_index)
                        for r in source.read_keys(cols, reappeared)]
                result.upserts += append_upserts(
                    client, self.keys, rows, low_water=low_water, advance_watermark=False,
                    src="reconcile", guard=self._guard(lock)).queued
        result.tombstones = len(gone)
        if gone and not self.dry_run:
            for part in chunked(gone, CHUNK):
                append_deletes(client, self.keys, list(part), low_water=low_water,
                               guard=self._guard(lock))

    def _record(self, client: redis.Redis, result: ReconcileResult) -> None:
        fields = {k: str(v) for k, v in asdict(result).items()}
        fields["dry_run"] = str(self.dry_run)
        if not self.dry_run:
            Stream(client, self.keys).report_reconcile(fields)
        log.info("reconcile finished", extra=asdict(result))
