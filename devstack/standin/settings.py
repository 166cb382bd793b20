"""How one stand-in server is set up: its data, its login, its encryption and certificate."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path


@dataclass
class ServerConfig:
    """What `python -m devstack.standin serve` was started with; shared by every connection."""

    db_path: Path
    user: str
    password: str
    database: str = "g_FACU"
    control: Path | None = None
    packet_size: int | None = None  # None: use what the client asks for
    # SQL Server's encryption setting: "not_sup" (no certificate), "off" (a certificate,
    # Force Encryption off: TLS for the login packet unless the client asks for more) or
    # "on" (Force Encryption: the whole session over TLS). See tds.answer_encryption.
    encryption: str = "not_sup"
    cert_file: Path | None = None
    key_file: Path | None = None
    tls_min: str = "1.2"
    tls_max: str = "1.2"  # SQL Server 2016 speaks TLS 1.0 to 1.2


TLS_VERSIONS = {"1.0": ssl.TLSVersion.TLSv1, "1.1": ssl.TLSVersion.TLSv1_1,
                "1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}


def tls_context(config: ServerConfig) -> ssl.SSLContext | None:
    """The server side of the TLS handshake, or None when the server has no certificate."""
    if config.encryption == "not_sup":
        return None
    if config.cert_file is None or config.key_file is None:
        raise ValueError(f"encryption {config.encryption!r} needs a certificate and its key")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(config.cert_file, config.key_file)
    if TLS_VERSIONS[config.tls_min] < ssl.TLSVersion.TLSv1_2:
        context.set_ciphers("DEFAULT:@SECLEVEL=0")  # let the old versions be offered at all
    context.minimum_version = TLS_VERSIONS[config.tls_min]
    context.maximum_version = TLS_VERSIONS[config.tls_max]
    # Tickets would arrive after the client thinks the handshake (in PRELOGIN packets) is over.
    context.num_tickets = 0
    return context
