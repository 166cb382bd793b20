"""A private freetds.conf for this process: how FreeTDS receives the TLS settings.

Debian 12's pymssql 2.2.2 has no argument for FreeTDS's `encryption`, `ca file` or
`check certificate hostname`; FreeTDS reads them only from a freetds.conf. So the first
connection writes one, derived from the Config, into a private directory (mode 0700,
removed at exit) and points the FREETDSCONF environment variable at it. Its one section is
named `[host:port]` (an alias for an IPv6 literal), the name pymssql asks FreeTDS for, so
FreeTDS stops there and never mixes in /etc/freetds/freetds.conf or ~/.freetds.conf: an
operator's own freetds.conf does not apply to facusync's server; every setting facusync
needs is an MSSQL_* variable.
"""

from __future__ import annotations

import atexit
import hashlib
import os
import shutil
import tempfile
from pathlib import Path

from facusync.config import Config

_directory: Path | None = None


def freetds_conf_text(cfg: Config) -> str:
    """The freetds.conf that carries MSSQL_ENCRYPT, MSSQL_CA_FILE and MSSQL_CHECK_HOSTNAME."""
    options = [f"encryption = {cfg.mssql_encrypt}",
               # FreeTDS 1.3 (Debian 12) still accepts TLS 1.0; SQL Server 2016 speaks 1.2.
               "enable tls v1 = no"]
    if cfg.mssql_ca_file:
        options.append(f"ca file = {cfg.mssql_ca_file}")
        options.append(f"check certificate hostname = {'yes' if cfg.mssql_check_hostname else 'no'}")
    # pymssql asks FreeTDS for "host:port"; a section of that name is a server alias, so it
    # carries the host and port too. Its settings reach no other server.
    lines = [f"host = {cfg.mssql_host}", f"port = {cfg.mssql_port}", *options]
    text = "# Written by facusync from its MSSQL_* settings (see facusync/freetdsconf.py).\n"
    text += f"[{server_name(cfg)}:{cfg.mssql_port}]\n" + "".join(f"\t{line}\n" for line in lines)
    return text


# The section's name for an IPv6 literal, whose colons FreeTDS cannot tell from the port's.
IPV6_ALIAS = "facusync-sqlserver"


def server_name(cfg: Config) -> str:
    """The server pymssql is given (it asks FreeTDS for "server:port", the section's name):
    MSSQL_HOST; for an IPv6 literal, an alias whose section holds the address."""
    return IPV6_ALIAS if ":" in cfg.mssql_host else cfg.mssql_host


def use_freetds_conf(cfg: Config) -> Path:
    """Write (once per distinct content) and select the freetds.conf for the next connect."""
    text = freetds_conf_text(cfg)
    path = _private_directory() / f"freetds-{hashlib.sha256(text.encode()).hexdigest()[:16]}.conf"
    if not path.exists():
        tmp = path.with_suffix(".tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    os.environ["FREETDSCONF"] = str(path)
    return path


def _private_directory() -> Path:
    global _directory
    if _directory is None or not _directory.is_dir():
        _directory = Path(tempfile.mkdtemp(prefix="facusync-freetds-"))
        atexit.register(shutil.rmtree, _directory, True)
    return _directory
