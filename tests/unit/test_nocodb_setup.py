"""`facusync nocodb-setup`'s settings: every problem named at once, secrets never printed,
and it runs without facusync's own configuration (it reads its own variables)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from devstack.servers import free_port
from facusync.cli import main

REPO = Path(__file__).resolve().parents[2]
VARIABLES = ("NOCODB_URL", "NOCODB_TOKEN", "NOCODB_EMAIL", "NOCODB_PASSWORD", "PG_HOST", "PG_PORT",
             "PG_DATABASE", "PG_NOCODB_ROLE", "PG_NOCODB_ROLE_PASSWORD", "FACUSYNC_ENV_FILE",
             "MSSQL_HOST", "MSSQL_USER", "MSSQL_PASSWORD")


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in VARIABLES:
        monkeypatch.delenv(name, raising=False)


def test_missing_settings_are_all_named(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["nocodb-setup"]) == 78
    err = capsys.readouterr().err
    for missing in ("--url or NOCODB_URL", "NOCODB_TOKEN", "--pg-host or PG_HOST",
                    "--pg-database or PG_DATABASE"):
        assert missing in err, err


def test_bad_values_are_named(capsys: pytest.CaptureFixture[str],
                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOCODB_TOKEN", "tok-secret-123")
    code = main(["nocodb-setup", "--url", "ftp://nocodb", "--pg-host", "db", "--pg-port", "99999",
                 "--pg-database", "syncdb", "--invite", "not-an-address"])
    err = capsys.readouterr().err
    assert code == 78
    assert "'ftp://nocodb' is not an http" in err and "'99999' is not a TCP port" in err
    assert "--invite 'not-an-address' is not an e-mail address" in err
    assert "tok-secret-123" not in err


def test_unreadable_env_file_is_its_configuration_problem(capsys: pytest.CaptureFixture[str],
                                                          tmp_path: Path) -> None:
    """nocodb-setup reads its --env-file through facusync's own reader but keeps its exit
    status: 78, configuration missing, naming the file and why."""
    missing = tmp_path / "missing.env"
    assert main(["nocodb-setup", "--env-file", str(missing)]) == 78
    err = capsys.readouterr().err
    assert f"cannot read --env-file {missing}: No such file or directory" in err, err


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run the command as another user")
def test_env_file_unreadable_by_permission_still_exits_78() -> None:
    """Unlike facusync's own commands (77, use sudo), nocodb-setup runs on any host as anyone:
    a file it may not read is its configuration problem, exit 78."""
    folder = Path(tempfile.mkdtemp(prefix="facusync-perm-"))  # /tmp: others may enter it
    folder.chmod(0o755)
    env_file = folder / "nocodb.env"
    env_file.write_text("NOCODB_TOKEN=tok-secret\n")
    env_file.chmod(0o600)
    try:
        out = subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
                              sys.executable, "-m", "facusync.cli", "nocodb-setup", "--env-file",
                              str(env_file)],
                             capture_output=True, text=True, timeout=60, cwd=REPO,
                             env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)})
    finally:
        shutil.rmtree(folder)
    assert out.returncode == 78, out.stderr
    assert f"cannot read --env-file {env_file}: Permission denied" in out.stderr


def test_unreachable_nocodb_exits_69_without_secrets(capsys: pytest.CaptureFixture[str],
                                                     monkeypatch: pytest.MonkeyPatch,
                                                     tmp_path: Path) -> None:
    env_file = tmp_path / "nocodb.env"
    env_file.write_text(f"NOCODB_URL=http://127.0.0.1:{free_port()}\nPG_HOST=127.0.0.1\n"
                        "PG_DATABASE=syncdb\nNOCODB_TOKEN='tok-secret-456'\n"
                        "PG_NOCODB_ROLE_PASSWORD=pw-secret-789\n")
    # No MSSQL_* anywhere: facusync's own configuration is not needed.
    code = main(["nocodb-setup", "--env-file", str(env_file)])
    out = capsys.readouterr()
    assert code == 69, out
    assert "cannot reach NocoDB at http://127.0.0.1:" in out.err
    assert "secret" not in out.err + out.out
