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
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from facusync.commands.status import DOWN, collect
from facusync.commands.verify import compare
from facusync.config import Config, config_from_mapping
from facusync.errors import SchemaError
from facusync.message import decode, upsert_fields
from facusync.producer import Producer
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
    convert = subprocess.run([sys.executable, "-m", "facusync.cli", "convert-timezone",
                              "--from", OLD], cwd=REPO, env={**os.environ, **new_env},
                             capture_output=True, text=True, timeout=60, check=False)
    assert convert.returncode == 0, convert.stderr
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
