"""Fault combinations the random schedule hits only now and then, replayed deterministically.

Each scenario builds a private stack (tests.chaos.stack), like the chaos run, and runs only
with it (FACUSYNC_CHAOS=1, e.g. `make test-chaos`).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.chaos.actors import insert_too_long
from tests.chaos.stack import Settings, Stack, cli, wait_for

ENABLED = os.environ.get("FACUSYNC_CHAOS") == "1"
pytestmark = [pytest.mark.slow, pytest.mark.timeout(300),
              pytest.mark.skipif(not ENABLED, reason="chaos suite: run `make test-chaos`")]


@pytest.fixture()
def stack() -> Iterator[Stack]:
    workdir = Path(tempfile.mkdtemp(prefix="facusync-scenario-"))
    s = Stack(workdir, Settings(restart_sec=1))
    try:
        s.start_servers(200, 1)
        s.migrate()
        s.start_daemons()
        assert wait_for(lambda: s.admin_query("SELECT count(*) FROM datos_vista")[0][0] == 200, 60)
        yield s
    finally:
        s.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def _pending(s: Stack) -> int:
    client = redis.Redis(host=s.redis.host, port=s.redis.port, password=s.redis.password)
    try:
        return int(client.xpending("facusync:changes", "facusync")["pending"])
    finally:
        client.close()


# Found by the chaos suite: a poison row held by a consumer (waiting for PostgreSQL) when Redis
# lost its data was dead-lettered twice, from the held batch and from the producer's re-read.
# Dead letters are now registered by signature (facusync.stream).
def test_poison_in_flight_across_a_redis_data_loss_is_dead_lettered_once(stack: Stack) -> None:
    stack.pg.stop("fast")
    insert_too_long(stack.standin, "DUP-1")
    assert wait_for(lambda: _pending(stack) >= 1, 30), "the consumer never read the poison row"
    stack.redis.restart(keep_data=False)
    time.sleep(3)
    stack.pg.start_again()

    def dead() -> list[dict[str, str]]:
        return [e for e in json.loads(cli(stack.env, "dead-letter", "list", "--json").stdout)
                if e.get("key") == "DUP-1"]

    assert wait_for(lambda: len(dead()) >= 1, 60)
    time.sleep(5)  # room for a second copy
    assert len(dead()) == 1, dead()
