"""Data sync: which exported days changed in Mixpanel since their export, found without re-exporting.

Mixpanel's data can change after a day was exported: late mobile events, back-dated `/import`s,
deletions. Re-exporting every day every day would cost one Export API query per day (60/hour
allowed) and hours of work, so changes are detected with *fingerprints*:

* Every export records, per partition, `staging.Fingerprint` (deduplicated row count, sum of the
  64-bit dedup-key hashes of the kept rows, newest `mp_processing_time_ms`) as the
  `mixpanel/fingerprint` materialization metadata. A late or back-dated event changes the count
  and the key sum; a deletion lowers them; a re-ingested copy of an event (same dedup key, newer
  processing time) changes the newest processing time. The fingerprint is additive, so a day's
  is the sum of its hours'.
* A *probe* (a run of its own, so the sensor never waits on Mixpanel) reads the sync window with
  **one** Export API query, through the same parser and deduplication as an export but writing no
  rows, and records each day's current fingerprint as an observation of the Mixpanel events asset.
* The sensor compares the two with instance reads only and requests a re-export for each day
  whose fingerprints differ.

This module holds the decisions (which days, what changed, the probe itself), free of sensor
plumbing, so they read and test plainly; sensors.py wires them into Dagster.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
import zoneinfo
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from mixpanel_assets.config import PipelineConfig, ProjectConfig, SyncWindow
from mixpanel_assets.defs.partitions import UTC, PartitionWindow
from mixpanel_assets.mixpanel.sources import EventSource, Span
from mixpanel_assets.staging.dedup import Fingerprint
from mixpanel_assets.staging.exports import EventsExportSpec, stage_source

# Metadata keys, shared by the export (materializations), the probe (observations) and the sensor.
FINGERPRINT_KEY = "mixpanel/fingerprint"
PROBE_FINGERPRINTS_KEY = "mixpanel/probe_fingerprints"
PROBE_STARTED_KEY = "mixpanel/probe_started_at"
PIPELINE_KEY = "mixpanel/pipeline"

# Run tags of the runs the sensor requests, so the UI (and the sensor itself) can tell them apart.
SYNC_TAG = "mixpanel/sync"
SYNC_DAY_TAG = "mixpanel/sync_day"
SYNC_REASON_TAG = "mixpanel/sync_reason"
SYNC_FINGERPRINT_TAG = "mixpanel/sync_fingerprint"
EXPORTED_FINGERPRINT_TAG = "mixpanel/exported_fingerprint"
PROBE_TAG = "mixpanel/sync_probe"


@dataclass(frozen=True)
class ExportedDay:
    """What the destination holds for one project-local day, according to the export records."""

    day: dt.date
    partition_keys: tuple[str, ...]  # every partition of the day (24 hours, 23/25 on DST days, or the day)
    fingerprint: Fingerprint | None  # the sum over the day's partitions; None if incomplete
    exported_at: float  # newest materialization among the day's partitions (epoch seconds)
    missing: int = 0  # partitions of the day never exported (hourly pipelines)


@dataclass(frozen=True)
class Probe:
    """The source's fingerprints of some days, as one probe run saw them."""

    run_id: str
    started_at: float  # when the probe's Export API query started (epoch seconds)
    fingerprints: Mapping[str, str]  # ISO day -> Fingerprint token


@dataclass(frozen=True)
class Change:
    day: dt.date
    exported: Fingerprint
    source: Fingerprint

    @property
    def reason(self) -> str:
        """A short human reason, shown as the sync run's `mixpanel/sync_reason` tag."""
        delta = self.source.rows - self.exported.rows
        if delta > 0:
            return f"{delta} more events in Mixpanel (late or back-dated events)"
        if delta < 0:
            return f"{-delta} fewer events in Mixpanel (deleted events)"
        if self.source.key_sum != self.exported.key_sum:
            return "same number of events but different ones (events replaced)"
        return "events re-ingested with a newer mp_processing_time_ms (newer copies of exported events)"


def day_bounds(day: dt.date, tz: zoneinfo.ZoneInfo) -> tuple[dt.datetime, dt.datetime]:
    """A project-local day as a UTC interval [start, end); 23 or 25 hours long on DST days."""
    start = dt.datetime.combine(day, dt.time(0), tzinfo=tz).astimezone(UTC)
    end = dt.datetime.combine(day + dt.timedelta(days=1), dt.time(0), tzinfo=tz).astimezone(UTC)
    return start, end


def day_windows(first: dt.date, last: dt.date, tz: zoneinfo.ZoneInfo) -> list[PartitionWindow]:
    """One window per local day from `first` to `last` inclusive, keyed by the ISO date."""
    windows = []
    day = first
    while day <= last:
        start, end = day_bounds(day, tz)
        windows.append(PartitionWindow(day.isoformat(), start, end, start.astimezone(tz), "daily"))
        day += dt.timedelta(days=1)
    return windows


def candidate_days(days: Iterable[dt.date], today: dt.date, window: SyncWindow) -> list[dt.date]:
    """Days young enough for the sync window (`max_age_days`), before looking at export times."""
    oldest = None if window.max_age_days is None else today - dt.timedelta(days=window.max_age_days)
    return sorted(d for d in days if d < today and (oldest is None or d >= oldest))


def due_days(exported: Mapping[dt.date, ExportedDay], now: float, window: SyncWindow) -> list[dt.date]:
    """Complete days whose newest export is at least `min_age_hours` old: the ones worth probing.

    The minimum age gives Mixpanel time to receive the stragglers of a day before it is compared
    (Mixpanel's own sync started checking 24 h after the export), and keeps a day that was just
    re-exported from being checked again at once.
    """
    min_age = window.min_age_hours * 3600
    return sorted(
        d.day for d in exported.values()
        if d.fingerprint is not None and now - d.exported_at >= min_age
    )


def changes(exported: Mapping[dt.date, ExportedDay], days: Iterable[dt.date], probe: Probe) -> list[Change]:
    """Days whose probed fingerprint differs from the exported one.

    A day exported after the probe started is skipped: the export may already hold data the
    probe did not see, so comparing would request a needless re-export. The next probe decides.
    """
    result = []
    for day in days:
        state = exported.get(day)
        token = probe.fingerprints.get(day.isoformat())
        if state is None or state.fingerprint is None or token is None:
            continue
        if state.exported_at >= probe.started_at:
            continue
        source = Fingerprint.from_token(token)
        if source != state.fingerprint:
            result.append(Change(day, state.fingerprint, source))
    return result


def sum_fingerprints(tokens: Iterable[str | None]) -> Fingerprint | None:
    """The fingerprint of a day from its partitions' tokens; None if any partition lacks one."""
    total = Fingerprint()
    for token in tokens:
        if token is None:
            return None
        total = total + Fingerprint.from_token(token)
    return total


@dataclass
class ProbeResult:
    fingerprints: dict[str, Fingerprint]  # ISO day -> fingerprint
    started_at: float
    queries: int
    lines: int
    bad_lines: int


def probe_source(source: EventSource, pipeline: PipelineConfig, project: ProjectConfig, first: dt.date,
                 last: dt.date, log: logging.Logger, *, workers: int | None = None,
                 staging_dir: str | None = None, suppressed_distinct_ids: frozenset[str] = frozenset()) -> ProbeResult:
    """The source's current fingerprint of each day from `first` to `last`, with one query.

    Parses and deduplicates exactly like an export of the pipeline (same events/where filters,
    same bad-line policy, same users deleted by GDPR deletions left out) but keeps no rows, so the
    fingerprints are comparable with the exported ones and the disk used is the dedup keys. A cut stream is retried, like an
    export; each retry is one more query.
    """
    tz = project.tz
    windows = day_windows(first, last, tz)
    span = Span(windows[0].start, windows[-1].end)
    spec = EventsExportSpec(
        pipeline=pipeline.name, timezone=project.timezone, events=pipeline.events, where=pipeline.where,
        legacy_timezone=project.timezone if project.legacy_project_timezone_dates else None,
        workers=workers or project.export_workers, max_bad_fraction=project.bad_lines.max_fraction,
        max_bad_count=project.bad_lines.max_count, staging_dir=staging_dir,
        suppressed_distinct_ids=suppressed_distinct_ids,
    )
    describe = f"pipeline {pipeline.name!r} sync probe: {source.description}, days {first}..{last}"
    started = time.time()
    staged = stage_source(source, [(span.start, span.end, windows)], [w.window for w in windows],
                          [w.partition_key for w in windows], spec, describe, log, write_rows=False,
                          retrying="probing again")
    try:
        fingerprints = {w.partition_key: w.fingerprint for w in staged.windows}
        return ProbeResult(fingerprints, started, staged.queries, staged.lines, staged.bad_lines)
    finally:
        staged.cleanup()
