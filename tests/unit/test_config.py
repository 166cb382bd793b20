"""Configuration: every problem reported at once, exit 78, and no password ever printed."""

from __future__ import annotations

import logging
import re
import subprocess
import sys
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
