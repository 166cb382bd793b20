"""Configuration, read and validated once at start-up into an immutable object.

Production reads the process environment (systemd's EnvironmentFile); local runs may add
``--env-file PATH`` in the same format, with the real environment winning. Validation
collects every problem before failing, so an operator fixes the file in one pass. Nothing
else in facusync reads ``os.environ``.
"""

from __future__ import annotations

import grp
import ipaddress
import os
import re
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from facusync.errors import AccessError, ConfigError

PLACEHOLDER = "CHANGE_ME"
DEFAULT_ENV_FILE = "/etc/facusync/facusync.env"
# What a CA-file setting may say instead of a path: trust the CAs Debian trusts (ca-certificates).
SYSTEM_CA = "system"
SYSTEM_CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
PG_SSLMODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class Secret:
    """A password that cannot leak through str(), repr(), f-strings or logging."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The clear text, for the one call that hands it to a driver."""
        return self._value

    def __bool__(self) -> bool:
        return bool(self._value)

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True, slots=True)
class Config:
    """Every setting facusync uses; see the example env file for what each one means."""

    mssql_host: str
    mssql_port: int
    mssql_database: str
    mssql_user: str
    mssql_password: Secret = field(repr=False)
    mssql_view: str
    mssql_key_column: str
    mssql_version_column: str
    mssql_login_timeout: int
    mssql_query_timeout: int
    mssql_tds_version: str
    mssql_encrypt: str
    mssql_ca_file: str
    mssql_check_hostname: bool
    pg_host: str
    pg_port: int
    pg_database: str
    pg_user: str
    pg_password: Secret = field(repr=False)
    pg_table_vista: str
    pg_table_seguimiento: str
    pg_connect_timeout: int
    pg_statement_timeout: int
    pg_sync_role: str
    pg_sync_role_password: Secret = field(repr=False)
    pg_nocodb_role: str
    pg_nocodb_role_password: Secret = field(repr=False)
    pg_admin_user: str
    pg_admin_host: str
    pg_admin_password: Secret = field(repr=False)
    pg_sslmode: str
    pg_sslrootcert: str
    pg_sslcert: str
    pg_sslkey: str
    redis_host: str
    redis_port: int
    redis_password: Secret = field(repr=False)
    redis_db: int
    redis_prefix: str
    redis_connect_timeout: float
    redis_tls: bool
    redis_ca_file: str
    redis_cert_file: str
    redis_key_file: str
    sync_interval: float
    sync_overlap: float
    sync_start: datetime
    batch_size: int
    fetch_size: int
    chunk_size: int
    queue_max_pending: int
    claim_idle: float
    max_deliveries: int
    backoff_max: float
    source_timezone: str
    lag_warn: float
    reconcile_max_delete_pct: float
    reconcile_interval: float
    metrics_address: str
    metrics_producer_port: int | None
    metrics_consumer_port: int | None
    log_level: str
    log_format: str

    @property
    def tz(self) -> ZoneInfo:
        """The source's wall-clock zone: SQL Server gives naive local datetimes."""
        return ZoneInfo(self.source_timezone)


class _Reader:
    """Parses one variable at a time, remembering every problem instead of stopping."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env
        self.problems: list[str] = []

    def _raw(self, name: str, default: str | None) -> str | None:
        value = self.env.get(name)
        if value is None or value.strip() == "":
            if default is None:
                self.problems.append(f"{name} is missing: set it in the env file")
            return default
        value = value.strip()
        if PLACEHOLDER in value:
            self.problems.append(f"{name} still holds the placeholder {PLACEHOLDER}: set the real value")
        return value

    def text(self, name: str, default: str | None = None) -> str:
        return self._raw(name, default) or ""

    def secret(self, name: str, *, required: bool = True) -> Secret:
        value = self.env.get(name, "")
        if value == "":
            if required:
                self.problems.append(f"{name} is missing: set it in the env file")
            return Secret("")
        if PLACEHOLDER in value:
            self.problems.append(f"{name} still holds the placeholder {PLACEHOLDER}: set the real value")
        return Secret(value)

    def number(
        self,
        name: str,
        default: str,
        lo: float,
        hi: float,
        cast: Callable[[str], Any] = int,
    ) -> Any:
        raw = self._raw(name, default) or default
        try:
            value = cast(raw)
        except ValueError:
            kind = "a whole number" if cast is int else "a number"
            self.problems.append(f"{name}={raw!r} is not {kind}")
            return cast(default)
        if not lo <= value <= hi:
            self.problems.append(f"{name}={raw} is out of range: use a value from {lo:g} to {hi:g}")
            return cast(default)
        return value

    def optional_port(self, name: str) -> int | None:
        """A TCP port, or None when unset (the feature it enables stays off)."""
        if not (self.env.get(name) or "").strip():
            return None
        before = len(self.problems)
        port: int = self.number(name, "1", 1, 65535)
        return port if len(self.problems) == before else None  # a wrong one is reported once

    def ip_address(self, name: str, default: str) -> str:
        value = self.text(name, default)
        try:
            ipaddress.ip_address(value)
        except ValueError:
            self.problems.append(f"{name}={value!r} is not an IP address: use one such as "
                                 "127.0.0.1 (this host only) or ::1")
            return default
        return value

    def identifier(self, name: str, default: str, *, qualified: bool = False) -> str:
        value = self.text(name, default)
        parts = value.split(".") if qualified else [value]
        if len(parts) > 2 or not all(_IDENT.match(p) and len(p) <= 63 for p in parts):
            allowed = "letters, digits and _ (optionally schema.name)" if qualified else (
                "letters, digits and _, not starting with a digit, at most 63 characters"
            )
            self.problems.append(f"{name}={value!r} is not a valid SQL identifier: use {allowed}")
            return default
        return value

    def choice(self, name: str, default: str, choices: tuple[str, ...]) -> str:
        value = self.text(name, default)
        if value.lower() not in choices:
            self.problems.append(f"{name}={value!r} is not one of {', '.join(choices)}")
            return default
        return value.lower()

    def pem_file(self, name: str, marker: str, *, system_ok: bool = False) -> str:
        """An optional PEM file the service user must be able to read ("" when unset); a
        CERTIFICATE file is checked as a CA bundle, as the TLS libraries will load it."""
        value = self.text(name, "")
        if system_ok and value == SYSTEM_CA:
            if not Path(SYSTEM_CA_BUNDLE).is_file():
                self.problems.append(f"{name}={SYSTEM_CA} needs {SYSTEM_CA_BUNDLE}: install the "
                                     "ca-certificates package, or give the CA file's path")
        elif value:
            self._check_pem(name, value, marker)
        return value

    def _check_pem(self, name: str, path: str, marker: str) -> None:
        try:
            text = Path(path).read_text(encoding="ascii", errors="replace")
        except OSError as exc:
            self.problems.append(f"{name}={path!r} cannot be read ({exc.strerror}): give the path of "
                                 "a PEM file the service user can read (e.g. under /etc/facusync)")
            return
        if f"{marker}-----" not in text:
            what = ("the CA certificate that signed the server's certificate"
                    if marker == "CERTIFICATE" else "the right file")
            self.problems.append(f"{name}={path!r} holds no PEM {marker.lower()} "
                                 f"(-----BEGIN {marker}-----): give {what}")
            return
        if marker == "CERTIFICATE":
            try:
                ssl.create_default_context(cafile=path)
            except (ssl.SSLError, ValueError) as exc:
                self.problems.append(f"{name}={path!r} is not a valid PEM certificate file ({exc})")

    def timestamp(self, name: str, default: str) -> datetime:
        value = self.text(name, default)
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            self.problems.append(f"{name}={value!r} is not a date: use YYYY-MM-DD or YYYY-MM-DDTHH:MM:SS")
            return datetime.fromisoformat(default)
        if parsed.tzinfo is not None:
            self.problems.append(f"{name}={value!r} must be the source's local time, without an offset")
            return datetime.fromisoformat(default)
        return parsed

    def boolean(self, name: str, default: str) -> bool:
        return self.choice(name, default, ("yes", "no", "true", "false", "1", "0")) in (
            "yes", "true", "1")

    def ca_file(self, name: str) -> str:
        """A readable PEM file of CA certificates, or "" when unset (written into freetds.conf)."""
        path = self.text(name, "")
        if not path:
            return ""
        if any(c in path for c in ";#\n"):
            self.problems.append(f"{name}={path!r} contains ; or # (a comment in freetds.conf): "
                                 "move the file to a plain path")
            return path
        if re.search(r"\s\s|[^\S ]", path):
            self.problems.append(f"{name}={path!r} holds a tab or blanks in a row, which "
                                 "freetds.conf reads as one space: move the file to a plain path")
            return path
        self._check_pem(name, path, "CERTIFICATE")
        return path

    def timezone(self, name: str, default: str) -> str:
        value = self.text(name, default)
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            self.problems.append(f"{name}={value!r} is not a known time zone (e.g. America/Santo_Domingo)")
            return default
        return value


def parse_env_file(text: str) -> dict[str, str]:
    r"""Parse an env file as systemd 252 (Debian 12) parses an EnvironmentFile, character by
    character, so the admin commands read the very values the daemons get: whole-line
    comments (# or ;); KEY=value with blanks around = ignored; unquoted, a backslash escapes
    the next character (and joins a line to the next) and trailing blanks are dropped; in
    single quotes nothing is special; in double quotes only \" \\ \` \$ are escapes."""
    result: dict[str, str] = {}
    key, value = "", ""
    state = "pre_key"
    trailing = 0  # unquoted blanks at the end of the value so far (dropped)

    def push() -> None:
        name = key.strip()
        if _IDENT.match(name):
            result[name] = value[: len(value) - trailing] if trailing else value

    for c in text:
        if state == "pre_key":
            if c in "#;":
                state = "comment"
            elif not c.isspace():
                state, key, value, trailing = "key", c, "", 0
        elif state == "key":
            if c in "\n\r":
                state = "pre_key"
            elif c == "=":
                state = "pre_value"
            else:
                key += c
        elif state in ("pre_value", "value"):
            if c in "\n\r":
                push()
                state = "pre_key"
            elif state == "pre_value" and c in "'\"":
                state = "single" if c == "'" else "double"
            elif c == "\\":
                state, trailing = "value_escape", 0
            elif state == "pre_value" and c.isspace():
                pass
            else:
                state, value = "value", value + c
                trailing = trailing + 1 if c.isspace() else 0
        elif state == "value_escape":
            state = "value"
            if c not in "\n\r":  # an escaped newline joins the lines
                value += c
        elif state == "single":
            state, value = ("pre_value", value) if c == "'" else ("single", value + c)
        elif state == "double":
            if c == '"':
                state = "pre_value"
            elif c == "\\":
                state = "double_escape"
            else:
                value += c
        elif state == "double_escape":
            state = "double"
            if c in '"\\`$':
                value += c
            elif c != "\n":
                value += "\\" + c
        elif state == "comment":
            if c == "\\":
                state = "comment_escape"  # systemd 252 continues a comment after a backslash
            elif c in "\n\r":
                state = "pre_key"
        elif state == "comment_escape":
            state = "comment"
    if state not in ("pre_key", "key", "comment", "comment_escape"):
        push()
    return result


def load_config(
    env_file: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Config:
    """Build the Config from the environment (and an optional env file), or raise ConfigError."""
    real = os.environ if environ is None else environ
    env = read_environment(env_file, real)
    source = (str(env_file) if env_file else None) or real.get("FACUSYNC_ENV_FILE") or None
    return config_from_mapping(env, source)


def read_environment(
    env_file: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The variables a command runs with: an env file's, with the environment's over them (a
    variable set empty in the environment counts as unset). The one place that reads the
    environment and env files, for facusync's settings and nocodb-setup's alike.

    Raises AccessError when the file's permissions keep this user out (it holds passwords),
    ConfigError when it cannot be read otherwise; either chains the OSError as its cause."""
    variables: dict[str, str] = {}
    if env_file is not None:
        path = Path(env_file)
        try:
            variables.update(parse_env_file(path.read_text(encoding="utf-8")))
        except PermissionError as exc:
            raise AccessError(_unreadable(path)) from exc
        except OSError as exc:
            raise ConfigError([f"cannot read env file {env_file}: {exc.strerror}"],
                              str(env_file)) from exc
    real = os.environ if environ is None else environ
    variables.update({name: value for name, value in real.items() if value != ""})
    return variables


def admin_env_file(given: str | None) -> str | None:
    """The env file the admin command reads: the one given, else (installed from the .deb, where
    the admin's configuration is the services' env file) DEFAULT_ENV_FILE when it exists and
    the environment does not come from a unit's env file already."""
    if given is not None or "FACUSYNC_ENV_FILE" in os.environ:
        return given
    return DEFAULT_ENV_FILE if os.path.exists(DEFAULT_ENV_FILE) else None


def _unreadable(path: Path) -> str:
    """Why the env file cannot be read, and who can: it holds passwords, so not everyone."""
    try:
        group = grp.getgrgid(path.stat().st_gid).gr_name
    except (OSError, KeyError):
        group = ""
    who = f" or as a member of group {group}" if group and group != "root" else ""
    return (f"cannot read {path}: permission denied (it holds passwords): run the command as "
            f"root (sudo facusync ...){who}")


def config_from_mapping(env: Mapping[str, str], source: str | None = None) -> Config:
    """Validate a mapping of variables; the one place defaults and ranges are written."""
    r = _Reader(env)
    day = 86400.0
    cfg = Config(
        mssql_host=r.text("MSSQL_HOST"),
        mssql_port=r.number("MSSQL_PORT", "1433", 1, 65535),
        mssql_database=r.identifier("MSSQL_DATABASE", "g_FACU"),
        mssql_user=r.text("MSSQL_USER"),
        mssql_password=r.secret("MSSQL_PASSWORD"),
        mssql_view=r.identifier("MSSQL_VIEW", "VW_VENTAS_SYNC", qualified=True),
        mssql_key_column=r.identifier("MSSQL_KEY_COLUMN", "CONDUCE"),
        mssql_version_column=r.identifier("MSSQL_VERSION_COLUMN", "ULTIMA_MODIFICACION"),
        mssql_login_timeout=r.number("MSSQL_LOGIN_TIMEOUT", "5", 1, 300),
        mssql_query_timeout=r.number("MSSQL_QUERY_TIMEOUT", "120", 1, 3600),
        mssql_tds_version=r.choice("MSSQL_TDS_VERSION", "auto", ("auto", "7.1", "7.2", "7.3", "7.4")),
        # FreeTDS's `encryption`: request encrypts whenever the server has a certificate.
        mssql_encrypt=r.choice("MSSQL_ENCRYPT", "request", ("off", "request", "require")),
        mssql_ca_file=r.ca_file("MSSQL_CA_FILE"),
        mssql_check_hostname=r.boolean("MSSQL_CHECK_HOSTNAME", "yes"),
        pg_host=r.text("PG_HOST"),
        pg_port=r.number("PG_PORT", "5432", 1, 65535),
        pg_database=r.identifier("PG_DATABASE", "syncdb"),
        pg_user=r.text("PG_USER"),
        pg_password=r.secret("PG_PASSWORD"),
        pg_table_vista=r.identifier("PG_TABLE_VISTA", "datos_vista"),
        pg_table_seguimiento=r.identifier("PG_TABLE_SEGUIMIENTO", "datos_seguimiento"),
        pg_connect_timeout=r.number("PG_CONNECT_TIMEOUT", "5", 1, 300),
        pg_statement_timeout=r.number("PG_STATEMENT_TIMEOUT", "20", 1, 3600),
        # Only `facusync migrate --create-roles` uses these (see facusync.roles).
        pg_sync_role=r.identifier("PG_SYNC_ROLE", "facusync_sync"),
        pg_sync_role_password=r.secret("PG_SYNC_ROLE_PASSWORD", required=False),
        pg_nocodb_role=r.identifier("PG_NOCODB_ROLE", "facusync_nocodb"),
        pg_nocodb_role_password=r.secret("PG_NOCODB_ROLE_PASSWORD", required=False),
        # Only `facusync migrate --admin` uses these (see facusync.adminconn).
        pg_admin_user=r.identifier("PG_ADMIN_USER", "postgres"),
        pg_admin_host=r.text("PG_ADMIN_HOST", "/var/run/postgresql"),
        pg_admin_password=r.secret("PG_ADMIN_PASSWORD", required=False),
        pg_sslmode=r.choice("PG_SSLMODE", "prefer", PG_SSLMODES),
        pg_sslrootcert=r.pem_file("PG_SSLROOTCERT", "CERTIFICATE", system_ok=True),
        pg_sslcert=r.pem_file("PG_SSLCERT", "CERTIFICATE"),
        pg_sslkey=r.pem_file("PG_SSLKEY", "PRIVATE KEY"),
        redis_host=r.text("REDIS_HOST", "127.0.0.1"),
        redis_port=r.number("REDIS_PORT", "6379", 1, 65535),
        redis_password=r.secret("REDIS_PASSWORD", required=False),
        redis_db=r.number("REDIS_DB", "0", 0, 15),
        redis_prefix=r.text("REDIS_PREFIX", "facusync:"),
        redis_connect_timeout=r.number("REDIS_CONNECT_TIMEOUT", "5", 0.1, 300, float),
        redis_tls=r.choice("REDIS_TLS", "off", ("off", "on")) == "on",
        redis_ca_file=r.pem_file("REDIS_CA_FILE", "CERTIFICATE", system_ok=True),
        redis_cert_file=r.pem_file("REDIS_CERT_FILE", "CERTIFICATE"),
        redis_key_file=r.pem_file("REDIS_KEY_FILE", "PRIVATE KEY"),
        sync_interval=r.number("SYNC_INTERVAL", "10", 0.1, day, float),
        sync_overlap=r.number("SYNC_OVERLAP", "300", 0, 30 * day, float),
        sync_start=r.timestamp("SYNC_START", "2000-01-01"),
        batch_size=r.number("BATCH_SIZE", "2000", 1, 100_000),
        fetch_size=r.number("FETCH_SIZE", "5000", 1, 1_000_000),
        chunk_size=r.number("CHUNK_SIZE", "2000", 1, 100_000),
        queue_max_pending=r.number("QUEUE_MAX_PENDING", "200000", 1, 100_000_000),
        claim_idle=r.number("CLAIM_IDLE", "60", 1, day, float),
        max_deliveries=r.number("MAX_DELIVERIES", "5", 1, 1000),
        backoff_max=r.number("BACKOFF_MAX", "60", 1, 3600, float),
        source_timezone=r.timezone("SOURCE_TIMEZONE", "America/Santo_Domingo"),
        lag_warn=r.number("LAG_WARN", "120", 1, 30 * day, float),
        reconcile_max_delete_pct=r.number("RECONCILE_MAX_DELETE_PCT", "10", 0, 100, float),
        # How often facusync-reconcile.timer runs (status and the alert rules call a run
        # overdue after two of these); the timer itself is configured in systemd.
        reconcile_interval=r.number("RECONCILE_INTERVAL", "3600", 60, 30 * day, float),
        # The Prometheus endpoints (facusync.metrics): off unless a port is set.
        metrics_address=r.ip_address("METRICS_ADDRESS", "127.0.0.1"),
        metrics_producer_port=r.optional_port("METRICS_PRODUCER_PORT"),
        metrics_consumer_port=r.optional_port("METRICS_CONSUMER_PORT"),
        log_level=r.choice("LOG_LEVEL", "INFO", ("debug", "info", "warning", "error")).upper(),
        log_format=r.choice("LOG_FORMAT", "auto", ("auto", "json", "text")),
    )
    if not cfg.redis_prefix or any(c.isspace() for c in cfg.redis_prefix):
        r.problems.append(f"REDIS_PREFIX={cfg.redis_prefix!r} must be non-empty, without spaces")
    if "\\" in cfg.mssql_host:
        r.problems.append(f"MSSQL_HOST={cfg.mssql_host!r} names an instance: facusync connects by "
                          "TCP port, without SQL Browser; set MSSQL_HOST to the server alone and "
                          "MSSQL_PORT to the instance's port (SQL Server Configuration Manager, "
                          "TCP/IP, IPAll)")
    elif any(c in "#;[]=" or c.isspace() for c in cfg.mssql_host):  # see facusync.freetdsconf
        r.problems.append(f"MSSQL_HOST={cfg.mssql_host!r} is not a host name or IP address: give "
                          "it alone (no comment after it, an IPv6 address without brackets); "
                          "freetds.conf cannot carry # ; [ ] = or spaces")
    if cfg.mssql_ca_file and cfg.mssql_encrypt == "off":
        r.problems.append("MSSQL_CA_FILE is set but MSSQL_ENCRYPT=off: set MSSQL_ENCRYPT=request or "
                          "require to verify SQL Server's certificate, or remove MSSQL_CA_FILE")
    if cfg.metrics_producer_port is not None and cfg.metrics_producer_port == cfg.metrics_consumer_port:
        r.problems.append(f"METRICS_PRODUCER_PORT and METRICS_CONSUMER_PORT are both "
                          f"{cfg.metrics_producer_port}: each daemon needs its own port")
    r.problems += _pg_tls_problems(cfg) + _redis_tls_problems(cfg)
    if r.problems:
        raise ConfigError(r.problems, source)
    return cfg


def _pair_problems(cert_name: str, cert: str, key_name: str, key: str) -> list[str]:
    if bool(cert) != bool(key):
        given, missing = (cert_name, key_name) if cert else (key_name, cert_name)
        return [f"{given} is set but {missing} is not: a client certificate needs both"]
    return []


def _pg_tls_problems(cfg: Config) -> list[str]:
    """Combinations libpq would accept but that do not do what the operator asked for."""
    problems = _pair_problems("PG_SSLCERT", cfg.pg_sslcert, "PG_SSLKEY", cfg.pg_sslkey)
    verifies = cfg.pg_sslmode in ("verify-ca", "verify-full")
    if verifies and not cfg.pg_sslrootcert:
        problems.append(f"PG_SSLMODE={cfg.pg_sslmode} needs PG_SSLROOTCERT: the CA file that signed "
                        f"the server's certificate (or PG_SSLROOTCERT={SYSTEM_CA} for the system's CAs)")
    if cfg.pg_sslrootcert and not verifies:
        problems.append(f"PG_SSLROOTCERT is set but PG_SSLMODE={cfg.pg_sslmode} does not verify the "
                        "server: set PG_SSLMODE=verify-full (or remove PG_SSLROOTCERT)")
    if cfg.pg_sslcert and cfg.pg_sslmode == "disable":
        problems.append("PG_SSLCERT is set but PG_SSLMODE=disable: a client certificate needs TLS")
    return problems


def _redis_tls_problems(cfg: Config) -> list[str]:
    problems = _pair_problems("REDIS_CERT_FILE", cfg.redis_cert_file,
                              "REDIS_KEY_FILE", cfg.redis_key_file)
    if cfg.redis_tls and not cfg.redis_ca_file:
        problems.append("REDIS_TLS=on needs REDIS_CA_FILE: the CA file that signed the server's "
                        f"certificate (or REDIS_CA_FILE={SYSTEM_CA} for the system's CAs)")
    if not cfg.redis_tls:
        for name, value in (("REDIS_CA_FILE", cfg.redis_ca_file),
                            ("REDIS_CERT_FILE", cfg.redis_cert_file)):
            if value:
                problems.append(f"{name} is set but REDIS_TLS=off: set REDIS_TLS=on (or remove {name})")
    return problems


def ca_bundle(setting: str) -> str:
    """The file a CA setting names: its path, or Debian's bundle for SYSTEM_CA."""
    return SYSTEM_CA_BUNDLE if setting == SYSTEM_CA else setting
