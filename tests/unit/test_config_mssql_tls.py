"""MSSQL_ENCRYPT, MSSQL_CA_FILE and MSSQL_CHECK_HOSTNAME: defaults that keep today's
behaviour, and every wrong value refused at start-up (exit 78) with the variable named."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from devstack.tlsca import TestCA
from facusync.config import ConfigError, config_from_mapping
from facusync.freetdsconf import freetds_conf_text

GOOD = {"MSSQL_HOST": "sqlserver.example.invalid", "MSSQL_USER": "facusync_ro",
        "MSSQL_PASSWORD": "ms-Secret-123", "PG_HOST": "127.0.0.1", "PG_USER": "facusync_sync",
        "PG_PASSWORD": "pg-Secret-456"}


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> TestCA:
    return TestCA(tmp_path_factory.mktemp("ca"))


def problems(**settings: str) -> str:
    with pytest.raises(ConfigError) as failure:
        config_from_mapping({**GOOD, **settings})
    return str(failure.value)


def test_defaults_request_encryption_without_verification() -> None:
    cfg = config_from_mapping(GOOD)
    assert (cfg.mssql_encrypt, cfg.mssql_ca_file, cfg.mssql_check_hostname) == ("request", "", True)
    text = freetds_conf_text(cfg)
    assert "encryption = request" in text and "ca file" not in text
    assert "[sqlserver.example.invalid:1433]" in text and "port = 1433" in text


def test_ca_file_turns_on_certificate_and_host_name_checks(ca: TestCA) -> None:
    cfg = config_from_mapping({**GOOD, "MSSQL_ENCRYPT": "Require", "MSSQL_CA_FILE": str(ca.ca.cert),
                               "MSSQL_CHECK_HOSTNAME": "no"})
    assert cfg.mssql_encrypt == "require"
    text = freetds_conf_text(cfg)
    assert f"ca file = {ca.ca.cert}" in text and "check certificate hostname = no" in text


def test_unknown_encryption_mode_is_named() -> None:
    assert "MSSQL_ENCRYPT='yes' is not one of off, request, require" in problems(MSSQL_ENCRYPT="yes")


@pytest.mark.parametrize(("content", "words"), [
    (None, "cannot be read"),
    ("not a certificate\n", "holds no PEM certificate"),
    ("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", "not a valid PEM"),
])
def test_bad_ca_file_is_named(tmp_path: Path, content: str | None, words: str) -> None:
    path = tmp_path / "ca.pem"
    if content is not None:
        path.write_text(content)
    message = problems(MSSQL_CA_FILE=str(path))
    assert f"MSSQL_CA_FILE='{path}'" in message and words in message


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_unreadable_ca_file_is_named(tmp_path: Path, ca: TestCA) -> None:
    path = tmp_path / "ca.pem"
    path.write_bytes(ca.ca.cert.read_bytes())
    path.chmod(0)
    try:
        assert "cannot be read (Permission denied)" in problems(MSSQL_CA_FILE=str(path))
    finally:
        path.chmod(0o600)


def test_comment_characters_in_the_path_are_refused(tmp_path: Path, ca: TestCA) -> None:
    folder = tmp_path / "a#b"
    folder.mkdir()
    path = folder / "ca.pem"
    path.write_bytes(ca.ca.cert.read_bytes())
    assert "contains ; or #" in problems(MSSQL_CA_FILE=str(path))


def test_ca_file_with_encryption_off_is_a_contradiction(ca: TestCA) -> None:
    message = problems(MSSQL_ENCRYPT="off", MSSQL_CA_FILE=str(ca.ca.cert))
    assert "MSSQL_CA_FILE is set but MSSQL_ENCRYPT=off" in message


def test_bad_hostname_flag_is_named() -> None:
    assert "MSSQL_CHECK_HOSTNAME='maybe'" in problems(MSSQL_CHECK_HOSTNAME="maybe")


def test_daemon_exits_78_naming_the_ca_file(tmp_path: Path) -> None:
    env_file = tmp_path / "bad.env"
    missing = tmp_path / "missing-ca.pem"
    env_file.write_text("\n".join(f"{k}={v}" for k, v in GOOD.items()) + f"\nMSSQL_CA_FILE={missing}\n")
    out = subprocess.run([sys.executable, "-m", "facusync.producer", "--env-file", str(env_file)],
                         capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin"})
    assert out.returncode == 78, out.stderr
    assert f"MSSQL_CA_FILE='{missing}' cannot be read" in out.stdout + out.stderr
    assert "ms-Secret-123" not in out.stdout + out.stderr


@pytest.mark.parametrize("host", ["db # the primary", "db;backup", "[::1]", "db\n\tencryption = off",
                                  "db server"])
def test_a_host_freetds_conf_cannot_carry_is_refused(host: str) -> None:
    """freetds.conf cuts a value at # or ;, collapses spaces and ends a section name at ]; a
    newline would add a setting of its own (encryption = off). Such a MSSQL_HOST (an inline
    comment systemd keeps in the value, an IPv6 address in brackets) is named at start-up."""
    assert "MSSQL_HOST" in problems(MSSQL_HOST=host)


@pytest.mark.parametrize("host", ["sqlserver.example.invalid", "10.0.0.5", "::1", "fe80::1%eth0",
                                  "SQL-01"])
def test_host_names_and_ip_addresses_are_accepted(host: str) -> None:
    assert config_from_mapping({**GOOD, "MSSQL_HOST": host}).mssql_host == host


def test_a_named_instance_says_to_use_its_port() -> None:
    r"""SERVER\SQLEXPRESS is how SQL Server people name an instance; facusync connects by TCP
    port (no SQL Browser), so the message says which port to set."""
    message = problems(MSSQL_HOST="sqlserver.example.invalid\\SQLEXPRESS")
    assert "MSSQL_HOST" in message and "MSSQL_PORT" in message and "instance" in message
