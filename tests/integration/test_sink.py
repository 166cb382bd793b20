"""The PostgreSQL write path alone: guard, soft delete, tracking rows, poison rows, watermark."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from decimal import Decimal

import pytest

from facusync.config import Config
from facusync.message import Change, decode
from facusync.sink import Sink, dedupe
from facusync.upsert import STAGE
from tests.integration.test_consumer_support import (
    BASE,
    cfg,  # noqa: F401 - fixture
    query,
    snapshot,
    tombstone,
    upsert,
)


def change(fields: dict[str, str], n: int = 0) -> Change:
    return decode(f"1-{n}", fields)


@pytest.fixture()
def sink(cfg: Config) -> Iterator[Sink]:  # noqa: F811
    s = Sink(cfg, consumer="test")
    s.connect()
    yield s
    s.close()


def vista(cfg: Config) -> str:  # noqa: F811
    return f'"{cfg.pg_table_vista}"'


def test_insert_update_unchanged_counts_and_tracking(cfg: Config, sink: Sink) -> None:  # noqa: F811
    res = sink.write([change(upsert(f"K{i:04d}", BASE)) for i in range(10)])
    assert (res.inserted, res.updated, res.unchanged) == (10, 0, 0)
    assert query(cfg, f"SELECT count(*) FROM {cfg.pg_table_seguimiento}") == [(10,)]
    before = dict(query(cfg, f"SELECT conduce, updated_at FROM {vista(cfg)}"))
    # The same messages again: nothing is rewritten, updated_at does not churn.
    res = sink.write([change(upsert(f"K{i:04d}", BASE)) for i in range(10)])
    assert (res.inserted, res.updated, res.unchanged) == (0, 0, 10)
    assert dict(query(cfg, f"SELECT conduce, updated_at FROM {vista(cfg)}")) == before
    # Same version, different value: updated (the source changed without a new version).
    res = sink.write([change(upsert("K0001", BASE, cliente="Otro"))])
    assert (res.inserted, res.updated, res.unchanged) == (0, 1, 0)
    assert snapshot(cfg)["K0001"][4] == "Otro"
    assert query(cfg, f"SELECT count(*) FROM {cfg.pg_table_seguimiento}") == [(10,)]


def test_older_version_never_replaces_newer(cfg: Config, sink: Sink) -> None:  # noqa: F811
    newer = BASE + timedelta(hours=1)
    sink.write([change(upsert("A", newer, cliente="nuevo"))])
    res = sink.write([change(upsert("A", BASE, cliente="viejo"))])
    assert res.unchanged == 1
    assert snapshot(cfg)["A"][4] == "nuevo"


def test_dedupe_keeps_newest_and_later_on_tie() -> None:
    a1 = change(upsert("A", BASE, cliente="1"), 1)
    a2 = change(upsert("A", BASE + timedelta(seconds=1), cliente="2"), 2)
    a0 = change(upsert("A", BASE, cliente="0"), 3)
    b1 = change(upsert("B", BASE, cliente="x"), 4)
    b2 = change(upsert("B", BASE, cliente="y"), 5)
    kept, dropped = dedupe([a1, a2, a0, b1, b2])
    assert kept == [a2, b2] and dropped == 3
    # Changed then vanished in one batch: both kept, the upsert applied first.
    c1 = change(upsert("C", BASE), 6)
    c2 = change(tombstone("C", BASE), 7)
    c0 = change(tombstone("C", BASE - timedelta(seconds=1)), 8)
    assert dedupe([c1, c2, c0]) == ([c1, c2], 1)
    assert dedupe([c2, c1]) == ([c1], 1)


def test_upsert_then_tombstone_in_one_batch(cfg: Config, sink: Sink) -> None:  # noqa: F811
    res = sink.write([change(upsert("C", BASE), 1), change(tombstone("C", BASE), 2)])
    assert (res.inserted, res.deleted) == (1, 1)
    assert snapshot(cfg)["C"][6] is True


def test_types_converted_exactly(cfg: Config, sink: Sink) -> None:  # noqa: F811
    version = datetime(2026, 3, 1, 8, 0, 0, 123456)
    sink.write([change(upsert("T1", version, facturado=True, numero_factura="F\t1\\2\n"))])
    got = query(cfg, f"SELECT ultima_modificacion AT TIME ZONE %s, facturado, numero_factura"
                     f" FROM {vista(cfg)}", (cfg.source_timezone,))
    assert got == [(version, True, "F\t1\\2\n")]
    # Santo Domingo is UTC-4: the naive local time is converted, not taken as UTC.
    utc = query(cfg, f"SELECT ultima_modificacion AT TIME ZONE 'UTC' FROM {vista(cfg)}")
    assert utc == [(version + timedelta(hours=4),)]
    assert Decimal("1") == 1  # decimals travel as strings; no numeric column in 001


def test_soft_delete_undelete_and_guard(cfg: Config, sink: Sink) -> None:  # noqa: F811
    sink.write([change(upsert("D", BASE)), change(upsert("E", BASE))])
    query(cfg, f"UPDATE {cfg.pg_table_seguimiento} SET nota = 'llamar', trabajado = true"
               " WHERE conduce = 'D'")
    # A tombstone older than the row is ignored; unknown keys are a no-op.
    res = sink.write([change(tombstone("D", BASE - timedelta(seconds=1))),
                      change(tombstone("NOPE", BASE))])
    assert res.deleted == 0
    res = sink.write([change(tombstone("D", BASE))])
    assert res.deleted == 1
    assert snapshot(cfg)["D"][6] is True
    assert query(cfg, f"SELECT eliminado_at IS NOT NULL FROM {vista(cfg)} WHERE conduce='D'") == [
        (True,)]
    # Deleting twice does not move eliminado_at.
    at = query(cfg, f"SELECT eliminado_at FROM {vista(cfg)} WHERE conduce='D'")
    assert sink.write([change(tombstone("D", BASE))]).deleted == 0
    assert query(cfg, f"SELECT eliminado_at FROM {vista(cfg)} WHERE conduce='D'") == at
    # An older upsert does not resurrect it; the same version (the row is back) does.
    assert sink.write([change(upsert("D", BASE - timedelta(seconds=5)))]).updated == 0
    assert snapshot(cfg)["D"][6] is True
    res = sink.write([change(upsert("D", BASE))])
    assert res.updated == 1
    assert query(cfg, f"SELECT eliminado_en_origen, eliminado_at FROM {vista(cfg)}"
                      " WHERE conduce='D'") == [(False, None)]
    # People's data survived every step, and no tracking row was duplicated or touched.
    assert query(cfg, f"SELECT nota, trabajado FROM {cfg.pg_table_seguimiento}"
                      " WHERE conduce='D'") == [("llamar", True)]
    assert query(cfg, f"SELECT count(*) FROM {cfg.pg_table_seguimiento}") == [(2,)]


def test_poison_rows_isolated_rest_written(cfg: Config, sink: Sink) -> None:  # noqa: F811
    good = [change(upsert(f"G{i:03d}", BASE), i) for i in range(50)]
    bad = [
        change(upsert("TOOLONG", BASE, cliente="x" * 151), 100),
        change(upsert("X" * 31, BASE), 101),
        change(upsert("BADDATE", BASE, fecha_emision="2026-02-30T00:00:00"), 102),
        change(upsert("BADBOOL", BASE, facturado="maybe"), 103),
        change(upsert("NUL", BASE, cliente="a\x00b"), 104),
    ]
    batch = good[:20] + bad[:2] + good[20:40] + bad[2:] + good[40:]
    res = sink.write(batch)
    assert res.inserted == 50
    dead = {c.key: reason for c, reason in res.dead}
    assert set(dead) == {c.key for c in bad}
    assert "too long" in dead["TOOLONG"] and "too long" in dead["X" * 31]
    assert "out of range" in dead["BADDATE"] or "date" in dead["BADDATE"]
    assert "boolean" in dead["BADBOOL"]
    assert len(snapshot(cfg)) == 50
    assert query(cfg, "SELECT last_dead, last_inserted FROM sync_control") == [(5, 50)]


def test_watermark_only_moves_forward(cfg: Config, sink: Sink) -> None:  # noqa: F811
    sink.write([change(upsert("W", BASE))], low_water=BASE)
    sink.write([change(upsert("W2", BASE))], low_water=BASE - timedelta(days=1))
    sink.write([change(upsert("W3", BASE))], low_water=None)
    assert query(cfg, "SELECT watermark, last_consumer FROM sync_control") == [(BASE, "test")]
    sink.advance_watermark(BASE + timedelta(minutes=1))
    sink.advance_watermark(BASE)
    assert query(cfg, "SELECT watermark FROM sync_control") == [(BASE + timedelta(minutes=1),)]


def write_rounds_with_a_bad_row(cfg: Config, sink: Sink) -> None:  # noqa: F811
    """Three batches through one connected Sink, each bisected around a row too long for its
    column: the staging table holds only the batch being written."""
    for round_ in range(3):
        res = sink.write([change(upsert(f"S{i}", BASE + timedelta(seconds=round_)))
                          for i in range(20)] + [change(upsert("Y" * 40, BASE))])
        assert len(res.dead) == 1
        assert res.inserted + res.updated == 20
    assert len(snapshot(cfg)) == 20


def staging_table_exists(sink: Sink) -> bool:
    assert sink.conn is not None
    with sink.conn.cursor() as cur:
        cur.execute("SELECT to_regclass(%s)", (f"pg_temp.{STAGE}",))
        found = cur.fetchone() != (None,)
    sink.conn.rollback()
    return found


def test_staging_table_reused_across_batches(cfg: Config, sink: Sink) -> None:  # noqa: F811
    """One TEMP table per connection, emptied at each commit, not created per batch."""
    write_rounds_with_a_bad_row(cfg, sink)
    assert staging_table_exists(sink)


def test_copy_text_escapes_and_types() -> None:
    from facusync.upsert import copy_text

    assert copy_text(None) == "\\N"
    assert copy_text(True) == "t" and copy_text(False) == "f"
    assert copy_text(12) == "12" and copy_text("12.50") == "12.50"
    assert copy_text("a\\b\tc\nd\re") == "a\\\\b\\tc\\nd\\re"
    assert copy_text("\\N") == "\\\\N"  # the text "\N" is not NULL
    assert copy_text({"a": 1}) == '{"a": 1}'


def test_text_that_looks_like_null_or_marker_roundtrips(cfg: Config, sink: Sink) -> None:  # noqa: F811
    sink.write([change(upsert("N1", BASE, cliente="\\N")), change(upsert("N2", BASE, cliente="\\."))])
    got = dict(query(cfg, f"SELECT conduce, cliente FROM {vista(cfg)}"))
    assert got == {"N1": "\\N", "N2": "\\."}


def test_keys_compared_as_sql_server_compares_them(cfg: Config, sink: Sink) -> None:  # noqa: F811
    """One conduce whatever its case or trailing spaces: renamed to the newest spelling, its
    tracking row (and note) following; an older message in the old spelling changes nothing;
    two spellings in one batch are one row."""
    sink.write([change(upsert("K-0001", BASE))])
    query(cfg, f"UPDATE {cfg.pg_table_seguimiento} SET nota = 'frágil' WHERE conduce = 'K-0001'")
    later = BASE + timedelta(minutes=5)
    assert sink.write([change(upsert("k-0001", later))]).updated == 1
    sink.write([change(upsert("K-0001", BASE))])  # the overlap re-reads the old message
    sink.write([change(upsert("k-0001 ", later), 1), change(upsert("K-0002", BASE), 2),
                change(upsert("k-0002  ", BASE), 3)])
    rows = query(cfg, f"SELECT v.conduce, s.nota FROM {vista(cfg)} v JOIN"
                      f" {cfg.pg_table_seguimiento} s USING (conduce) ORDER BY 1")
    assert rows == [("k-0001 ", "frágil"), ("k-0002  ", None)]
    assert query(cfg, f"SELECT count(*) FROM {cfg.pg_table_seguimiento}") == [(2,)]
