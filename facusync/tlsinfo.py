"""TLS on a hop: what a connection negotiated, and one actionable line when a handshake fails.

The PostgreSQL and Redis hops name their settings once in a `TlsSettings` (SQL Server's
handshake is diagnosed inside TDS by facusync.mssqltls); a failed handshake is sorted into one
of a few causes an operator can fix (untrusted or expired certificate, host-name mismatch, no
TLS version in common, client certificate wanted, no TLS at all) and worded with those names,
so the message says which setting to change. Never includes a password: only driver messages
about certificates and protocols reach these functions.
"""

from __future__ import annotations

import socket
import ssl
from dataclasses import asdict, dataclass

# OpenSSL's X509_V_ERR_* codes that mean "the certificate is outside its validity period".
_EXPIRED_CODES = {9, 10}  # not yet valid, has expired
_HOSTNAME_CODES = {62, 64}  # host name mismatch, IP address mismatch


@dataclass(frozen=True, slots=True)
class TlsState:
    """How one established connection is protected, as `facusync check` shows it."""

    encrypted: bool
    version: str | None = None  # e.g. "TLSv1.3"
    verified: bool = False  # the server's certificate chains to a trusted CA
    hostname_checked: bool = False  # ...and names the host we dialled

    def describe(self) -> str:
        """One phrase: "TLSv1.3, certificate and host name verified" or "not encrypted"."""
        if not self.encrypted:
            return "not encrypted"
        if not self.verified:
            return f"{self.version}, certificate NOT verified"
        what = "certificate and host name" if self.hostname_checked else "certificate (not host name)"
        return f"{self.version}, {what} verified"


@dataclass(frozen=True, slots=True)
class TlsSettings:
    """The names an operator edits for one hop, used to word its TLS failures."""

    mode: str  # the setting that turns TLS on or off, e.g. "PG_SSLMODE=verify-full"
    ca: str  # the CA-file setting, e.g. "PG_SSLROOTCERT"
    host: str  # e.g. "PG_HOST=db1.example.invalid"
    server_cert: str  # where the server's certificate is configured
    server_versions: str  # where the server's TLS versions are configured
    client_cert: str  # the client-certificate settings, e.g. "PG_SSLCERT and PG_SSLKEY"


# What the drivers' messages say, per cause, checked in this order (OpenSSL's, libpq's and
# Python's wording; a TLS 1.3 server refusing our certificate answers "certificate required").
_SYMPTOMS = (
    ("client-cert", ("certificate required", "certificate unknown", "unknown ca")),
    ("expired", ("has expired", "not yet valid")),
    ("hostname", ("does not match host name", "hostname mismatch", "address mismatch")),
    ("version", ("protocol version", "unsupported protocol", "no protocols available",
                 "alert internal error")),
    ("untrusted", ("certificate verify failed", "self-signed", "self signed")),
    ("no-tls", ("does not support ssl", "wrong version number")),
    ("handshake", ("ssl", "tls")),
)

_ADVICE = {
    "expired": "TLS: the server's certificate has expired or is not yet valid: renew it "
               "({server_cert}); {ca} is fine",
    "hostname": "TLS: the server's certificate does not name {host}: set it to a name the "
                "certificate lists, or reissue the certificate ({server_cert})",
    "version": "TLS: no TLS version in common with the server (facusync needs TLS 1.2 or "
               "later): allow TLSv1.2/TLSv1.3 in {server_versions}",
    "untrusted": "TLS: the server's certificate is not signed by a CA in {ca}: set {ca} to the "
                 "CA that signed it ({detail})",
    "client-cert": "TLS: the server wants a client certificate it trusts: set {client_cert} "
                   "({detail})",
    "no-tls": "TLS: the server does not speak TLS on this port: enable TLS on the server, "
              "or change {mode}",
    "handshake": "TLS handshake failed ({detail}): check {mode} and {ca}",
}


def failure_kind(text: str) -> str | None:
    """One of _ADVICE's causes, or None if the text is not about TLS."""
    low = text.lower()
    for kind, symptoms in _SYMPTOMS:
        if any(symptom in low for symptom in symptoms):
            return kind
    return None


def describe_failure(kind: str, names: TlsSettings, detail: str = "") -> str:
    """The one line for a failed handshake: what is wrong and which setting to change."""
    return _ADVICE[kind].format(**asdict(names), detail=detail or "certificate verify failed")


def verify_failure(host: str, port: int, cafile: str, *, check_hostname: bool, timeout: float,
                   client_cert: tuple[str, str] | None = None, preamble: bytes = b"",
                   accept: bytes = b"") -> str:
    """Handshake once with Python's ssl to learn why a driver's handshake failed (libpq says
    only "certificate verify failed"; with TLS 1.3 a refused client certificate surfaces as a
    bare EOF). Sends `preamble` first and expects `accept` (PostgreSQL's SSLRequest). Returns
    OpenSSL's reason, or "" when this handshake succeeds and the server stays quiet."""
    context = ssl.create_default_context(cafile=cafile)
    context.check_hostname = check_hostname
    if client_cert:
        context.load_cert_chain(*client_cert)
    try:
        with socket.create_connection((host, port), timeout=timeout) as raw:
            if preamble:
                raw.sendall(preamble)
                if raw.recv(1) != accept:
                    return "the server refused TLS"
            with context.wrap_socket(raw, server_hostname=host) as tls:
                tls.settimeout(min(timeout, 1.0))
                tls.recv(1)  # a server refusing our certificate says so right after the handshake
                return ""
    except ssl.SSLCertVerificationError as exc:
        if exc.verify_code in _EXPIRED_CODES:
            return "certificate has expired"
        if exc.verify_code in _HOSTNAME_CODES:
            return "hostname mismatch"
        return str(exc.verify_message or exc.reason)
    except TimeoutError:
        return ""
    except (ssl.SSLError, OSError) as exc:
        return str(exc)
