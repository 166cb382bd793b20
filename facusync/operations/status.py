"""Status: gather what the daemons report and what PostgreSQL holds, and judge it.

An operation beside verify and reconcile so that `facusync status`, the demo and the tests
read the same facts and the same verdict; the command only prints them. The verdict:

* down: Redis or PostgreSQL cannot be reached, the producer has never reported, was stopped,
  or has been silent for a long time (10 intervals, at least 5 minutes), or changes are
  waiting and no consumer is alive.
* degraded: lag above LAG_WARN, dead letters present, a daemon silent longer than its
  interval (plus a grace period: it is then shown as stale), the producer backing off (e.g.
  SQL Server unreachable) or paused by backpressure, or reconcile overdue: its last run is
  older than two RECONCILE_INTERVALs, it never ran on a schema older than that, or it refused
  to tombstone (mass-delete guard).
* warnings (the exit code unchanged): rows dated ahead of SQL Server's clock (synced, but
  their date is wrong at the source); changes arriving later after their version than
  SYNC_OVERLAP allows (a writer's clock behind SQL Server's, or long transactions).

Every number in the gathered data is a JSON number (times are Unix seconds), never a string.
"Lag" is the age of the oldest change still waiting in the queue (0 when the queue is empty):
a quiet source is not a late sync.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg2
import redis

from facusync import control
from facusync.config import Config
from facusync.errors import EX_DEGRADED, EX_DOWN, EX_OK, FacusyncError
from facusync.pgconn import connect_pg, describe_pg_error
from facusync.redisconn import Keys, connect_redis, describe_redis_error
from facusync.stream import State, Stream, entry_age
from facusync.zone import mismatch_advice

HEALTHY, DEGRADED, DOWN = EX_OK, EX_DEGRADED, EX_DOWN  # exit codes and health levels
CONSUMER_SILENT_S = 60.0
PRODUCER_GRACE_S = 30.0  # beyond its interval, a silent producer is stale
# Stats fields that hold text; every other one holds a number (or a flag) written as text.
TEXT_FIELDS = frozenset({"state", "cause", "status_line", "watermark", "host", "future_example"})


@dataclass
class Health:
    """The verdict: an exit code (0 healthy, 1 degraded, 2 down), why, and what to fix."""

    code: int = HEALTHY
    reasons: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def worse(self, code: int, reason: str) -> None:
        self.code = max(self.code, code)
        self.reasons.append(reason)

    def warn(self, reason: str) -> None:
        """Something to fix that loses nothing: shown, but the exit code stays."""
        self.warnings.append(reason)


def _typed(name: str, text: str) -> Any:
    """A stats field as JSON wants it: a number, a flag, None for empty, else the text."""
    if name in TEXT_FIELDS:
        return text
    if text in ("True", "False"):
        return text == "True"
    if text == "":
        return None
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def _typed_stats(stats: dict[str, str]) -> dict[str, Any]:
    return {name: _typed(name, value) for name, value in stats.items()}


def number(d: dict[str, Any], key: str) -> float | None:
    """A stats field as a number, None when absent or not a number."""
    try:
        return float(d[key])
    except (KeyError, TypeError, ValueError):
        return None


def ago(seconds: float | None) -> str:
    """An age as a person reads it: seconds, minutes or hours ago; never for None."""
    if seconds is None:
        return "never"
    if seconds < 120:
        return f"{seconds:.0f} s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min ago"
    return f"{seconds / 3600:.1f} h ago"


def _percentile(values: list[float], pct: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    idx = min(len(ordered) - 1, max(0, round(pct / 100.0 * (len(ordered) - 1))))
    return ordered[idx]


def gather_redis(cfg: Config, client: redis.Redis, now: float) -> dict[str, Any]:
    """What the daemons last said about themselves, and the queue as it is now."""
    stream = Stream(client, Keys(cfg.redis_prefix))
    out: dict[str, Any] = {"producer": _typed_stats(stream.producer_stats())}
    consumers = {name: _typed_stats(stats) for name, stats in stream.consumer_stats().items()}
    queue = stream.queue()
    out["queue"] = {
        "length": queue.length,
        "pending": queue.pending,
        "undelivered": max(0, queue.length - queue.pending),
        "pending_by_consumer": queue.pending_by_consumer,
        "oldest_age_s": 0.0 if queue.oldest_id is None else round(entry_age(queue.oldest_id, now), 1),
        "dead_letters": queue.dead_letters,
    }
    for name, stats in consumers.items():
        stats["pending"] = queue.pending_by_consumer.get(name, 0)
        stats["alive"] = _consumer_alive(stats, now)
    out["consumers"] = consumers
    out["reconcile"] = _typed_stats(stream.reconcile_stats())
    batches = stream.batch_samples()
    recent = [b for b in batches if now - b[0] <= 60.0]
    out["performance"] = {
        "batches_last_60s": len(recent),
        "rows_per_s_last_60s": round(sum(b[2] for b in recent) / 60.0, 1),
        "batch_ms_p50": _percentile([b[1] for b in batches], 50),
        "batch_ms_p95": _percentile([b[1] for b in batches], 95),
        "batches_sampled": len(batches),
    }
    return out


def gather_pg(cfg: Config) -> dict[str, Any]:
    """What is committed: the rows, the durable watermark, when the consumer last wrote."""
    conn = connect_pg(cfg, application="facusync-status", bounded=True)
    try:
        with conn.cursor() as cur:
            cur.execute(
                f'SELECT count(*), count(*) FILTER (WHERE eliminado_en_origen) FROM "{cfg.pg_table_vista}"'
            )
            rows, deleted = cur.fetchone() or (0, 0)
            row = control.status(cur)
            # When the schema was created: how long reconcile has had to run at least once.
            cur.execute("SELECT extract(epoch FROM now() - min(applied_at)) FROM schema_migrations")
            schema_age = (cur.fetchone() or (None,))[0]
            zone = control.zone_any_schema(cur)
        conn.rollback()
    except psycopg2.Error as exc:
        raise FacusyncError(f"PostgreSQL: {describe_pg_error(exc)}") from None
    finally:
        conn.close()
    watermark, newest, last_commit, last_consumer, newest_age, commit_age = row
    return {
        "rows": int(rows),
        "soft_deleted": int(deleted),
        "committed_watermark": watermark.isoformat() if isinstance(watermark, datetime) else None,
        "newest_committed_change": newest.isoformat() if isinstance(newest, datetime) else None,
        "newest_change_age_s": round(float(newest_age), 1) if newest_age is not None else None,
        "last_commit_at": last_commit.isoformat() if isinstance(last_commit, datetime) else None,
        "last_commit_age_s": round(float(commit_age), 1) if commit_age is not None else None,
        "last_consumer": last_consumer,
        "schema_age_s": round(float(schema_age), 1) if schema_age is not None else None,
        "source_timezone": zone,
    }


def _consumer_alive(stats: dict[str, Any], now: float) -> bool:
    return stats.get("state") != State.STOPPED and (number(stats, "heartbeat") or 0) > now - CONSUMER_SILENT_S


def producer_state(producer: dict[str, Any], cfg: Config, now: float) -> str:
    """What the producer is doing, as far as we can tell: its own word, or stale if silent."""
    state = str(producer.get("state") or "never started")
    beat = number(producer, "heartbeat")
    if state == State.STOPPED or beat is None:
        return state
    interval = number(producer, "interval") or cfg.sync_interval
    return "stale" if now - beat > interval + PRODUCER_GRACE_S else state


def reconcile_overdue(cfg: Config, reconcile: dict[str, Any], schema_age: float | None,
                      now: float) -> str | None:
    """Why reconcile needs attention (never ran, late, or refused), or None."""
    every = cfg.reconcile_interval
    finished = number(reconcile, "finished_at") or None  # 0: a refused run of an older release
    if finished is None:
        if schema_age is not None and schema_age > 2 * every:
            return (f"reconcile has never run (no record in Redis) on a schema created "
                    f"{ago(schema_age)}: start its timer with `sudo systemctl enable --now "
                    "facusync-reconcile.timer`")
        return None
    if now - finished > 2 * every:
        return (f"reconcile last ran {ago(now - finished)}, more than twice "
                f"RECONCILE_INTERVAL={every:g} s: is facusync-reconcile.timer active? "
                "(`systemctl list-timers facusync-reconcile.timer`)")
    if reconcile.get("refused") is True:
        return (f"the last reconcile refused to tombstone {reconcile.get('delete_candidates', '?')} "
                "row(s) (mass-delete guard): check the view; if the deletes are real, run "
                "`facusync reconcile --force`")
    return None


def assess(cfg: Config, data: dict[str, Any], now: float) -> Health:
    """Turn the gathered facts into healthy / degraded / down, with the reasons."""
    health = Health()
    for target in ("redis", "postgresql"):
        if "error" in data.get(target + "_error", {}):
            health.worse(DOWN, data[target + "_error"]["error"])
    if health.code == DOWN:
        return health
    zone = data.get("postgresql", {}).get("source_timezone")
    if zone and zone != cfg.source_timezone:
        health.worse(DOWN, mismatch_advice(cfg, zone))
    producer = data["producer"]
    queue = data["queue"]
    interval = number(producer, "interval") or cfg.sync_interval
    beat = number(producer, "heartbeat")
    if beat is None:
        health.worse(DOWN, "the producer has never reported: is facusync-producer running?")
    elif producer.get("state") == State.STOPPED:
        health.worse(DOWN, f"the producer was stopped {ago(now - beat)}: start facusync-producer")
    else:
        silent = now - beat
        if silent > max(10 * interval, 300.0):
            health.worse(DOWN, f"the producer has been silent for {silent:.0f} s")
        elif silent > interval + 30.0:
            health.worse(DEGRADED, f"the producer has been silent for {silent:.0f} s "
                                   f"(interval {interval:g} s)")
        state = producer.get("state", "")
        if state == State.BACKING_OFF:
            health.worse(DEGRADED, f"the producer is backing off: {producer.get('cause', '?')}")
        elif state == State.PAUSED:
            health.worse(DEGRADED, "the producer is paused by backpressure (queue above "
                                   "QUEUE_MAX_PENDING): are the consumers keeping up?")
        if producer.get("missing_columns"):
            health.worse(DEGRADED, f"column(s) {producer['missing_columns']} of "
                                   f"{cfg.pg_table_vista} are gone from the view {cfg.mssql_view} "
                                   "and not synced: see the producer's log for what to do")
        future = int(number(producer, "future_rows") or 0)
        if future:
            health.warn(f"{future} row(s) dated ahead of SQL Server's clock, e.g. "
                        f"{producer.get('future_example', '?')}: synced, but the watermark stays "
                        f"at the present; correct {cfg.mssql_version_column} at the source")
    late = number(producer, "late_max_s")
    overlap = number(producer, "overlap") or cfg.sync_overlap
    if late is not None and late > overlap:
        health.warn(f"changes arrive up to {late:.0f} s after their {cfg.mssql_version_column}, "
                    f"more than SYNC_OVERLAP={overlap:g} s allows (a writer's clock behind SQL "
                    f"Server's, or long transactions): after a restart or a Redis loss such rows "
                    f"are left to reconcile; raise SYNC_OVERLAP above {late:.0f}")
    alive = [n for n, c in data["consumers"].items() if c["alive"]]
    if not alive:
        if queue["length"] > 0:
            health.worse(DOWN, f"{queue['length']} change(s) wait and no consumer is alive: "
                               "is facusync-consumer running?")
        else:
            health.worse(DEGRADED, "no consumer has reported in the last minute")
    lag = queue["oldest_age_s"]
    if lag > cfg.lag_warn:
        health.worse(DEGRADED, f"lag {lag:.0f} s is above LAG_WARN={cfg.lag_warn:g} s")
    if queue["dead_letters"]:
        health.worse(DEGRADED, f"{queue['dead_letters']} dead letter(s): see `facusync dead-letter list`")
    if data["reconcile"].get("overdue"):
        health.worse(DEGRADED, data["reconcile"]["overdue"])
    return health


def collect(cfg: Config) -> tuple[dict[str, Any], Health]:
    """Everything `facusync status` shows, and the verdict; a server down is a fact, not an error."""
    now = time.time()
    data: dict[str, Any] = {"time": datetime.now().astimezone().isoformat(timespec="seconds")}
    try:
        client = connect_redis(cfg)
        try:
            data.update(gather_redis(cfg, client, now))
        finally:
            client.close()
    except FacusyncError as exc:
        data["redis_error"] = {"error": str(exc)}
    except redis.RedisError as exc:
        data["redis_error"] = {"error": f"Redis: {describe_redis_error(exc, cfg)}"}
    try:
        data["postgresql"] = gather_pg(cfg)
    except FacusyncError as exc:
        data["postgresql_error"] = {"error": str(exc)}
    if "producer" in data:
        _annotate(cfg, data, now)
    health = assess(cfg, data, now)
    data["health"] = {"code": health.code, "state": ("healthy", "degraded", "down")[health.code],
                      "reasons": health.reasons, "warnings": health.warnings}
    return data, health


def _annotate(cfg: Config, data: dict[str, Any], now: float) -> None:
    """What the raw stats mean now: a silent producer is stale, a reconcile may be overdue."""
    producer = data["producer"]
    state = producer_state(producer, cfg, now)
    if state != producer.get("state", state):
        producer["reported_state"] = producer["state"]
    producer["state"] = state
    reconcile = data["reconcile"]
    finished = number(reconcile, "finished_at")
    reconcile["last_run_age_s"] = round(now - finished, 1) if finished else None
    reconcile["interval_s"] = cfg.reconcile_interval
    reconcile["overdue"] = reconcile_overdue(
        cfg, reconcile, data.get("postgresql", {}).get("schema_age_s"), now)
