"""The daemons on Debian 12's own Python packages (what the .deb depends on).

python3-pymssql 2.2.2, python3-psycopg2 2.9.5, python3-redis 4.3.4 and
python3-pythonjsonlogger 2.0.1 are older than the venv's; run the real pipeline with
/usr/bin/python3 (no venv) so an API that only newer releases have fails here, not in
production.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from facusync.config import config_from_mapping
from facusync.operations.verify import compare

REPO = Path(__file__).resolve().parents[2]
DEBIAN_PYTHON = "/usr/bin/python3"

pytestmark = [
    pytest.mark.timeout(240),
    pytest.mark.skipif(not Path("/usr/lib/python3/dist-packages/pymssql").exists(),
                       reason="python3-pymssql is not installed (make deps installs it)"),
]


def debian(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "PYTHON"))}
    clean["PATH"] = "/usr/bin:/bin"
    clean["PYTHONPATH"] = str(REPO)
    return subprocess.run([DEBIAN_PYTHON, *args], env={**clean, **env}, capture_output=True,
                          text=True, timeout=180, cwd="/")


def test_debian_versions_are_the_ones_we_support() -> None:
    out = debian({}, "-c", "import pymssql, psycopg2, redis, pythonjsonlogger, sdnotify, sys;"
                           "print(pymssql.__version__, psycopg2.__version__.split()[0], redis.__version__,"
                           " sys.prefix)")
    assert out.returncode == 0, out.stderr
    pymssql_v, psycopg2_v, redis_v, prefix = out.stdout.split()
    assert pymssql_v == "2.2.2" and psycopg2_v == "2.9.5" and redis_v == "4.3.4" and prefix == "/usr"


def test_pipeline_runs_on_debian_packages(pipeline_env: dict[str, str], standin: Any) -> None:
    standin.seed(1500, seed=31)
    env = {**pipeline_env, "LOG_FORMAT": "json"}
    for program in ("facusync.producer", "facusync.consumer"):
        out = debian(env, "-m", program, "--once")
        assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
        for line in out.stdout.splitlines():
            json.loads(line)  # python-json-logger 2.0.1 writes one JSON object per line
    standin.update(standin.rows()[3]["CONDUCE"], bump=False, cliente="Distribuidora Peña")
    standin.delete(standin.rows()[4]["CONDUCE"])
    out = debian(env, "-m", "facusync.cli", "reconcile")
    assert out.returncode == 0, out.stderr
    assert debian(env, "-m", "facusync.consumer", "--once").returncode == 0
    out = debian(env, "-m", "facusync.cli", "verify")
    assert out.returncode == 0, out.stdout + out.stderr
    assert compare(config_from_mapping(pipeline_env)).differences == 0
    status = debian(env, "-m", "facusync.cli", "status", "--json")
    assert json.loads(status.stdout)["postgresql"]["rows"] == 1500


@pytest.mark.parametrize("tds", ["auto", "7.4", "7.3"])
def test_check_connects_with_each_tds_setting(pipeline_env: dict[str, str], standin: Any, tds: str) -> None:
    out = debian({**pipeline_env, "MSSQL_TDS_VERSION": tds}, "-m", "facusync.cli", "check")
    assert out.returncode == 0, out.stdout + out.stderr
