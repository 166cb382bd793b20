"""SQL Server over TLS: the stand-in negotiates encryption as SQL Server does, and both
pymssql builds (Debian's 2.2.2 with FreeTDS 1.3.17 + GnuTLS, the PyPI wheel with its own
FreeTDS + OpenSSL) and `tsql` connect through it; every certificate or protocol problem
reaches the operator as one line naming the setting to change, never a password.

Certificates come from a throwaway CA (devstack/tlsca.py); nothing about TLS is faked.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devstack.standin.harness import StandIn
from devstack.tlsca import KeyPair, TestCA
from facusync.config import Config, ConfigError, config_from_mapping
from facusync.errors import SourceError
from facusync.freetdsconf import use_freetds_conf
from facusync.mssqlconn import connect_mssql
from facusync.mssqltls import probe_tls

REPO = Path(__file__).resolve().parents[2]
DEBIAN_PYTHON = "/usr/bin/python3"
HAS_DEBIAN_PYMSSQL = Path("/usr/lib/python3/dist-packages/pymssql").exists()

pytestmark = pytest.mark.timeout(240)

# Connect with facusync's own code and report what SQL Server says about the session.
CLIENT = """
import json, sys
from facusync.config import load_config
from facusync.errors import SourceError
from facusync.mssqlconn import connect_mssql
import pymssql
try:
    conn = connect_mssql(load_config())
except SourceError as exc:
    print(json.dumps({"error": str(exc)}))
    sys.exit(0)
cur = conn.cursor()
cur.execute("SELECT CONNECTIONPROPERTY('encrypt_option'), COUNT(*) FROM VW_VENTAS_SYNC")
option, rows = cur.fetchone()
cur.execute("SELECT encrypt_option FROM sys.dm_exec_connections WHERE session_id = @@SPID")
dmv = cur.fetchone()[0]
print(json.dumps({"encrypt_option": option, "dmv": dmv, "rows": rows, "pymssql": pymssql.__version__}))
"""


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> TestCA:
    return TestCA(tmp_path_factory.mktemp("ca"))


@pytest.fixture(scope="module")
def server_cert(ca: TestCA) -> KeyPair:
    return ca.issue("standin")


@pytest.fixture(autouse=True)
def _own_freetds_conf(monkeypatch: pytest.MonkeyPatch) -> None:
    """connect_mssql points FREETDSCONF at its private file; undo that after each test."""
    monkeypatch.delenv("FREETDSCONF", raising=False)


def start_standin(tmp_path: Path, encryption: str, pair: KeyPair | None,
                  versions: tuple[str, str] = ("1.2", "1.2"), host: str = "127.0.0.1") -> StandIn:
    server = StandIn(tmp_path / f"standin-{encryption}", encryption=encryption, host=host,
                     certificate=(pair.cert, pair.key) if pair else None, tls_versions=versions)
    server.start()
    server.seed(40, seed=3)
    return server


def mssql_env(server: StandIn, **settings: str) -> dict[str, str]:
    """Only the SQL Server half matters here; PostgreSQL settings are placeholders."""
    return {**server.env(), "PG_HOST": "127.0.0.1", "PG_USER": "unused", "PG_PASSWORD": "unused",
            "MSSQL_LOGIN_TIMEOUT": "4", **settings}


def run_client(python: str, env: dict[str, str]) -> dict[str, Any]:
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith(("VIRTUAL_ENV", "PYTHON", "MSSQL_", "FREETDS", "TDS"))}
    clean["PYTHONPATH"] = str(REPO)
    if python == DEBIAN_PYTHON:
        clean["PATH"] = "/usr/bin:/bin"
    out = subprocess.run([python, "-c", CLIENT], env={**clean, **env}, capture_output=True,
                         text=True, timeout=120, cwd="/")
    assert out.returncode == 0, out.stdout + out.stderr
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


BUILDS = [pytest.param(sys.executable, id="pypi-wheel"),
          pytest.param(DEBIAN_PYTHON, id="debian-2.2.2",
                       marks=pytest.mark.skipif(not HAS_DEBIAN_PYMSSQL,
                                                reason="python3-pymssql is not installed"))]


def tls_sessions(server: StandIn) -> list[str]:
    return [line for line in server.log_path.read_text().splitlines() if "TLS up" in line]


@pytest.mark.parametrize("python", BUILDS)
@pytest.mark.parametrize(("mode", "whole_session", "tls"), [
    ("not_sup", "FALSE", False),  # no certificate: plaintext, as before
    ("off", "FALSE", True),  # SQL Server's default: TLS for the login packet, then plaintext
    ("on", "TRUE", True),  # Force Encryption: the whole session over TLS
])
def test_each_server_mode_with_the_default_setting(tmp_path: Path, ca: TestCA, server_cert: KeyPair,
                                                   python: str, mode: str, whole_session: str,
                                                   tls: bool) -> None:
    server = start_standin(tmp_path, mode, server_cert if mode != "not_sup" else None)
    try:
        result = run_client(python, mssql_env(server, MSSQL_CA_FILE=str(ca.ca.cert))
                            if tls else mssql_env(server))
        assert result.get("error") is None, result
        assert result["encrypt_option"] == result["dmv"] == whole_session and result["rows"] == 40
        assert len(tls_sessions(server)) == (1 if tls else 0)
        if tls:  # the stand-in caps TLS at 1.2, as SQL Server 2016 does
            assert "TLSv1.2" in tls_sessions(server)[0]
    finally:
        server.stop()


@pytest.mark.parametrize("python", BUILDS)
def test_require_encrypts_the_whole_session_even_when_the_server_does_not_force_it(
        tmp_path: Path, ca: TestCA, server_cert: KeyPair, python: str) -> None:
    server = start_standin(tmp_path, "off", server_cert)
    try:
        result = run_client(python, mssql_env(server, MSSQL_ENCRYPT="require",
                                              MSSQL_CA_FILE=str(ca.ca.cert)))
        assert result.get("encrypt_option") == "TRUE", result
    finally:
        server.stop()


BAD_CASES = {
    # name: (server certificate maker, CA file maker, TLS versions, words the message must have)
    "wrong CA": ("good", "other", ("1.2", "1.2"), ["not trusted", "MSSQL_CA_FILE"]),
    "expired": ("expired", "right", ("1.2", "1.2"), ["has expired", "renew"]),
    "host name": ("other-name", "right", ("1.2", "1.2"), ["does not name '127.0.0.1'", "MSSQL_HOST",
                                                          "MSSQL_CHECK_HOSTNAME=no"]),
    "TLS version": ("good", "right", ("1.0", "1.0"), ["no TLS version in common", "TLS 1.2"]),
}


@pytest.fixture(scope="module")
def bad_servers(tmp_path_factory: pytest.TempPathFactory, ca: TestCA,
                server_cert: KeyPair) -> Iterator[dict[str, tuple[StandIn, Path]]]:
    other = TestCA(tmp_path_factory.mktemp("other-ca"), name="another CA")
    certs = {"good": server_cert, "expired": ca.issue("expired", expired=True),
             "other-name": ca.issue("wrong-name", ("sql.example.test",))}
    cafiles = {"right": ca.ca.cert, "other": other.ca.cert}
    servers: dict[str, tuple[StandIn, Path]] = {}
    try:
        for name, (cert, cafile, versions, _words) in BAD_CASES.items():
            folder = tmp_path_factory.mktemp("bad")
            servers[name] = (start_standin(folder, "off", certs[cert], versions), cafiles[cafile])
        yield servers
    finally:
        for server, _cafile in servers.values():
            server.stop()


@pytest.mark.parametrize("python", BUILDS)
@pytest.mark.parametrize("case", list(BAD_CASES))
def test_bad_certificate_or_protocol_is_one_clear_line(bad_servers: dict[str, tuple[StandIn, Path]],
                                                       python: str, case: str) -> None:
    server, cafile = bad_servers[case]
    result = run_client(python, mssql_env(server, MSSQL_CA_FILE=str(cafile)))
    message = result.get("error") or ""
    assert message.startswith("SQL Server: "), result
    for words in BAD_CASES[case][3]:
        assert words in message, message
    assert "\n" not in message and server.password not in message


@pytest.mark.parametrize("python", BUILDS)
def test_unverified_encryption_still_refuses_tls_1_0(bad_servers: dict[str, tuple[StandIn, Path]],
                                                     python: str) -> None:
    """Without a CA file FreeTDS encrypts without verifying; it must still not fall to TLS 1.0
    (Debian's FreeTDS 1.3.17 would, without the `enable tls v1 = no` facusync writes)."""
    server, _cafile = bad_servers["TLS version"]
    result = run_client(python, mssql_env(server))
    assert "no TLS version in common" in (result.get("error") or ""), result


@pytest.mark.parametrize("python", BUILDS)
def test_tls_1_3_only_server(tmp_path: Path, ca: TestCA, server_cert: KeyPair, python: str) -> None:
    """What we learned: Debian's FreeTDS 1.3.17 (GnuTLS) never finishes a TLS 1.3 handshake
    inside PRELOGIN packets (its last handshake flight is not flushed; the login times out),
    while the wheel's FreeTDS 1.5 (OpenSSL) connects. SQL Server 2016 offers 1.2 at most."""
    server = start_standin(tmp_path, "on", server_cert, versions=("1.3", "1.3"))
    try:
        result = run_client(python, mssql_env(server, MSSQL_CA_FILE=str(ca.ca.cert),
                                              MSSQL_LOGIN_TIMEOUT="3"))
        if python == DEBIAN_PYTHON:
            assert "negotiates TLS 1.3, which FreeTDS 1.3 (Debian 12) cannot finish" in result["error"]
        else:
            assert result.get("encrypt_option") == "TRUE", result
    finally:
        server.stop()


def test_require_against_a_server_without_certificate(tmp_path: Path) -> None:
    server = start_standin(tmp_path, "not_sup", None)
    try:
        with pytest.raises(SourceError) as failure:
            connect_mssql(config_from_mapping(mssql_env(server, MSSQL_ENCRYPT="require")))
        assert "offers no encryption" in str(failure.value)
        assert "MSSQL_ENCRYPT=request" in str(failure.value)
    finally:
        server.stop()


def test_off_against_force_encryption(tmp_path: Path, server_cert: KeyPair) -> None:
    server = start_standin(tmp_path, "on", server_cert)
    try:
        with pytest.raises(SourceError, match=r"requires encryption .*MSSQL_ENCRYPT=request or require"):
            connect_mssql(config_from_mapping(mssql_env(server, MSSQL_ENCRYPT="off")))
        assert tls_sessions(server) == []
    finally:
        server.stop()


def test_probe_reports_version_scope_and_verification(tmp_path: Path, ca: TestCA,
                                                      server_cert: KeyPair) -> None:
    server = start_standin(tmp_path, "off", server_cert)
    try:
        verified = probe_tls(config_from_mapping(mssql_env(server, MSSQL_CA_FILE=str(ca.ca.cert))))
        assert (verified.encryption, verified.tls_version, verified.verified) == (
            "login only", "TLSv1.2", True)
        assert verified.describe() == "encrypted (login only), TLSv1.2, certificate verified"
        unverified = probe_tls(config_from_mapping(mssql_env(server, MSSQL_ENCRYPT="require")))
        assert unverified.encryption == "whole session" and not unverified.verified
        assert "NOT verified (set MSSQL_CA_FILE)" in unverified.describe()
    finally:
        server.stop()


def test_check_shows_the_sql_server_encryption(pipeline_env: dict[str, str], tmp_path: Path,
                                               ca: TestCA, server_cert: KeyPair) -> None:
    server = start_standin(tmp_path, "on", server_cert)
    try:
        env = {**os.environ, **pipeline_env, **server.env(), "MSSQL_CA_FILE": str(ca.ca.cert)}
        out = subprocess.run([sys.executable, "-m", "facusync.cli", "check"], env=env,
                             capture_output=True, text=True, timeout=60)
        line = next(row for row in out.stdout.splitlines() if "SQL Server" in row)
        assert out.returncode == 0, out.stdout + out.stderr
        assert "encrypted (whole session), TLSv1.2, certificate verified" in line
    finally:
        server.stop()


@pytest.mark.skipif(shutil.which("tsql") is None, reason="tsql (freetds-bin) is not installed")
@pytest.mark.parametrize(("mode", "encrypt", "whole_session"), [("off", "request", "FALSE"),
                                                                ("off", "require", "TRUE"),
                                                                ("on", "request", "TRUE")])
def test_tsql_through_the_same_freetds_conf(tmp_path: Path, ca: TestCA, server_cert: KeyPair,
                                            mode: str, encrypt: str, whole_session: str) -> None:
    """tsql (Debian's FreeTDS 1.3.17 + GnuTLS) with the freetds.conf facusync writes."""
    server = start_standin(tmp_path, mode, server_cert)
    try:
        cfg: Config = config_from_mapping(mssql_env(server, MSSQL_ENCRYPT=encrypt,
                                                    MSSQL_CA_FILE=str(ca.ca.cert)))
        conf = use_freetds_conf(cfg)
        env = {"PATH": "/usr/bin:/bin", "FREETDSCONF": str(conf)}
        out = subprocess.run(["tsql", "-S", f"{server.host}:{server.port}", "-U", server.user,
                              "-P", server.password, "-D", server.database],
                             input="SELECT CONNECTIONPROPERTY('encrypt_option')\ngo\nexit\n",
                             env=env, capture_output=True, text=True, timeout=60)
        assert whole_session in [line.strip() for line in out.stdout.splitlines()], out.stdout + out.stderr
        assert len(tls_sessions(server)) == 1
    finally:
        server.stop()


@pytest.mark.parametrize("python", BUILDS)
def test_another_freetds_conf_cannot_weaken_the_settings(tmp_path: Path, ca: TestCA,
                                                        server_cert: KeyPair, python: str) -> None:
    """Another freetds.conf turning encryption off for this very server ($FREETDS/etc here;
    ~/.freetds.conf and /etc/freetds/freetds.conf come after it in FreeTDS's search) is not
    used: FreeTDS finds the server's section in facusync's private file first and stops."""
    server = start_standin(tmp_path, "off", server_cert)
    other = tmp_path / "other"
    (other / "etc").mkdir(parents=True)
    (other / "etc" / "freetds.conf").write_text(
        f"[global]\n\tencryption = off\n[{server.host}:{server.port}]\n\thost = {server.host}\n"
        f"\tport = {server.port}\n\tencryption = off\n")
    try:
        result = run_client(python, {**mssql_env(server, MSSQL_ENCRYPT="require",
                                                 MSSQL_CA_FILE=str(ca.ca.cert)), "FREETDS": str(other)})
        assert result.get("encrypt_option") == "TRUE", result
    finally:
        server.stop()


def test_private_conf_holds_the_settings_and_no_password(tmp_path: Path, ca: TestCA) -> None:
    server = StandIn(tmp_path / "unstarted", port=14330)
    cfg = config_from_mapping(mssql_env(server, MSSQL_ENCRYPT="require", MSSQL_CA_FILE=str(ca.ca.cert),
                                        MSSQL_CHECK_HOSTNAME="no"))
    path = use_freetds_conf(cfg)
    assert os.environ["FREETDSCONF"] == str(path)
    assert oct(path.parent.stat().st_mode & 0o777) == "0o700"
    text = path.read_text()
    for line in (f"[{server.host}:{server.port}]", "encryption = require", f"ca file = {ca.ca.cert}",
                 "check certificate hostname = no", "enable tls v1 = no"):
        assert line in text
    assert server.password not in text


@pytest.mark.parametrize("python", BUILDS)
def test_pipeline_syncs_through_an_encrypted_verified_session(
        pipeline_env: dict[str, str], tmp_path: Path, ca: TestCA, server_cert: KeyPair,
        python: str) -> None:
    """The producer backfills 1500 rows from a Force Encryption server, verified against the
    CA; the consumer writes them; `verify` finds PostgreSQL equal to the view."""
    from facusync.operations.verify import compare

    server = start_standin(tmp_path, "on", server_cert)
    try:
        server.seed(1500, seed=11)
        env = {**pipeline_env, **server.env(), "MSSQL_ENCRYPT": "require",
               "MSSQL_CA_FILE": str(ca.ca.cert)}
        clean = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "PYTHON"))}
        clean["PYTHONPATH"] = str(REPO)
        for program in ("facusync.producer", "facusync.consumer"):
            out = subprocess.run([python, "-m", program, "--once"], env={**clean, **env}, cwd="/",
                                 capture_output=True, text=True, timeout=180)
            assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
        assert compare(config_from_mapping(env)).differences == 0
        assert len(tls_sessions(server)) >= 1
        assert all("TLSv1.2" in line for line in tls_sessions(server))
    finally:
        server.stop()


class Tap:
    """A TCP relay in front of the stand-in that records every byte both ways."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.to_server = bytearray()
        self.to_client = bytearray()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.target)
            threading.Thread(target=self._pump, args=(client, server, self.to_server), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, self.to_client), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket, record: bytearray) -> None:
        try:
            while data := src.recv(65536):
                record += data
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.listener.close()


def scrambled(password: str) -> bytes:
    """The password as LOGIN7 carries it: UTF-16LE, nibbles swapped, XOR 0xA5."""
    return bytes((((b << 4) | (b >> 4)) & 0xFF) ^ 0xA5 for b in password.encode("utf-16-le"))


@pytest.mark.parametrize(("mode", "password_hidden", "rows_hidden"), [
    ("not_sup", False, False),  # the control: the tap does see a plaintext login
    ("off", True, False),  # SQL Server's default: only the login is protected
    ("on", True, True),  # Force Encryption: nothing readable on the wire
])
def test_what_a_listener_on_the_wire_sees(tmp_path: Path, ca: TestCA, server_cert: KeyPair,
                                          mode: str, password_hidden: bool, rows_hidden: bool) -> None:
    server = start_standin(tmp_path, mode, server_cert if mode != "not_sup" else None)
    tap = Tap((server.host, server.port))
    try:
        settings = {"MSSQL_CA_FILE": str(ca.ca.cert)} if mode != "not_sup" else {}
        cfg = config_from_mapping({**mssql_env(server, **settings), "MSSQL_PORT": str(tap.port)})
        conn = connect_mssql(cfg)
        try:
            cur = conn.cursor()
            cur.execute("SELECT CONDUCE FROM VW_VENTAS_SYNC ORDER BY CONDUCE")
            first = cur.fetchall()[0][0]
        finally:
            conn.close()
        assert (scrambled(server.password) not in tap.to_server) == password_hidden
        assert (first.encode("utf-16-le") not in tap.to_client) == rows_hidden
    finally:
        tap.close()
        server.stop()


def test_private_conf_comes_back_when_tmp_is_cleaned(tmp_path: Path, ca: TestCA,
                                                     server_cert: KeyPair) -> None:
    """A long-running producer outlives systemd-tmpfiles' /tmp ageing: the next connection
    writes the file again instead of connecting without its settings."""
    server = start_standin(tmp_path, "off", server_cert)
    try:
        cfg = config_from_mapping(mssql_env(server, MSSQL_ENCRYPT="require",
                                            MSSQL_CA_FILE=str(ca.ca.cert)))
        connect_mssql(cfg).close()
        shutil.rmtree(Path(os.environ["FREETDSCONF"]).parent)
        conn = connect_mssql(cfg)
        try:
            cur = conn.cursor()
            cur.execute("SELECT CONNECTIONPROPERTY('encrypt_option')")
            assert cur.fetchone()[0] == "TRUE"
        finally:
            conn.close()
    finally:
        server.stop()


def _has_ipv6_loopback() -> bool:
    try:
        socket.create_server(("::1", 0), family=socket.AF_INET6).close()
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _has_ipv6_loopback(), reason="no IPv6 loopback (::1) on this host")
@pytest.mark.parametrize("python", BUILDS)
def test_an_ipv6_literal_host_connects_with_its_settings(tmp_path: Path, ca: TestCA,
                                                        server_cert: KeyPair, python: str) -> None:
    """MSSQL_HOST=::1 (an IPv6 literal, full of colons FreeTDS cannot tell from the port's)
    reaches the server, and the private freetds.conf's settings apply to it (require: the whole
    session encrypted, which the default `request` would not ask for)."""
    server = start_standin(tmp_path, "off", server_cert, host="::1")
    try:
        result = run_client(python, mssql_env(server, MSSQL_ENCRYPT="require",
                                              MSSQL_CA_FILE=str(ca.ca.cert),
                                              MSSQL_CHECK_HOSTNAME="no"))
        assert result.get("encrypt_option") == "TRUE", result
        assert result["rows"] == 40
    finally:
        server.stop()


@pytest.mark.parametrize("python", BUILDS)
def test_a_password_with_odd_characters_logs_in_and_stays_out_of_the_conf(
        tmp_path: Path, python: str) -> None:
    """The characters freetds.conf and ODBC connection strings treat specially (; # { } = and
    quotes, blanks, non-ASCII) travel in the LOGIN7 packet only: the login succeeds and the
    private freetds.conf never holds the password."""
    password = "Pa;ss#w}r{d= 'q' \"d\" \\ ñé"
    server = StandIn(tmp_path / "standin-odd", password=password)
    server.start()
    server.seed(40, seed=3)
    try:
        result = run_client(python, mssql_env(server))
        assert result.get("error") is None and result["rows"] == 40, result
        cfg = config_from_mapping(mssql_env(server))
        assert password not in use_freetds_conf(cfg).read_text()
    finally:
        server.stop()


@pytest.mark.parametrize("folder", ["one blank", "two  blanks", "tab\there"])
def test_a_ca_file_path_with_blanks_verifies_or_is_refused_at_start(
        tmp_path: Path, ca: TestCA, server_cert: KeyPair, folder: str) -> None:
    """freetds.conf has no quoting and folds runs of blanks into one space: a CA path that
    FreeTDS would read differently must be a configuration error naming MSSQL_CA_FILE, never
    a TLS failure at connect time; any other path must work."""
    server = start_standin(tmp_path, "on", server_cert)
    (tmp_path / folder).mkdir()
    path = tmp_path / folder / "ca.pem"
    shutil.copy(ca.ca.cert, path)
    try:
        env = mssql_env(server, MSSQL_ENCRYPT="require", MSSQL_CA_FILE=str(path))
        try:
            config_from_mapping(env)
        except ConfigError as exc:
            assert "MSSQL_CA_FILE" in str(exc) and folder != "one blank"
            return
        result = run_client(sys.executable, env)
        assert result.get("encrypt_option") == "TRUE", result
    finally:
        server.stop()


def test_a_port_that_closes_at_once_is_one_clear_line(tmp_path: Path) -> None:
    """MSSQL_PORT on something that accepts and hangs up (another service, a proxy without a
    backend, a server out of connections): FreeTDS says only "connection failed" (20002) and
    the probe cannot get further; the operator still gets one line naming what to check, not
    the driver's tuple with its byte strings."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def hang_up() -> None:
        with contextlib.suppress(OSError):
            while True:
                listener.accept()[0].close()

    threading.Thread(target=hang_up, daemon=True).start()
    try:
        cfg = config_from_mapping({"MSSQL_HOST": "127.0.0.1", "MSSQL_PORT": str(port),
                                   "MSSQL_USER": "u", "MSSQL_PASSWORD": "pw-not-shown",
                                   "PG_HOST": "127.0.0.1", "PG_USER": "u", "PG_PASSWORD": "p",
                                   "MSSQL_LOGIN_TIMEOUT": "3"})
        with pytest.raises(SourceError) as failure:
            connect_mssql(cfg)
        message = str(failure.value)
        assert "MSSQL_HOST" in message and "MSSQL_PORT" in message, message
        assert "DB-Lib" not in message and "b'" not in message and "\n" not in message
        assert "pw-not-shown" not in message
    finally:
        listener.close()
