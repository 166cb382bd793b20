"""Situation 10 of issue 16: SOURCE_TIMEZONE corrected after the first sync.

The stored times were converted with the old zone. Before: verify counted every row as
different, reconcile re-sent them all, the consumer dropped them as "unchanged" (and a real
update with them) while status said HEALTHY. Now the zone is recorded with the data, the
daemons and every batch refuse another one (exit 78 naming the command), status says DOWN,
and `facusync convert-timezone --from OLD` moves the stored times, after which everything
converges and new changes apply.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from facusync.config import Config, config_from_mapping
from facusync.errors import SchemaError
from facusync.message import decode, upsert_fields
from facusync.operations.status import DOWN, collect
from facusync.operations.verify import compare
from facusync.pgconn import connect_pg
from facusync.producer import Producer
from facusync.roles import apply_roles
from facusync.service import Service
from facusync.sink import connect_sink
from tests.steps import pg, sync

pytestmark = pytest.mark.timeout(180)

REPO = Path(__file__).resolve().parents[2]
OLD, NEW = "America/Santo_Domingo", "Europe/Madrid"


def stored(cfg: Config, conduce: str) -> tuple[Any, ...]:
    rows = pg(cfg, "SELECT cliente, ultima_modificacion, fecha_emision FROM datos_vista"
                   " WHERE conduce = %s", (conduce,))
    return rows[0] if rows else ()


def test_a_corrected_zone_is_refused_until_converted_then_converges(
        pipeline_env: dict[str, str], standin: Any) -> None:
    standin.seed(60, seed=10)
    old_cfg = config_from_mapping({**pipeline_env, "SOURCE_TIMEZONE": OLD})
    sync(old_cfg)
    assert compare(old_cfg).differences == 0
    new_env = {**pipeline_env, "SOURCE_TIMEZONE": NEW}
    new_cfg = config_from_mapping(new_env)
    old_sink = connect_sink(old_cfg, "old-zone")  # a consumer still running with the old zone

    # Every entry point refuses the new zone, naming the command that converts.
    for start in (lambda: Producer(new_cfg, Service("p")).run_once(),
                  lambda: connect_sink(new_cfg, "new-zone")):
        with pytest.raises(SchemaError) as refused:
            start()
        assert f"facusync convert-timezone --from {OLD}" in str(refused.value)
        assert NEW in str(refused.value)
    daemon = subprocess.run([sys.executable, "-m", "facusync.producer", "--once"], cwd=REPO,
                            env={**os.environ, **new_env}, capture_output=True, text=True,
                            timeout=60, check=False)
    assert daemon.returncode == 78, daemon.stderr
    _, health = collect(new_cfg)
    assert health.code == DOWN and any("convert-timezone" in r for r in health.reasons)

    key = standin.rows()[0]["CONDUCE"]
    before = stored(old_cfg, key)
    # Run as the daemons' least-privilege role, from their env file, as an operator would.
    tag = uuid.uuid4().hex[:8]
    sync_role, password = f"t_zs_{tag}", secrets.token_urlsafe(18)
    roles_cfg = config_from_mapping({**new_env, "PG_SYNC_ROLE": sync_role,
                                     "PG_SYNC_ROLE_PASSWORD": password,
                                     "PG_NOCODB_ROLE": f"t_zn_{tag}",
                                     "PG_NOCODB_ROLE_PASSWORD": secrets.token_urlsafe(18)})
    conn = connect_pg(roles_cfg)
    try:
        apply_roles(conn, roles_cfg, set_passwords=True)
    finally:
        conn.close()
    try:
        convert = subprocess.run(
            [sys.executable, "-m", "facusync.cli", "convert-timezone", "--from", OLD], cwd=REPO,
            env={**os.environ, **new_env, "PG_USER": sync_role, "PG_PASSWORD": password},
            capture_output=True, text=True, timeout=60, check=False)
    finally:
        for role in (sync_role, f"t_zn_{tag}"):
            pg(new_cfg, f'DROP OWNED BY "{role}"')
            pg(new_cfg, f'DROP ROLE "{role}"')
    assert convert.returncode == 0, convert.stdout + convert.stderr
    assert "60 row(s) moved" in convert.stdout
    after = stored(new_cfg, key)
    # Same wall time, read in the other zone: Madrid is 5 or 6 hours ahead of Santo Domingo.
    assert (before[1] - after[1]).total_seconds() in (5 * 3600, 6 * 3600)
    assert before[0] == after[0]

    # The consumer that kept the old zone cannot write any more: its batch is refused whole.
    row = standin.rows()[1]
    change = upsert_fields(row["CONDUCE"], row["ULTIMA_MODIFICACION"], '{"cliente":"x"}', "")
    with pytest.raises(SchemaError):
        old_sink.write([decode("1-0", change)])
    old_sink.close()

    # With the new zone: verify agrees, and a real update afterwards arrives.
    assert compare(new_cfg).differences == 0
    version = standin.update(key, cliente="Cambio real después del cambio de zona")
    assert version is not None
    sync(new_cfg)
    assert stored(new_cfg, key)[0] == "Cambio real después del cambio de zona"
    assert compare(new_cfg).differences == 0
    _, health = collect(new_cfg)
    assert not any("convert-timezone" in r for r in health.reasons)
