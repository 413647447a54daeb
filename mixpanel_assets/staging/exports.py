"""The work of each asset, kept apart from the Dagster decorators so it reads (and tests) plainly.

`export_events` turns a run's partitions into Export API queries (one per local day at most),
stages the rows, stores each partition's identity links, and returns the staged windows for the
destination's IO manager. `export_people` and `export_identity` stage whole tables.
"""

from __future__ import annotations

import logging
import time
import zoneinfo
from collections.abc import Iterator
from dataclasses import dataclass

from mixpanel_assets.mixpanel.errors import SourceStreamError
from mixpanel_assets.mixpanel.sources import EventSource, Span
from mixpanel_assets.schema import IDENTITY_COLUMNS
from mixpanel_assets.staging.input_checks import REACH_SECONDS, check_bad_lines
from mixpanel_assets.staging.scratch import scratch_folder
from mixpanel_assets.staging.stage import (
    BadInputError,
    ExportStreamError,
    StagedEvents,
    StagedTable,
    stage_events,
    stage_table,
)
from mixpanel_assets.transform.link_store import StateStore
from mixpanel_assets.transform.records import MAX_REPORTED_BAD_LINES, BadLine, profile_row
from mixpanel_assets.windows import PartitionWindow, Window, query_spans


@dataclass(frozen=True)
class EventsExportSpec:
    pipeline: str
    timezone: str
    events: tuple[str, ...] | None = None
    where: str | None = None
    legacy_timezone: str | None = None
    workers: int = 2
    max_bad_fraction: float = 0.001
    max_bad_count: int | None = None
    staging_dir: str | None = None
    max_days_per_query: int = 1
    suppressed_distinct_ids: frozenset[str] = frozenset()  # users deleted by gdpr.py: never exported again


def _inputs_for_spans(source: EventSource, spans, spec: EventsExportSpec) -> Iterator:
    for start, end, _ in spans:
        yield from source.event_inputs(Span(start, end), spec.events, spec.where)


def stage_source(source: EventSource, spans, windows: list[Window], keys: list[str], spec: EventsExportSpec,
                 describe: str, log: logging.Logger, *, write_rows: bool = True, progress=None,
                 retrying: str = "exporting the span again") -> StagedEvents:
    """Stage the source's events of `spans` into `windows`; the same parsing, dedup, filters and
    bad-line policy for an export and for a sync probe, so their fingerprints compare.

    One attempt queries the spans and stages them from scratch: a cut stream cannot be resumed,
    so after a transient failure (429, 5xx, a cut or 'terminated early' stream) the source's
    retry layer (mixpanel/retry.py) runs the whole attempt again; each attempt is one more query
    per span it reached. This is the only retry of an export or a probe."""
    client_filter = spec.events if (spec.events and not source.filters_events_server_side()) else None
    queries_before = source.queries

    def attempt() -> StagedEvents:
        try:
            return stage_events(
                _inputs_for_spans(source, spans, spec),
                windows,
                keys,
                staging_root=spec.staging_dir,
                workers=spec.workers,
                events_filter=client_filter,
                legacy_timezone=spec.legacy_timezone,
                max_bad_fraction=spec.max_bad_fraction,
                max_bad_count=spec.max_bad_count,
                write_rows=write_rows,
                describe_source=describe,
                progress=progress,
                suppressed_distinct_ids=spec.suppressed_distinct_ids,
                outside_reach=REACH_SECONDS if source.bounds_event_times() else None,
            )
        except ExportStreamError as exc:  # staging saw Mixpanel's 'terminated early' line
            raise SourceStreamError(str(exc)) from exc

    staged = source.retries.call(attempt, describe, log, action=retrying)
    staged.queries = source.queries - queries_before
    return staged


def export_events(source: EventSource, windows: list[PartitionWindow], spec: EventsExportSpec,
                  state: StateStore | None, log: logging.Logger) -> StagedEvents:
    """Stage the events of `windows` (retrying a cut stream), and record their identity links."""
    spans = query_spans(windows, zoneinfo.ZoneInfo(spec.timezone), spec.max_days_per_query)
    describe = f"pipeline {spec.pipeline!r}: {source.description}, partitions {windows[0].partition_key}" + (
        f"..{windows[-1].partition_key}" if len(windows) > 1 else ""
    )
    started = time.monotonic()
    staged = stage_source(source, spans, windows, [w.partition_key for w in windows], spec,
                          describe, log, progress=log.info)  # staged as these partitions (StagedWindow.partition)
    elapsed = max(time.monotonic() - started, 1e-6)
    log.info(
        f"{describe}: {staged.lines} lines, {staged.rows} rows after removing {staged.duplicates} duplicates, "
        f"{staged.bad_lines} bad lines, {staged.outside_window} outside the windows; "
        f"{staged.lines / elapsed:,.0f} lines/s with {spec.workers} workers, {staged.queries} source queries"
    )
    if staged.bad_examples:
        log.warning("malformed lines skipped:\n" + "\n".join(f"  {where}: {why}" for where, why in staged.bad_examples))
    for staged_window in staged.windows:
        if state is not None:
            state.write_links(spec.pipeline, staged_window.partition_key, staged_window.links)
    return staged


def export_people(source: EventSource, staging_dir: str | None, max_bad_fraction: float,
                  log: logging.Logger, max_bad_count: int | None = None) -> StagedTable:
    """Stage all profiles; malformed profiles are counted, reported and judged by the events'
    bad-line rule (`check_bad_lines`, project.bad_lines).

    One attempt reads every profile and stages it from scratch: a read that does not add up to
    Engage's `total` raises from the source at its end, and the retry layer (retry.py) reads it
    all again, within that error's own limit; page-level failures were retried inside."""

    def attempt() -> StagedTable:
        counts = {"read": 0, "bad": 0}
        examples: list[tuple[str, str]] = []

        def rows() -> Iterator[bytes]:
            # A source yields an empty line for a line it skips (blank, a deleted user), so n is the line number.
            for n, line in enumerate(source.profile_lines(), start=1):
                if not line.strip():
                    continue
                counts["read"] += 1
                try:
                    yield profile_row(line)[1]
                except BadLine as exc:
                    counts["bad"] += 1
                    if len(examples) < MAX_REPORTED_BAD_LINES:
                        examples.append((f"{source.profiles_origin} {n}", f"{exc}: {line[:80]!r}"))

        staged = stage_table(rows(), "mp_people_data", staging_root=staging_dir)
        staged.lines, staged.bad_lines, staged.bad_examples = counts["read"], counts["bad"], examples
        try:
            check_bad_lines(staged, max_bad_fraction, max_bad_count, source.description,
                            "profiles are malformed")
        except BadInputError:
            staged.cleanup()
            raise
        return staged

    staged = source.retries.call(attempt, f"{source.description}: profiles", log, action="reading every profile again")
    staged.extra_metadata = {"profiles_read": staged.lines, "bad_profiles": staged.bad_lines}
    if staged.bad_examples:
        log.warning("malformed profiles skipped:\n" + "\n".join(f"  {w}: {why}" for w, why in staged.bad_examples))
    return staged


def export_identity(state: StateStore, event_pipelines: list[str], system: str, staging_dir: str | None,
                    memory_limit_mb: int = 512) -> StagedTable:
    """Resolve all stored identity links of the project's events pipelines into mappings.

    Reads only the small per-partition link files, never the events, and recomputes the whole
    mapping from them (identity.py): a re-exported partition has already replaced its links.
    """
    from mixpanel_assets.transform.identity import resolve_link_files  # DuckDB + pyarrow: ~40 MB no events run needs

    with scratch_folder("identity", staging_dir) as workdir:
        resolution = resolve_link_files(state.link_files(event_pipelines), system, workdir,
                                        memory_limit=f"{memory_limit_mb}MB")
        staged = stage_table(resolution.lines(), "mp_identity_mappings_data", staging_root=staging_dir)
    staged.extra_metadata = {**resolution.metadata(), "columns": [c for c, _ in IDENTITY_COLUMNS]}
    return staged
