"""Redis: one place that connects, names every key, and translates driver errors.

All keys share REDIS_PREFIX so several installations can share one Redis.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from facusync.config import Config, ca_bundle
from facusync.errors import QueueError
from facusync.tlsinfo import TlsSettings, TlsState, describe_failure, failure_kind, verify_failure

GROUP = "facusync"


@dataclass(frozen=True, slots=True)
class Keys:
    """The Redis structures of one installation."""

    prefix: str

    @property
    def stream(self) -> str:
        """The change stream (the change queue of docs/DESIGN.md)."""
        return self.prefix + "changes"

    @property
    def dead(self) -> str:
        """Dead letters: entries that could not be written, with the reason."""
        return self.prefix + "dead"

    @property
    def dead_index(self) -> str:
        """Signatures of the dead letters, so one refused change is dead-lettered once."""
        return self.prefix + "dead:index"

    @property
    def suspects(self) -> str:
        """entry id -> times a consumer began writing it alone (MAX_DELIVERIES exceeded)."""
        return self.prefix + "suspects"

    @property
    def watermark(self) -> str:
        """The last enqueued version (the last sync timestamp of docs/DESIGN.md)."""
        return self.prefix + "watermark"

    @property
    def fingerprints(self) -> str:
        """key -> digest of the row last enqueued (the client cache of docs/DESIGN.md)."""
        return self.prefix + "fp"

    @property
    def source_lock(self) -> str:
        """Held by the producer's cycle and by reconcile, so they never interleave."""
        return self.prefix + "lock:source"

    @property
    def producer_stats(self) -> str:
        return self.prefix + "stats:producer"

    def consumer_stats(self, name: str) -> str:
        return self.prefix + "stats:consumer:" + name

    @property
    def consumer_stats_pattern(self) -> str:
        """A SCAN MATCH pattern; the prefix's own * ? [ ] \\ match only themselves."""
        literal = "".join("\\" + c if c in "*?[]\\" else c for c in self.prefix)
        return literal + "stats:consumer:*"

    @property
    def reconcile_stats(self) -> str:
        return self.prefix + "stats:reconcile"

    @property
    def batch_latencies(self) -> str:
        """Recent batch durations and sizes (a capped list) for status percentiles."""
        return self.prefix + "stats:batches"


def tls_settings(cfg: Config) -> TlsSettings:
    """The Redis settings named by a TLS failure."""
    return TlsSettings(mode=f"REDIS_TLS={'on' if cfg.redis_tls else 'off'}", ca="REDIS_CA_FILE",
                       host=f"REDIS_HOST={cfg.redis_host}",
                       server_cert="the server's tls-cert-file",
                       server_versions="the server's tls-protocols",
                       client_cert="REDIS_CERT_FILE and REDIS_KEY_FILE")


def describe_redis_error(exc: Exception, cfg: Config | None = None) -> str:
    """One line naming the likely cause, never the password."""
    text = str(exc)
    low = text.lower()
    kind = failure_kind(text) if cfg is not None and cfg.redis_tls else None
    if cfg is not None and kind is not None:
        reason = text.split("] ", 1)[-1].split(" (_ssl.c", 1)[0]
        return describe_failure(kind, tls_settings(cfg), reason)
    if cfg is not None and cfg.redis_tls and "timeout connecting" in low:
        return ("timed out during the TLS handshake: is REDIS_PORT the server's tls-port (not its "
                "plaintext port)?")
    if cfg is not None and not cfg.redis_tls and "connection reset" in low:
        return "the server dropped the connection: if REDIS_PORT is its tls-port, set REDIS_TLS=on"
    if isinstance(exc, redis.AuthenticationError) or "auth" in low or "noperm" in low:
        return "authentication failed: check REDIS_PASSWORD"
    if isinstance(exc, redis.TimeoutError) and "connecting" not in low:
        return ("timed out waiting for an answer: the Redis at REDIS_HOST:REDIS_PORT took the "
                "request but does not answer (frozen, swapped out, a paused VM, or a firewall "
                "dropping packets?)")
    if isinstance(exc, redis.TimeoutError) or "timed out" in low:
        return "timed out: is REDIS_HOST/REDIS_PORT right and the server up?"
    if "refused" in low:
        return "connection refused: is redis-server running on REDIS_HOST:REDIS_PORT?"
    if "oom" in low or "maxmemory" in low:
        return "out of memory (maxmemory reached): the queue is full; check the consumer"
    if "name or service not known" in low or "nodename" in low:
        return "unknown host: check REDIS_HOST"
    return text


class _HandshakeTimedSSLConnection(redis.SSLConnection):
    """redis-py runs the TLS handshake under the 30 s read timeout; a TLS client dialling a
    plaintext port would wait that long. Bound the handshake by the connect timeout instead."""

    def _connect(self) -> Any:
        read_timeout = self.socket_timeout
        self.socket_timeout = self.socket_connect_timeout
        try:
            sock = super()._connect()  # type: ignore[misc]
        finally:
            self.socket_timeout = read_timeout
        sock.settimeout(read_timeout)
        return sock


def describe_redis_connect_error(exc: Exception, cfg: Config) -> str:
    """describe_redis_error, plus why a TLS session broke right after the handshake (a TLS 1.3
    server that refuses our client certificate may show the driver only a bare EOF)."""
    if cfg.redis_tls and failure_kind(str(exc)) == "handshake":
        client = (cfg.redis_cert_file, cfg.redis_key_file) if cfg.redis_cert_file else None
        reason = verify_failure(cfg.redis_host, cfg.redis_port, ca_bundle(cfg.redis_ca_file),
                                check_hostname=True, timeout=cfg.redis_connect_timeout,
                                client_cert=client)
        kind = failure_kind(reason)
        if kind is not None and kind != "handshake":
            return describe_failure(kind, tls_settings(cfg), reason)
    return describe_redis_error(exc, cfg)


def _tls_arguments(cfg: Config) -> dict[str, Any]:
    """redis-py's TLS arguments (all present in Debian 12's python3-redis 4.3.4)."""
    if not cfg.redis_tls:
        return {}
    args: dict[str, Any] = {"ssl": True, "ssl_cert_reqs": "required", "ssl_check_hostname": True,
                            "ssl_ca_certs": ca_bundle(cfg.redis_ca_file)}
    if cfg.redis_cert_file:
        args["ssl_certfile"] = cfg.redis_cert_file
        args["ssl_keyfile"] = cfg.redis_key_file
    return args


def redis_tls_state(client: redis.Redis) -> TlsState:
    """What a connection like the client's negotiates (its socket's TLS session)."""
    conn = client.connection_pool.make_connection()
    try:
        conn.connect()
        sock = getattr(conn, "_sock", None)
        if not isinstance(sock, ssl.SSLSocket):
            return TlsState(encrypted=False)
        verified = sock.context.verify_mode == ssl.CERT_REQUIRED
        return TlsState(encrypted=True, version=sock.version(), verified=verified,
                        hostname_checked=verified and sock.context.check_hostname)
    finally:
        conn.disconnect()


def connect_redis(cfg: Config, *, check: bool = True, timeout: float | None = None) -> redis.Redis:
    """A client with timeouts, so a dead server can never hang a loop.

    No retries inside the driver (newer redis-py retries a refused connection ten times with
    its own backoff, seconds in all): the loops retry with BACKOFF_MAX and log the outage
    once, so a server's return is noticed within one of their backoff steps. `timeout` bounds
    every connect and reply instead, for a caller that must answer sooner (a metrics scrape)
    than a command that may legitimately take a while.
    """
    client = redis.Redis(
        host=cfg.redis_host,
        port=cfg.redis_port,
        db=cfg.redis_db,
        password=cfg.redis_password.reveal() or None,
        socket_connect_timeout=timeout or cfg.redis_connect_timeout,
        socket_timeout=timeout or max(30.0, cfg.redis_connect_timeout),
        health_check_interval=30,
        **_tls_arguments(cfg),
        retry=Retry(NoBackoff(), 0),
    )
    if cfg.redis_tls:
        client.connection_pool.connection_class = _HandshakeTimedSSLConnection
    if check:
        try:
            client.ping()
        except (redis.RedisError, OSError) as exc:
            client.close()
            raise QueueError(describe_redis_connect_error(exc, cfg)) from None
    return client
