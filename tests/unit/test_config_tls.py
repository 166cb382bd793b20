"""TLS settings: validated at start-up, incoherent combinations refused with the variable named."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from devstack.tlsca import TestCA
from facusync import config
from facusync.config import ConfigError, ca_bundle, config_from_mapping
from tests.unit.test_config import GOOD, SECRETS

KEY = "-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----\n"


@pytest.fixture()
def pem(tmp_path: Path) -> dict[str, str]:
    cert = TestCA(tmp_path / "ca").ca.cert.read_text()  # real: CA files are parsed at start-up
    (tmp_path / "ca.crt").write_text(cert)
    (tmp_path / "client.crt").write_text(cert)
    (tmp_path / "client.key").write_text(KEY)
    return {name: str(tmp_path / f"{name}") for name in ("ca.crt", "client.crt", "client.key")}


def problems(**settings: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        config_from_mapping(dict(GOOD, **settings))
    return info.value.problems


def test_defaults_keep_todays_behaviour() -> None:
    cfg = config_from_mapping(GOOD)
    assert cfg.pg_sslmode == "prefer" and cfg.pg_sslrootcert == "" and cfg.pg_sslcert == ""
    assert cfg.redis_tls is False and cfg.redis_ca_file == ""


def test_verified_settings_are_accepted(pem: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(config, "SYSTEM_CA_BUNDLE", pem["ca.crt"])  # whatever this host has
    cfg = config_from_mapping(dict(
        GOOD, PG_SSLMODE="VERIFY-FULL", PG_SSLROOTCERT=pem["ca.crt"], PG_SSLCERT=pem["client.crt"],
        PG_SSLKEY=pem["client.key"], REDIS_TLS="on", REDIS_CA_FILE="system",
        REDIS_CERT_FILE=pem["client.crt"], REDIS_KEY_FILE=pem["client.key"]))
    assert cfg.pg_sslmode == "verify-full" and cfg.redis_tls
    assert ca_bundle(cfg.redis_ca_file) == pem["ca.crt"]
    assert ca_bundle(cfg.pg_sslrootcert) == pem["ca.crt"]


def test_system_needs_the_ca_certificates_bundle(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(config, "SYSTEM_CA_BUNDLE", str(tmp_path / "absent.crt"))
    found = problems(REDIS_TLS="on", REDIS_CA_FILE="system")
    assert found == [f"REDIS_CA_FILE=system needs {tmp_path / 'absent.crt'}: install the "
                     "ca-certificates package, or give the CA file's path"]


def test_unknown_modes_are_named() -> None:
    found = problems(PG_SSLMODE="strict", REDIS_TLS="yes")
    assert any(p.startswith("PG_SSLMODE='strict' is not one of disable, allow, prefer") for p in found)
    assert any(p.startswith("REDIS_TLS='yes' is not one of off, on") for p in found)


def test_verification_needs_a_ca_file() -> None:
    found = problems(PG_SSLMODE="verify-full", REDIS_TLS="on")
    assert any("PG_SSLMODE=verify-full needs PG_SSLROOTCERT" in p for p in found)
    assert any("REDIS_TLS=on needs REDIS_CA_FILE" in p for p in found)
    assert len(found) == 2


def test_unreadable_or_wrong_files_are_named(pem: dict[str, str], tmp_path: Path) -> None:
    found = problems(PG_SSLMODE="verify-ca", PG_SSLROOTCERT=str(tmp_path / "nope.crt"),
                     REDIS_TLS="on", REDIS_CA_FILE=pem["client.key"])
    assert any(p.startswith(f"PG_SSLROOTCERT='{tmp_path / 'nope.crt'}' cannot be read (No such file")
               for p in found)
    assert any(p.startswith("REDIS_CA_FILE=") and "holds no PEM certificate" in p for p in found)


def test_a_damaged_ca_file_is_refused_at_start_up(tmp_path: Path) -> None:
    damaged = tmp_path / "damaged.crt"
    damaged.write_text("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    found = problems(PG_SSLMODE="verify-full", PG_SSLROOTCERT=str(damaged))
    assert found[0].startswith(f"PG_SSLROOTCERT='{damaged}' is not a valid PEM certificate file")


def test_incoherent_combinations_are_refused(pem: dict[str, str]) -> None:
    found = problems(PG_SSLROOTCERT=pem["ca.crt"], PG_SSLCERT=pem["client.crt"],
                     REDIS_CA_FILE=pem["ca.crt"], REDIS_KEY_FILE=pem["client.key"])
    assert "PG_SSLROOTCERT is set but PG_SSLMODE=prefer does not verify the server: set " \
           "PG_SSLMODE=verify-full (or remove PG_SSLROOTCERT)" in found
    assert "PG_SSLCERT is set but PG_SSLKEY is not: a client certificate needs both" in found
    assert "REDIS_KEY_FILE is set but REDIS_CERT_FILE is not: a client certificate needs both" in found
    assert "REDIS_CA_FILE is set but REDIS_TLS=off: set REDIS_TLS=on (or remove REDIS_CA_FILE)" in found
    assert len(found) == 4


def test_cli_exits_78_naming_the_tls_variable(tmp_path: Path) -> None:
    f = tmp_path / "tls.env"
    f.write_text("\n".join(f"{k}={v}" for k, v in GOOD.items())
                 + f"\nPG_SSLMODE=verify-full\nPG_SSLROOTCERT={tmp_path}/missing-ca.crt\n")
    out = subprocess.run([sys.executable, "-m", "facusync.cli", "--env-file", str(f), "check"],
                         capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin"})
    assert out.returncode == 78, out.stderr
    assert f"PG_SSLROOTCERT='{tmp_path}/missing-ca.crt' cannot be read" in out.stderr
    assert not any(s in out.stdout + out.stderr for s in SECRETS)
