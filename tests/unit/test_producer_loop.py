"""The producer's logic that needs no server: retries after a lost lock back off, the
measured lateness of changes is kept across restarts."""

from __future__ import annotations

import pytest

from facusync import producer as producer_module
from facusync.config import config_from_mapping
from facusync.lock import LockLost
from facusync.producer import CycleStats, Lateness, Producer
from facusync.service import Service
from tests.unit.test_config import GOOD

ENV = {**GOOD, "BACKOFF_MAX": "60"}


def test_a_lost_lock_is_retried_with_growing_waits(monkeypatch: pytest.MonkeyPatch) -> None:
    """Situation 4: a cycle that keeps losing its lock (a slow source) must not retry at once,
    forever; the waits grow like any other failure's."""
    service = Service("test")
    producer = Producer(config_from_mapping(ENV), service)
    waits: list[float] = []
    calls: list[int] = []

    def lose_the_lock() -> CycleStats:
        calls.append(1)
        if len(calls) == 7:
            service.stopping.set()
        raise LockLost("lost the lock test:lock:source")

    def fake_sleep(seconds: float) -> bool:  # a fake clock: record the wait instead
        waits.append(seconds)
        return True

    monkeypatch.setattr(producer, "run_once", lose_the_lock)
    monkeypatch.setattr(service, "sleep", fake_sleep)
    producer.run_forever()
    assert len(waits) == len(calls) == 7, "every lost lock is followed by a wait"
    assert waits[-1] > 8 * waits[0], f"the waits do not back off: {waits}"


def test_measured_lateness_survives_a_restart_and_ages_out(monkeypatch: pytest.MonkeyPatch) -> None:
    """The lateness a producer measured (a writer an hour behind) is stored with the producer's
    stats and taken back by the next process, until it is a day old."""
    now = [1_000_000.0]
    monkeypatch.setattr(producer_module.time, "time", lambda: now[0])
    monkeypatch.setattr(producer_module.time, "monotonic", lambda: now[0] - 999_000.0)
    first = Lateness()
    assert first.worst() is None, "nothing measured: nothing assumed"
    first.add(12.0)
    first.add(3600.0)
    stored = {b"late_max_s": str(first.worst()).encode(), b"late_at": str(first.worst_at()).encode()}
    now[0] += 3600
    second = Lateness()
    second.reload(stored)
    assert second.worst() == 3600.0
    now[0] += 24 * 3600
    assert second.worst() is None
    third = Lateness()
    third.reload(stored)
    assert third.worst() is None, "a day-old measurement is not reloaded"
