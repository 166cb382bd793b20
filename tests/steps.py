"""Driving the pipeline from a test, step by step: one producer cycle and one consumer pass
(real daemon classes, real servers), and a query as the test's PostgreSQL user."""

from __future__ import annotations

from typing import Any

import psycopg2

from facusync.config import Config
from facusync.consumer import Consumer
from facusync.producer import Producer
from facusync.service import Service


def produce(cfg: Config) -> None:
    """One producer cycle (waiting out a lock another run holds)."""
    producer = Producer(cfg, Service("test-producer"))
    try:
        while producer.run_once().skipped:
            pass
    finally:
        producer.source.close()


def consume(cfg: Config) -> None:
    """One consumer pass over what is queued."""
    Consumer(cfg, Service("test-consumer")).run(once=True)


def sync(cfg: Config) -> None:
    """One producer cycle, then one consumer pass."""
    produce(cfg)
    consume(cfg)


def pg(cfg: Config, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Run one statement in its own transaction; the rows it returned, if any."""
    conn = psycopg2.connect(host=cfg.pg_host, port=cfg.pg_port, dbname=cfg.pg_database,
                            user=cfg.pg_user, password=cfg.pg_password.reveal())
    try:
        with conn, conn.cursor() as cur:
            cur.execute(sql, params)
            return cur.fetchall() if cur.description else []
    finally:
        conn.close()
