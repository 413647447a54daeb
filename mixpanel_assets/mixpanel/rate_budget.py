"""A client-side query budget for Mixpanel's documented API limits, shared by concurrent runs.

The Raw Export API allows 60 queries an hour and 3 a second per project; beyond that it answers
429 and, worse, a backfill that keeps hitting the limit starves the schedules. Every run on a
machine records its queries in one small file (under the project's state folder) guarded by a
file lock, so the limit holds across concurrent runs and processes, not only within one client.
Waiting happens outside the lock.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from filelock import FileLock

HOUR = 3600.0


class RateBudget:
    def __init__(
        self,
        path: str | Path | None,
        per_hour: int = 60,
        per_second: int = 3,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        on_wait: Callable[[float], None] | None = None,
    ):
        self.path = Path(path) if path is not None else None
        self.per_hour = per_hour
        self.per_second = per_second
        self.clock = clock
        self.sleep = sleep
        self.on_wait = on_wait
        self.spent = 0  # queries taken by this process through this budget
        self._memory: list[float] = []
        self._thread_lock = threading.Lock()
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file_lock = FileLock(str(self.path) + ".lock")

    def acquire(self) -> float:
        """Block until one more query fits in both limits, record it, return the seconds waited."""
        waited = 0.0
        while True:
            with self._locked():
                now = self.clock()
                stamps = [t for t in self._load() if now - t < HOUR]
                delay = self._delay(stamps, now)
                if delay <= 0:
                    stamps.append(now)
                    self._save(stamps)
                    self.spent += 1
                    return waited
            if self.on_wait is not None:
                self.on_wait(delay)
            self.sleep(delay)
            waited += delay

    def used_last_hour(self) -> int:
        with self._locked():
            now = self.clock()
            return sum(1 for t in self._load() if now - t < HOUR)

    def recorded(self) -> list[float]:
        """Times of the queries of the last hour, by every user of this budget (for reports and tests)."""
        with self._locked():
            now = self.clock()
            return [t for t in self._load() if now - t < HOUR]

    def _delay(self, stamps: list[float], now: float) -> float:
        if len(stamps) >= self.per_hour:
            return stamps[-self.per_hour] + HOUR - now + 0.01
        recent = [t for t in stamps if now - t < 1.0]
        if len(recent) >= self.per_second:
            return recent[-self.per_second] + 1.0 - now + 0.01
        return 0.0

    def _locked(self):
        return self._file_lock if self.path is not None else self._thread_lock

    def _load(self) -> list[float]:
        if self.path is None:
            return list(self._memory)
        try:
            return sorted(json.loads(self.path.read_text()))
        except (FileNotFoundError, ValueError):
            return []

    def _save(self, stamps: list[float]) -> None:
        if self.path is None:
            self._memory = stamps
            return
        tmp = self.path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(stamps))
        os.replace(tmp, self.path)
