"""The consumer loop in-process, against real Redis and PostgreSQL: exactly-once effect,
claims after a crash between commit and ack, poison rows, watermark, NOGROUP recovery."""

from __future__ import annotations

import argparse
import json
import random
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import redis

from facusync.apply import SUSPECT_STOPS
from facusync.commands import resync
from facusync.config import Config
from facusync.consumer import Consumer
from facusync.message import encode_row, format_version
from facusync.operations.status import collect
from facusync.redisconn import GROUP, Keys
from facusync.service import Service
from facusync.stream import signature
from tests.integration.test_consumer_support import (
    BASE,
    add,
    cfg,  # noqa: F401 - fixture
    query,
    rds,  # noqa: F401 - fixture
    snapshot,
    tombstone,
    upsert,
)


def expected_table(entries: list[dict[str, str]]) -> dict[str, tuple[str, bool]]:
    """What applying entries in stream order must give: key -> (version, deleted)."""
    return {k: (v.isoformat(), d) for k, (v, d, _) in _model(entries).items()}


def resend(entries: list[dict[str, str]]) -> list[dict[str, str]]:
    """What the producer's overlap re-read and reconcile would send again for the end state."""
    out = []
    for key, (version, deleted, row_json) in _model(entries).items():
        if deleted:  # gone from the view: only its tombstone comes again
            out.append(tombstone(key, version))
            continue
        fields = upsert(key, version)
        fields["row"] = row_json
        out.append(fields)
    return out


def _model(entries: list[dict[str, str]]) -> dict[str, tuple[datetime, bool, str]]:
    state: dict[str, tuple[datetime, bool, str]] = {}
    for e in entries:
        key, version = e["key"], datetime.fromisoformat(e["version"])
        have = state.get(key)
        if e["op"] == "upsert":
            # Same version: the later content wins (and un-deletes).
            if have is None or version >= have[0]:
                state[key] = (version, False, e["row"])
        elif have is not None and not have[1] and have[0] <= version:
            state[key] = (have[0], True, have[2])
    return state


def table_state(cfg: Config) -> dict[str, tuple[str, bool]]:  # noqa: F811
    rows = query(cfg, f'SELECT conduce, ultima_modificacion AT TIME ZONE %s, eliminado_en_origen'
                      f' FROM "{cfg.pg_table_vista}"', (cfg.source_timezone,))
    return {k: (v.isoformat(), d) for k, v, d in rows}


def random_entries(n: int, keys: int, seed: int = 1, *, ties: bool = True,
                   deletes: float = 0.1) -> list[dict[str, str]]:
    """Upserts and tombstones, versions out of order and repeated, like overlap + reconcile.

    ties=False leaves out what only a single consumer can order: two different contents of
    a key under the same version, and a key coming back under the version of its tombstone.
    Two consumers may apply such entries from different in-flight batches in either order.
    """
    rnd = random.Random(seed)
    out = []
    newest: dict[str, datetime] = {}
    deleted_at: dict[str, datetime] = {}
    for _ in range(n):
        key = f"R{rnd.randrange(keys):06d}"
        version = BASE + timedelta(seconds=rnd.randrange(50))
        if rnd.random() < deletes and key in newest:
            # Reconcile's tombstone carries the last version PostgreSQL held.
            out.append(tombstone(key, newest[key]))
            deleted_at[key] = newest[key]
            continue
        if not ties and key in deleted_at and version <= deleted_at[key]:
            version = deleted_at.pop(key) + timedelta(seconds=1)
        newest[key] = max(version, newest.get(key, version))
        label = rnd.randrange(3) if ties else version.second % 3
        out.append(upsert(key, version, cliente=f"c{label}"))
    return out


def stream_len(rds: redis.Redis, cfg: Config) -> int:  # noqa: F811
    return int(rds.xlen(Keys(cfg.redis_prefix).stream))


def pending(rds: redis.Redis, cfg: Config) -> int:  # noqa: F811
    return int(rds.xpending(Keys(cfg.redis_prefix).stream, GROUP)["pending"])


def drain(cfg: Config, name: str = "c1") -> Consumer:  # noqa: F811
    consumer = Consumer(cfg, Service("test"), name=name)
    consumer.run(once=True)
    return consumer


def test_every_message_once_despite_duplicates_and_disorder(
    cfg: Config, rds: redis.Redis  # noqa: F811
) -> None:
    entries = random_entries(3000, 400)
    entries += entries[:500]  # delivered twice
    add(rds, cfg, entries)
    consumer = drain(cfg)
    assert table_state(cfg) == expected_table(entries)
    assert stream_len(rds, cfg) == 0 and pending(rds, cfg) == 0
    assert consumer.stats.totals["rows"] == len(entries)
    n = len(table_state(cfg))
    assert query(cfg, f"SELECT count(*) FROM {cfg.pg_table_seguimiento}") == [(n,)]
    # Stats for `facusync status`.
    keys = Keys(cfg.redis_prefix)
    stats = rds.hgetall(keys.consumer_stats("c1"))
    assert int(stats[b"total_rows"]) == len(entries) and rds.ttl(keys.consumer_stats("c1")) > 0
    assert 0 < rds.llen(keys.batch_latencies) <= 1000
    ts, ms, size = rds.lindex(keys.batch_latencies, 0).decode().split(",")
    assert float(ts) > 0 and float(ms) >= 0 and int(size) > 0
    # The end state re-sent (overlap re-read, reconcile): nothing is rewritten.
    before = query(cfg, f'SELECT conduce, updated_at FROM "{cfg.pg_table_vista}" ORDER BY 1')
    add(rds, cfg, resend(entries))
    drain(cfg)
    after = query(cfg, f'SELECT conduce, updated_at FROM "{cfg.pg_table_vista}" ORDER BY 1')
    assert before == after


def test_committed_not_acked_is_claimed_and_harmless(
    cfg: Config, rds: redis.Redis  # noqa: F811
) -> None:
    entries = [upsert(f"K{i:03d}", BASE) for i in range(50)]
    add(rds, cfg, entries)
    crashed = Consumer(cfg, Service("a"), name="crashed")
    crashed.member.ensure_group()
    batch = crashed.member.read_batch()
    assert len(batch) == 50
    crashed.sink.connect()
    crashed.sink.write(batch.changes, batch.low_water)  # committed ... then "SIGKILL"
    crashed.sink.close()
    assert pending(rds, cfg) == 50
    time.sleep(cfg.claim_idle + 0.2)
    other = Consumer(cfg, Service("b"), name="other")
    other.connect()
    assert other.claim_batches() == 50
    assert pending(rds, cfg) == 0 and stream_len(rds, cfg) == 0
    assert other.stats.totals["unchanged"] == 50 and other.stats.totals["inserted"] == 0
    assert len(snapshot(cfg)) == 50
    other.sink.close()


def test_poison_entries_dead_lettered_batch_mates_written(
    cfg: Config, rds: redis.Redis  # noqa: F811
) -> None:
    good = [upsert(f"G{i:03d}", BASE) for i in range(30)]
    bad_json = upsert("BJ", BASE)
    bad_json["row"] = "{not json"
    unknown_v = upsert("UV", BASE)
    unknown_v["v"] = "99"
    null_key = upsert("NK", BASE)
    null_key["key"] = ""
    too_long = upsert("TL", BASE, cliente="x" * 200)
    no_version = upsert("NV", BASE)
    no_version["version"] = ""
    ids = add(rds, cfg, [*good[:10], bad_json, unknown_v, *good[10:20],
                         null_key, too_long, no_version, *good[20:]])
    drain(cfg)
    assert len(snapshot(cfg)) == 30
    dead = rds.xrange(Keys(cfg.redis_prefix).dead)
    by_id = {f[b"original_id"].decode(): f for _, f in dead}
    assert len(by_id) == 5
    reasons = {f[b"key"].decode(): f[b"error"].decode() for f in by_id.values()}
    assert "JSON" in reasons["BJ"]
    assert "version" in reasons["UV"]
    assert "key" in reasons[""]
    assert "too long" in reasons["TL"]
    assert "version" in reasons["NV"]
    for f in by_id.values():
        assert f[b"consumer"] == b"c1" and f[b"deliveries"] == b"1" and float(f[b"failed_at"]) > 0
        assert f[b"original_id"].decode() in ids
    assert stream_len(rds, cfg) == 0 and pending(rds, cfg) == 0


def test_too_many_deliveries_written_alone(make_config: Callable[..., Config],
                                           cfg: Config, rds: redis.Redis) -> None:  # noqa: F811
    """Over-delivered entries are written alone; one that consumers stopped on while writing
    it alone SUSPECT_STOPS times (a row that kills the consumer) is dead-lettered."""
    strict = make_config(CLAIM_IDLE="1", MAX_DELIVERIES="1")
    keys = Keys(cfg.redis_prefix)
    ids = add(rds, cfg, [upsert("M1", BASE), upsert("M2", BASE)])
    first = Consumer(strict, Service("a"), name="first")
    first.member.ensure_group()
    assert len(first.member.read_batch()) == 2  # delivered once, then the consumer "hangs"
    rds.hset(keys.suspects, ids[1], SUSPECT_STOPS)  # consumers died twice writing M2 alone
    time.sleep(1.2)
    second = Consumer(strict, Service("b"), name="second")
    second.connect()
    second.claim_batches()
    dead = rds.xrange(keys.dead)
    assert len(dead) == 1 and dead[0][1][b"key"] == b"M2"
    assert dead[0][1][b"error"] == b"delivered 2 times; the consumer stopped 2 times while writing it alone"
    assert list(snapshot(cfg)) == ["M1"] and stream_len(rds, cfg) == 0
    assert not rds.exists(keys.suspects)
    second.sink.close()


def test_watermark_low_water_and_idle(cfg: Config, rds: redis.Redis) -> None:  # noqa: F811
    keys = Keys(cfg.redis_prefix)
    lw1, lw2 = BASE - timedelta(hours=2), BASE - timedelta(hours=1)
    add(rds, cfg, [upsert("A", BASE, lw=lw1), upsert("B", BASE, lw=lw2)])
    c = Consumer(cfg, Service("t"), name="c1")
    c.connect()
    batch = c.member.read_batch()
    assert batch.low_water == lw1  # the oldest entry in the stream
    c.process(batch)
    assert query(cfg, "SELECT watermark FROM sync_control") == [(lw1,)]
    # Idle, stream empty: the producer's watermark is a true low-water mark.
    rds.set(keys.watermark, format_version(BASE))
    c.idle()
    assert query(cfg, "SELECT watermark FROM sync_control") == [(BASE,)]
    # Idle with entries still queued (or pending): the watermark must not move.
    add(rds, cfg, [upsert("C", BASE + timedelta(hours=1), lw=BASE)])
    rds.set(keys.watermark, format_version(BASE + timedelta(hours=1)))
    c.idle()
    assert query(cfg, "SELECT watermark FROM sync_control") == [(BASE,)]
    c.sink.close()


def test_group_recreated_after_redis_lost_data(cfg: Config, rds: redis.Redis) -> None:  # noqa: F811
    add(rds, cfg, [upsert("A", BASE)])
    drain(cfg)
    rds.delete(Keys(cfg.redis_prefix).stream)  # what a restart without persistence does
    add(rds, cfg, [upsert("B", BASE)])
    drain(cfg)
    assert set(snapshot(cfg)) == {"A", "B"}


def test_people_edits_survive(cfg: Config, rds: redis.Redis) -> None:  # noqa: F811
    add(rds, cfg, [upsert("P1", BASE), upsert("P2", BASE)])
    drain(cfg)
    query(cfg, f"UPDATE {cfg.pg_table_seguimiento} SET nota='n', ruta='r', trabajado=true,"
               " preparador='p'")
    before = query(cfg, f"SELECT * FROM {cfg.pg_table_seguimiento} ORDER BY conduce")
    add(rds, cfg, [upsert("P1", BASE + timedelta(seconds=1), cliente="z"),
                   tombstone("P2", BASE), upsert("P2", BASE + timedelta(seconds=2)),
                   tombstone("P1", BASE + timedelta(seconds=1)), upsert("P3", BASE)])
    drain(cfg)
    after = query(cfg, f"SELECT * FROM {cfg.pg_table_seguimiento} ORDER BY conduce")
    assert after[:2] == before
    assert [r[1] for r in after] == ["P1", "P2", "P3"]


def run_parallel(cfg: Config, count: int = 2) -> list[Consumer]:  # noqa: F811
    consumers = [Consumer(cfg, Service(f"s{i}"), name=f"t{i}") for i in range(count)]
    threads = [threading.Thread(target=c.run, kwargs={"once": True}) for c in consumers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return consumers


def phases(seed: int, scale: int = 1) -> list[list[dict[str, str]]]:
    """A causal history: changes, then tombstones of committed rows, then comebacks.

    Reconcile only tombstones what PostgreSQL already holds, so a tombstone never races the
    upsert it refers to; within a phase, the order of batches does not matter.
    """
    first = random_entries(4000 * scale, 400 * scale, seed=seed, ties=False, deletes=0)
    state = _model(first)
    rnd = random.Random(seed)
    gone = rnd.sample(sorted(state), 60 * scale)
    second = [tombstone(k, state[k][0]) for k in gone]
    second += [upsert(k, state[k][0] + timedelta(seconds=5), cliente="later")
               for k in sorted(set(state) - set(gone))[:200 * scale]]
    rnd.shuffle(second)
    third = [upsert(k, state[k][0] + timedelta(seconds=100), cliente="back")
             for k in gone[:30 * scale]]
    third += random_entries(2000 * scale, 600 * scale, seed=seed + 1, ties=False, deletes=0)
    return [first, second, third]


def test_two_consumers_same_as_one(
    make_config: Callable[..., Config], cfg: Config, rds: redis.Redis  # noqa: F811
) -> None:
    slow_claims = make_config(CLAIM_IDLE="30", BATCH_SIZE="100")
    everything: list[dict[str, str]] = []
    for n, phase in enumerate(phases(7)):
        add(rds, cfg, phase)
        everything += phase
        consumers = run_parallel(slow_claims)
        assert stream_len(rds, cfg) == 0 and pending(rds, cfg) == 0
        if n == 0:  # 40 batches: both took part
            assert all(c.stats.totals["rows"] > 0 for c in consumers)
    assert table_state(cfg) == expected_table(everything)
    assert query(cfg, f"SELECT count(*) FROM {cfg.pg_table_seguimiento}") == [
        (len(table_state(cfg)),)]


def test_sigterm_during_outage_abandons_unacked(cfg: Config, rds: redis.Redis) -> None:  # noqa: F811
    add(rds, cfg, [upsert("Q", BASE)])
    c = Consumer(cfg, Service("t"), name="c1")
    c.connect()
    batch = c.member.read_batch()
    query(cfg, f'ALTER TABLE "{cfg.pg_table_vista}" RENAME TO moved')  # writes now fail
    timer = threading.Timer(0.5, c.service.stopping.set)
    timer.start()
    started = time.monotonic()
    assert c.process(batch) is False
    assert time.monotonic() - started < 5
    assert pending(rds, cfg) == 1  # not acknowledged
    timer.cancel()
    c.sink.close()



def test_one_refused_change_is_dead_lettered_once(cfg: Config, rds: redis.Redis) -> None:  # noqa: F811
    """Two copies of the same poison row (e.g. a held batch and the producer's re-read after
    Redis lost its data) give one dead letter; after a purge, a new failure shows again."""
    keys = Keys(cfg.redis_prefix)
    first = upsert("TL2", BASE, cliente="y" * 200)
    second = upsert("TL2", BASE, lw=BASE, cliente="y" * 200)  # other lw/ts: another copy
    add(rds, cfg, [first])
    drain(cfg)
    add(rds, cfg, [second, upsert("OK1", BASE)])
    drain(cfg)
    assert rds.xlen(keys.dead) == 1
    assert "OK1" in snapshot(cfg)
    assert rds.xlen(keys.stream) == 0
    entry_id, fields = rds.xrange(keys.dead)[0]
    pipe = rds.pipeline(transaction=True)
    pipe.xdel(keys.dead, entry_id)
    pipe.hdel(keys.dead_index, signature(fields))
    pipe.execute()
    add(rds, cfg, [upsert("TL2", BASE, cliente="y" * 200)])
    drain(cfg)
    assert rds.xlen(keys.dead) == 1


def test_a_poison_row_resent_with_another_column_set_is_dead_lettered_once(
        cfg: Config, rds: redis.Redis) -> None:  # noqa: F811
    """A view column renamed: the producer sends the rows of its window without it, and again
    with it once it is back. The same refused change (key, version) is one dead letter;
    a later change of the same row (a new version) is another."""
    keys = Keys(cfg.redis_prefix)
    full = upsert("TL3", BASE, cliente="y" * 200)
    fields = json.loads(full["row"])
    del fields["numero_factura"]  # what the producer sends while the column is missing
    partial = {**full, "row": encode_row(fields)}
    add(rds, cfg, [partial])
    drain(cfg)
    add(rds, cfg, [full])
    drain(cfg)
    assert rds.xlen(keys.dead) == 1
    add(rds, cfg, [upsert("TL3", BASE + timedelta(seconds=1), cliente="z" * 200)])
    drain(cfg)
    assert rds.xlen(keys.dead) == 2
    # A row without a key, whose missing column was NULL: the same row, one dead letter; a
    # row without a key that differs in a value is another.
    nameless = {**upsert("", BASE, conduce=None, cliente="CHAOS-NULL"), "key": ""}
    fields = json.loads(nameless["row"])
    del fields["numero_factura"]
    add(rds, cfg, [nameless, {**nameless, "row": encode_row(fields)}])
    drain(cfg)
    assert rds.xlen(keys.dead) == 3
    add(rds, cfg, [{**upsert("", BASE, conduce=None, cliente="OTHER"), "key": ""}])
    drain(cfg)
    assert rds.xlen(keys.dead) == 4


def test_resync_lowered_watermark_is_not_raised_by_an_older_batch(
        cfg: Config, rds: redis.Redis) -> None:  # noqa: F811
    """A batch read before `facusync resync --since T` commits after it: sync_control keeps T
    (or lower), so a Redis loss right after the resync cannot skip the re-read."""
    keys = Keys(cfg.redis_prefix)
    lw, since = BASE - timedelta(hours=1), BASE - timedelta(days=3)
    rds.set(keys.watermark, format_version(BASE))  # the producer's
    query(cfg, "UPDATE sync_control SET watermark = %s", (lw,))  # earlier batches committed
    add(rds, cfg, [upsert("A", BASE, lw=lw)])
    c = Consumer(cfg, Service("t"), name="c1")
    c.connect()
    batch = c.member.read_batch()
    assert batch.low_water == lw
    code = resync.run(cfg, argparse.Namespace(all=False, since=since.isoformat(), yes=True,
                                              lock_wait=5.0))
    assert code == 0 and query(cfg, "SELECT watermark FROM sync_control") == [(since,)]
    c.process(batch)  # read before the resync, committed after it
    assert query(cfg, "SELECT watermark FROM sync_control") == [(since,)]
    add(rds, cfg, [upsert("B", BASE, lw=lw)])  # an entry queued before the resync, still there
    c.process(c.member.read_batch())
    c.idle()
    assert query(cfg, "SELECT watermark FROM sync_control") == [(since,)]
    c.sink.close()


def test_no_newest_version_is_invented_before_a_row_is_committed(
        cfg: Config, rds: redis.Redis) -> None:  # noqa: F811
    """A fresh installation, or one whose first batches were all refused (dead-lettered), has
    no newest version yet: the consumer's gauge and `facusync status` must say so, not show
    now() plus the one-minute cap (PostgreSQL's LEAST and GREATEST skip NULLs; a clean-clone CI run
    in a zone west of UTC caught the consumer exporting a newest version 52 s ahead of the
    committed one)."""
    consumer = drain(cfg)  # connects to an empty sync_control
    assert consumer.stats.newest is None
    add(rds, cfg, [upsert("REFUSED", BASE, cliente="y" * 200)])  # a batch with nothing written
    consumer.run(once=True)
    assert rds.xlen(Keys(cfg.redis_prefix).dead) == 1
    assert consumer.stats.newest is None
    assert query(cfg, "SELECT newest_version FROM sync_control") == [(None,)]
    data, _ = collect(cfg)
    assert data["postgresql"]["newest_committed_change"] is None
    assert data["postgresql"]["newest_change_age_s"] is None
    add(rds, cfg, [upsert("KEPT", BASE)])
    consumer.run(once=True)
    stored = query(cfg, "SELECT extract(epoch FROM newest_version) FROM sync_control")[0][0]
    assert consumer.stats.newest == float(stored) == BASE.replace(
        tzinfo=ZoneInfo(cfg.source_timezone)).timestamp()
    consumer.sink.close()
