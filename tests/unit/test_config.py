"""Configuration: every problem reported at once, exit 78, and no password ever printed."""

from __future__ import annotations

import grp
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from facusync.config import ConfigError, config_from_mapping, load_config, parse_env_file

GOOD = {
    "MSSQL_HOST": "sqlserver.example.invalid",
    "MSSQL_USER": "facusync_ro",
    "MSSQL_PASSWORD": "ms-Secret-123",
    "PG_HOST": "127.0.0.1",
    "PG_USER": "facusync_sync",
    "PG_PASSWORD": "pg-Secret-456",
    "REDIS_PASSWORD": "redis-Secret-789",
}
SECRETS = ("ms-Secret-123", "pg-Secret-456", "redis-Secret-789")
REPO = Path(__file__).resolve().parents[2]


def test_defaults_follow_the_original_design() -> None:
    cfg = config_from_mapping(GOOD)
    assert cfg.mssql_view == "VW_VENTAS_SYNC"
    assert cfg.pg_table_vista == "datos_vista" and cfg.pg_table_seguimiento == "datos_seguimiento"
    assert cfg.sync_interval == 10 and cfg.sync_start.year == 2000
    assert cfg.redis_port == 6379 and cfg.redis_prefix == "facusync:"
    assert cfg.source_timezone == "America/Santo_Domingo"


def test_config_is_immutable() -> None:
    cfg = config_from_mapping(GOOD)
    with pytest.raises(AttributeError):
        cfg.batch_size = 5  # type: ignore[misc]


def test_every_problem_is_reported_together() -> None:
    bad = dict(GOOD, MSSQL_PORT="abc", PG_PORT="70000", MSSQL_VIEW="ventas; drop table x",
               PG_TABLE_VISTA="1abc", PG_TABLE_SEGUIMIENTO="seg-uimiento", SYNC_INTERVAL="-1",
               SOURCE_TIMEZONE="Mars/Olympus", LOG_LEVEL="chatty")
    del bad["PG_USER"]
    with pytest.raises(ConfigError) as info:
        config_from_mapping(bad)
    text = str(info.value)
    for expected in ("MSSQL_PORT='abc' is not a whole number", "PG_PORT=70000 is out of range",
                     "MSSQL_VIEW=", "not a valid SQL identifier", "PG_TABLE_VISTA='1abc'",
                     "PG_TABLE_SEGUIMIENTO='seg-uimiento'", "SYNC_INTERVAL=-1 is out of range",
                     "SOURCE_TIMEZONE='Mars/Olympus'", "LOG_LEVEL='chatty'", "PG_USER is missing"):
        assert expected in text
    assert len(info.value.problems) == 9


def test_qualified_view_name_is_accepted() -> None:
    assert config_from_mapping(dict(GOOD, MSSQL_VIEW="dbo.VW_VENTAS_SYNC")).mssql_view == "dbo.VW_VENTAS_SYNC"


def test_placeholders_are_refused() -> None:
    with pytest.raises(ConfigError, match="MSSQL_PASSWORD still holds the placeholder"):
        config_from_mapping(dict(GOOD, MSSQL_PASSWORD="CHANGE_ME"))


def test_secrets_never_appear_in_repr_or_errors(caplog: pytest.LogCaptureFixture) -> None:
    cfg = config_from_mapping(GOOD)
    logging.getLogger("t").warning("config %s %r", cfg, cfg)
    text = repr(cfg) + str(cfg) + caplog.text + str(cfg.pg_password) + f"{cfg.mssql_password}"
    assert not any(s in text for s in SECRETS)
    with pytest.raises(ConfigError) as info:
        config_from_mapping(dict(GOOD, PG_PORT="x" + GOOD["PG_PASSWORD"][:0]))
    assert not any(s in str(info.value) for s in SECRETS)
    assert cfg.pg_password.reveal() == "pg-Secret-456"


def test_env_file_syntax_and_environment_wins(tmp_path: Path) -> None:
    text = (
        "# a comment\n; another\n\nMSSQL_HOST=db.example.invalid\n"
        "MSSQL_USER = 'reader'\nMSSQL_PASSWORD=\"with \\\"quotes\\\" and # hash\"\n"
        "PG_HOST=127.0.0.1\nPG_USER=u\nPG_PASSWORD=p\nBATCH_SIZE=20\\\n00\n"
    )
    parsed = parse_env_file(text)
    assert parsed["MSSQL_USER"] == "reader"
    assert parsed["MSSQL_PASSWORD"] == 'with "quotes" and # hash'
    assert parsed["BATCH_SIZE"] == "2000"
    f = tmp_path / "f.env"
    f.write_text(text)
    cfg = load_config(f, environ={"BATCH_SIZE": "7"})
    assert cfg.batch_size == 7 and cfg.mssql_host == "db.example.invalid"


def test_empty_environment_variable_leaves_the_env_file_value(tmp_path: Path) -> None:
    """The facusync commands and nocodb-setup merge the file and the environment alike: a
    variable exported empty counts as unset, so it does not hide the file's value."""
    f = tmp_path / "f.env"
    f.write_text("\n".join(f"{k}={v}" for k, v in GOOD.items()) + "\n")
    cfg = load_config(f, environ={"PG_HOST": "", "BATCH_SIZE": "7"})
    assert cfg.pg_host == "127.0.0.1" and cfg.batch_size == 7


def test_unreadable_env_file_names_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"cannot read env file .*missing\.env"):
        load_config(tmp_path / "missing.env", environ={})


@pytest.mark.parametrize("program", ["facusync.producer", "facusync.consumer", "facusync.cli"])
def test_daemons_exit_78_on_bad_config_without_leaking(program: str, tmp_path: Path) -> None:
    f = tmp_path / "bad.env"
    f.write_text("\n".join(f"{k}={v}" for k, v in GOOD.items()) + "\nPG_PORT=notaport\nMSSQL_HOST=\n")
    args = [sys.executable, "-m", program, "--env-file", str(f)]
    if program == "facusync.cli":
        args += ["check"]
    out = subprocess.run(args, capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin"})
    assert out.returncode == 78, out.stderr
    both = out.stdout + out.stderr
    assert "PG_PORT='notaport' is not a whole number" in both
    assert "MSSQL_HOST is missing" in both
    assert str(f) in both
    assert not any(s in both for s in SECRETS)


def test_env_file_does_not_invite_role_passwords() -> None:
    """The daemons' env file (shipped as /etc/facusync/facusync.env) must not ask for the
    roles' passwords: the daemons never need them, and the NocoDB role's password would sit
    in a file the service user can read. `migrate --create-roles` asks for them instead."""
    example = (Path(__file__).resolve().parents[2] / "facusync.env.example").read_text()
    settings = re.findall(r"^#?([A-Z][A-Z0-9_]*)=", example, flags=re.MULTILINE)
    assert "PG_PASSWORD" in settings and "PG_NOCODB_ROLE" in settings
    assert "PG_NOCODB_ROLE_PASSWORD" not in settings
    assert "PG_SYNC_ROLE_PASSWORD" not in settings


def test_metrics_and_reconcile_settings_are_validated() -> None:
    cfg = config_from_mapping(GOOD)
    assert (cfg.metrics_address, cfg.metrics_producer_port, cfg.metrics_consumer_port) == \
        ("127.0.0.1", None, None)  # off unless a port is set
    assert cfg.reconcile_interval == 3600
    cfg = config_from_mapping(dict(GOOD, METRICS_PRODUCER_PORT="9741", METRICS_CONSUMER_PORT="9742",
                                   METRICS_ADDRESS="::1", RECONCILE_INTERVAL="900"))
    assert (cfg.metrics_producer_port, cfg.metrics_consumer_port, cfg.metrics_address) == (9741, 9742, "::1")
    assert cfg.reconcile_interval == 900
    with pytest.raises(ConfigError) as info:
        config_from_mapping(dict(GOOD, METRICS_ADDRESS="localhost", METRICS_PRODUCER_PORT="70000",
                                 METRICS_CONSUMER_PORT="nine", RECONCILE_INTERVAL="5"))
    text = str(info.value)
    for expected in ("METRICS_ADDRESS='localhost' is not an IP address",
                     "METRICS_PRODUCER_PORT=70000 is out of range",
                     "METRICS_CONSUMER_PORT='nine' is not a whole number",
                     "RECONCILE_INTERVAL=5 is out of range"):
        assert expected in text
    assert len(info.value.problems) == 4
    with pytest.raises(ConfigError) as info:
        config_from_mapping(dict(GOOD, METRICS_PRODUCER_PORT="9741", METRICS_CONSUMER_PORT="9741"))
    assert "each daemon needs its own port" in str(info.value)


def test_daemons_log_a_config_error_once(tmp_path: Path) -> None:
    """journald gets stdout and stderr: the error must be one line there, not two (issue 18)."""
    f = tmp_path / "bad.env"
    f.write_text("\n".join(f"{k}={v}" for k, v in GOOD.items()) + "\nBATCH_SIZE=0\n")
    out = subprocess.run([sys.executable, "-m", "facusync.consumer", "--env-file", str(f)],
                         capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin"})
    assert out.returncode == 78
    lines = (out.stdout + out.stderr).splitlines()
    assert sum("BATCH_SIZE=0 is out of range" in line for line in lines) == 1, lines


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run the command as another user")
def test_unreadable_env_file_is_a_permission_problem() -> None:
    """A non-root operator is told to use sudo (exit 77), not that the settings are wrong."""
    folder = Path(tempfile.mkdtemp(prefix="facusync-perm-"))  # /tmp: others may enter it
    folder.chmod(0o755)
    f = folder / "facusync.env"
    f.write_text("\n".join(f"{k}={v}" for k, v in GOOD.items()) + "\n")
    f.chmod(0o640)
    os.chown(f, 0, grp.getgrnam("adm").gr_gid)
    out = subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
                          sys.executable, "-m", "facusync.cli", "--env-file", str(f), "status"],
                         capture_output=True, text=True, timeout=60, cwd=REPO,
                         env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)})
    assert out.returncode == 77, out.stderr
    assert "invalid configuration" not in out.stderr
    assert f"cannot read {f}: permission denied" in out.stderr
    assert "sudo facusync" in out.stderr and "member of group adm" in out.stderr
    shutil.rmtree(folder)


def test_env_file_backslashes_read_as_systemd_reads_them() -> None:
    """What systemd 252 (Debian 12) hands the daemons from these lines, as recorded by
    tests/system/test_env_file_syntax.py: the admin commands must read the same passwords."""
    from tests.system.test_env_file_syntax import LINES

    assert parse_env_file("".join(line + "\n" for line in LINES)) == {
        "FX_PLAIN": "Pa;ss#w}rd ñ",
        "FX_BACKSLASH": "abcd",  # unquoted: a backslash escapes the next character
        "FX_TWO_BACKSLASHES": "x\\y",
        "FX_DOUBLE_QUOTED_BACKSLASH": "a\\b",  # in "": only \" \\ \` \$ are escapes
        "FX_SINGLE_QUOTED": 'a\\b "c',
        "FX_ESCAPED_QUOTES": 'with "q" and # hash',
        "FX_DOLLAR": "cost $5",
        "FX_SPACES": "spaced value",
        "FX_CONTINUED": "firstsecond",
    }
