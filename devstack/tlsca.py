"""A throwaway certificate authority for the TLS tests, made with the openssl command.

Real servers (PostgreSQL, Redis, the SQL Server stand-in) are given certificates signed by a
CA that exists only for one test session, so verification is exercised for real: the right CA
passes, another CA, an expired certificate or a wrong host name each fail. Nothing is faked.
"""

from __future__ import annotations

import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

LOOPBACK_NAMES = ("localhost", "127.0.0.1")


@dataclass(frozen=True)
class KeyPair:
    """A certificate and its private key, as PEM files."""

    cert: Path
    key: Path


def _openssl(*args: str | Path) -> None:
    subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True)


def _subject_alt_names(names: tuple[str, ...]) -> str:
    parts = [f"IP:{n}" if n.replace(".", "").isdigit() else f"DNS:{n}" for n in names]
    return "subjectAltName=" + ",".join(parts)


class TestCA:
    """One self-signed CA in its own directory; issues server and client certificates."""

    __test__ = False  # not a pytest class

    def __init__(self, directory: Path | None = None, name: str = "facusync test CA") -> None:
        self.directory = directory or Path(tempfile.mkdtemp(prefix="facusync-ca-"))
        self.directory.mkdir(parents=True, exist_ok=True)
        self.ca = KeyPair(self.directory / "ca.crt", self.directory / "ca.key")
        _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "30",
                 "-subj", f"/CN={name}", "-keyout", self.ca.key, "-out", self.ca.cert,
                 "-addext", "basicConstraints=critical,CA:TRUE",
                 "-addext", "keyUsage=critical,keyCertSign,cRLSign")
        self.ca.key.chmod(0o600)

    def issue(self, stem: str, names: tuple[str, ...] = LOOPBACK_NAMES, *, days: int = 30,
              expired: bool = False, client: bool = False) -> KeyPair:
        """A certificate for `names` (the first is the CN), valid `days`, or already expired."""
        pair = KeyPair(self.directory / f"{stem}.crt", self.directory / f"{stem}.key")
        csr = self.directory / f"{stem}.csr"
        ext = self.directory / f"{stem}.ext"
        usage = "clientAuth" if client else "serverAuth"
        ext.write_text(f"{_subject_alt_names(names)}\nextendedKeyUsage={usage}\n"
                       "basicConstraints=CA:FALSE\n")
        _openssl("req", "-new", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={names[0]}",
                 "-keyout", pair.key, "-out", csr)
        if expired:
            _backdate(pair, self.ca, csr, ext)
        else:
            _openssl("x509", "-req", "-in", csr, "-CA", self.ca.cert, "-CAkey", self.ca.key,
                     "-CAcreateserial", "-out", pair.cert, "-extfile", ext, "-days", str(days))
        pair.key.chmod(0o600)
        return pair


def _backdate(pair: KeyPair, ca: KeyPair, csr: Path, ext: Path) -> None:
    """Re-sign `pair` with a validity window that ended yesterday (faketime-free)."""
    conf = csr.with_suffix(".cnf")
    db = csr.with_suffix(".db")
    db.write_text("")
    conf.write_text(
        "[ca]\ndefault_ca=tca\n[tca]\n"
        f"database={db}\nnew_certs_dir={csr.parent}\nserial={csr.with_suffix('.serial')}\n"
        "default_md=sha256\npolicy=anything\ncopy_extensions=copy\nunique_subject=no\n"
        "[anything]\ncommonName=supplied\n"
    )
    csr.with_suffix(".serial").write_text("1000\n")
    _openssl("ca", "-batch", "-config", conf, "-cert", ca.cert, "-keyfile", ca.key,
             "-in", csr, "-out", pair.cert, "-extfile", ext, "-notext",
             "-startdate", "20200101000000Z", "-enddate", "20200102000000Z")
