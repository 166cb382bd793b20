"""A Redis lock that serializes the producer's cycles and reconcile runs.

Both read the view and append to the same stream. Holding one lock while reading *and*
appending means the stream order matches the order in which the view was read, so reconcile
can never append a stale read of a row after the producer appended a fresher one. The lock
expires by itself (TTL) if its holder dies. While it is held, a small thread pushes the expiry
back every third of the TTL, so a query that takes longer than the TTL (a slow SQL Server, a
first load) does not lose it; every append checks that the lock is still ours inside its own
script (enqueue.Guard), so a holder that lost it anyway writes nothing.
"""

from __future__ import annotations

import contextlib
import secrets
import threading
import time

import redis

_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""
_EXTEND = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) end
return 0
"""


class LockLost(RuntimeError):
    """Our lock expired and someone else may hold it: stop appending."""


class RedisLock:
    """SET NX PX with a random token; only the holder can extend or release it."""

    def __init__(self, client: redis.Redis, key: str, ttl: float = 60.0, owner: str = "") -> None:
        self.client = client
        self.key = key
        self.ttl_ms = int(ttl * 1000)
        self.token = (owner + ":" if owner else "") + secrets.token_hex(8)
        self.held = False
        self._last_extend = 0.0
        self._lost = threading.Event()
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None

    @property
    def waiting_key(self) -> str:
        return self.key + ":waiting"

    def acquire(self, wait: float = 0.0, *, priority: bool = False) -> bool:
        """Take the lock, waiting up to `wait` seconds.

        The producer re-takes the lock right after each cycle, so a plain poll could starve
        reconcile. A `priority` taker (reconcile, resync) announces itself while it waits;
        an ordinary taker (the producer) then steps aside until it got the lock.
        """
        deadline = time.monotonic() + wait
        try:
            while True:
                if priority:
                    self.client.set(self.waiting_key, self.token, px=2000)
                elif self.client.exists(self.waiting_key):
                    if time.monotonic() >= deadline:
                        return False
                    time.sleep(0.1)
                    continue
                if self.client.set(self.key, self.token, nx=True, px=self.ttl_ms):
                    self.held = True
                    self._last_extend = time.monotonic()
                    self._start_renewer()
                    return True
                if time.monotonic() >= deadline:
                    return False
                time.sleep(0.1)
        finally:
            if priority:
                self.client.eval(_RELEASE, 1, self.waiting_key, self.token)

    def holder(self) -> str | None:
        value = self.client.get(self.key)
        return value.decode() if isinstance(value, bytes) else value

    def _start_renewer(self) -> None:
        self._lost.clear()
        self._stop.clear()
        self._renewer = threading.Thread(target=self._renew, name="facusync-lock", daemon=True)
        self._renewer.start()

    def _renew(self) -> None:
        """Keep the lock while the holder is busy in a blocking call (a slow query)."""
        period = self.ttl_ms / 3000
        while not self._stop.wait(period):
            try:
                if not self.client.eval(_EXTEND, 1, self.key, self.token, self.ttl_ms):
                    self._lost.set()
                    return
            except redis.RedisError:
                continue  # Redis unreachable: the holder's own next call reports it

    def extend(self) -> None:
        """Check that the lock is still ours and push the expiry back (at most every TTL/4)."""
        now = time.monotonic()
        if not self.held or self._lost.is_set():
            self.held = False
            raise LockLost(f"lost the lock {self.key} (it expired, or Redis lost its data)")
        if now - self._last_extend < self.ttl_ms / 4000:
            return
        if not self.client.eval(_EXTEND, 1, self.key, self.token, self.ttl_ms):
            self.held = False
            raise LockLost(f"lost the lock {self.key} (it expired, or Redis lost its data)")
        self._last_extend = now

    def release(self) -> None:
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join(timeout=5)
            self._renewer = None
        if self.held:
            try:
                with contextlib.suppress(redis.RedisError):
                    self.client.eval(_RELEASE, 1, self.key, self.token)
            finally:
                self.held = False
