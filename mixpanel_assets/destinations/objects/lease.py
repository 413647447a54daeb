"""One writer per folder on every object store, whatever the run queue says.

Two runs of one partition can run at once (separate Dagster instances, a raised pool limit, a
manual run beside a backfill). Interleaved, their swaps leave a manifest naming parts the other run
deleted. So a writer holds a lease on the folder it replaces: a small `.lease` object created with
the store's own conditional write (`Bucket.create_if_absent`: O_EXCL locally, `If-None-Match: *`
on S3, `ifGenerationMatch=0` on GCS, `If-None-Match: *` on Azure), which exactly one writer wins.

A holder renews its lease every LEASE_TTL_S / 4 seconds; a lease not renewed for LEASE_TTL_S is
stale (its holder was killed) and the next writer takes it over. Taking over is itself decided by
a conditional create (of `.lease.takeover-<token of the stale lease>`), so two waiters never both
take over the same stale lease. Expiry compares the holder's wall clock with the waiter's: the
machines' clocks must agree to well within LEASE_TTL_S (NTP does). A second writer waits up to
LEASE_WAIT_S for the lease, then fails naming the folder, the partition and the holder's run.
Names start with '.', which Hive, Spectrum, Spark and the local listing skip.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid

from mixpanel_assets.destinations.base import DestinationError

LEASE = ".lease"
LEASE_TTL_S = 120.0  # a killed holder's lease is taken over at most this long after its last renewal
LEASE_WAIT_S = 900.0  # how long a second writer waits before failing
POLL_S = 2.0


def is_lease_key(key: str) -> bool:
    return key.rsplit("/", 1)[-1].startswith(LEASE)


class LeaseHeld(DestinationError):
    """Another run holds the folder's lease; retrying later may succeed."""


class LeaseLost(DestinationError):
    """The lease ran out while this run held it (paused longer than LEASE_TTL_S) and another run
    took it over; this run stops before it touches the manifest."""


class FolderLease:
    """Hold `folder`'s lease for the duration of a `with` block: one replace (or GDPR rewrite)."""

    def __init__(self, bucket, folder: str, *, pipeline: str, what: str, holder: str | None,
                 ttl: float = LEASE_TTL_S, wait: float = LEASE_WAIT_S):
        self.bucket, self.folder, self.key = bucket, folder, folder + LEASE
        self.pipeline, self.what, self.ttl, self.wait = pipeline, what, ttl, wait
        self.holder = holder or "(no run id)"
        self.token = uuid.uuid4().hex
        self.lost = False
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    def _record(self) -> bytes:
        now = time.time()
        return json.dumps({"run_id": self.holder, "pipeline": self.pipeline, "host": socket.gethostname(),
                           "pid": os.getpid(), "token": self.token, "renewed_at": now,
                           "expires_at": now + self.ttl}).encode()

    def _current(self) -> dict | None:
        data = self.bucket.get_bytes(self.key)
        if data is None:
            return None
        try:
            return json.loads(data)
        except ValueError:  # half-written by a store without atomic puts: treat as held until expiry
            return {"token": "?", "run_id": "unknown", "expires_at": time.time() + self.ttl}

    def __enter__(self) -> FolderLease:
        deadline = time.monotonic() + self.wait
        while True:
            if self.bucket.create_if_absent(self.key, self._record()):
                break
            current = self._current()
            if current is None:
                continue  # released between our create and our read
            if current.get("expires_at", 0) < time.time() and self._take_over(current):
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise self._held_by(current)
            time.sleep(min(POLL_S, remaining))
        self._beat = threading.Thread(target=self._renew, name=f"lease {self.key}", daemon=True)
        self._beat.start()
        return self

    def _take_over(self, stale: dict) -> bool:
        """Remove a stale lease, if this waiter wins the right to (one conditional create)."""
        marker = f"{self.key}.takeover-{stale.get('token', 'unknown')}"
        if not self.bucket.create_if_absent(marker, self._record()):
            # Another waiter is taking it over; a marker left by a waiter killed meanwhile expires too.
            data = self.bucket.get_bytes(marker)
            try:
                expired = data is not None and json.loads(data)["expires_at"] < time.time()
            except (ValueError, KeyError):
                expired = True
            if expired:
                self.bucket.delete([marker])
            return False
        try:
            again = self._current()
            if again is not None and again.get("token") == stale.get("token"):
                self.bucket.delete([self.key])
            return True
        finally:
            self.bucket.delete([marker])

    def _renew(self) -> None:
        while not self._stop.wait(self.ttl / 4):
            try:
                current = self._current()
                if current is None or current.get("token") != self.token:
                    self.lost = True
                    return
                self.bucket.put_bytes(self.key, self._record())
            except Exception:  # noqa: BLE001 - a missed renewal is retried; expiry is TTL away
                continue

    def confirm(self) -> None:
        """Called just before the manifest switches: fail if another run has taken the lease over."""
        current = self._current()
        if self.lost or current is None or current.get("token") != self.token:
            self.lost = True
            raise LeaseLost(
                f"pipeline {self.pipeline!r}: the lease on {self.what} at {self.bucket.uri(self.folder)} ran out "
                f"(not renewed for {self.ttl:.0f}s) and another run took it over; this run ({self.holder}) stopped "
                "before switching the manifest, so the folder holds the other run's version")

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        if self._beat is not None:
            self._beat.join(timeout=5)
        try:
            current = self._current()
            if current is not None and current.get("token") == self.token:
                self.bucket.delete([self.key])
        except Exception as exc:  # noqa: BLE001 - it expires by itself; the write's own outcome matters more
            import logging

            logging.getLogger(__name__).warning(
                f"could not release the lease {self.bucket.uri(self.key)} ({exc}); it expires within {self.ttl:.0f}s")

    def _held_by(self, current: dict) -> LeaseHeld:
        expires = current.get("expires_at", 0) - time.time()
        return LeaseHeld(
            f"pipeline {self.pipeline!r}: {self.what} at {self.bucket.uri(self.folder)} is being written by another "
            f"run: run {current.get('run_id')} (host {current.get('host')}, pid {current.get('pid')}) holds its "
            f"lease {self.bucket.uri(self.key)}; waited {self.wait:.0f}s. Nothing was changed by this run. Rerun "
            f"it when that run has finished; if that run was killed, its lease expires by itself in "
            f"{max(expires, 0):.0f}s (leases last {self.ttl:.0f}s unless renewed)")
