"""Shared helpers for the consumer and sink tests (no tests here): a migrated database, a
Redis client, message builders and table snapshots."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from typing import Any

import pytest
import redis

from facusync.config import Config
from facusync.message import delete_fields, encode_row, format_version, upsert_fields
from facusync.migrate import apply_migrations
from facusync.pgconn import connect_pg
from facusync.redisconn import Keys, connect_redis

BASE = datetime(2026, 3, 1, 8, 0, 0)


def migrate(cfg: Config) -> None:
    conn = connect_pg(cfg)
    try:
        list(apply_migrations(conn, cfg))
    finally:
        conn.close()


def row(key: str, version: datetime, **values: Any) -> dict[str, Any]:
    """A view row as the producer sends it."""
    data: dict[str, Any] = {
        "conduce": key,
        "fecha_emision": version - timedelta(days=1),
        "facturado": False,
        "numero_factura": None,
        "codigo_cliente": "C" + key[-4:],
        "cliente": "Cliente " + key,
        "ultima_modificacion": version,
    }
    data.update(values)
    return data


def upsert(key: str, version: datetime, lw: datetime | None = None, **values: Any) -> dict[str, str]:
    return upsert_fields(key, version, encode_row(row(key, version, **values)),
                         format_version(lw) if lw else "")


def tombstone(key: str, version: datetime, lw: datetime | None = None) -> dict[str, str]:
    return delete_fields(key, format_version(version), format_version(lw) if lw else "")


def add(client: redis.Redis, cfg: Config, entries: list[dict[str, str]]) -> list[str]:
    keys = Keys(cfg.redis_prefix)
    pipe = client.pipeline(transaction=False)
    for fields in entries:
        pipe.xadd(keys.stream, fields)  # type: ignore[arg-type]
    return [i.decode() if isinstance(i, bytes) else i for i in pipe.execute()]


def snapshot(cfg: Config) -> dict[str, tuple[Any, ...]]:
    """The synced table, key -> values (without bookkeeping timestamps)."""
    conn = connect_pg(cfg)
    try:
        with conn.cursor() as cur:
            cur.execute(
                f'SELECT conduce, fecha_emision, facturado, numero_factura, codigo_cliente,'
                f' cliente, ultima_modificacion, eliminado_en_origen FROM "{cfg.pg_table_vista}"'
            )
            return {r[0]: tuple(r[1:]) for r in cur.fetchall()}
    finally:
        conn.close()


def query(cfg: Config, text: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    conn = connect_pg(cfg)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(text, args)
            return cur.fetchall() if cur.description else []
    finally:
        conn.close()


@pytest.fixture()
def cfg(make_config: Callable[..., Config]) -> Config:
    config = make_config(CLAIM_IDLE="1", BACKOFF_MAX="2", BATCH_SIZE="100")
    migrate(config)
    return config


@pytest.fixture()
def rds(cfg: Config) -> Iterator[redis.Redis]:
    client = connect_redis(cfg)
    yield client
    client.close()

