"""Stage an export: stream source lines into deduplicated, per-window rows on local disk.

The three steps, each with memory that does not grow with the size of the day:

1. Parse. The source's byte stream is cut into ~4 MB blocks at line ends (blocks.py); worker
   processes parse them (block_worker.py), write each block's rows per window to the staging
   folder, once, and return one 40-byte dedup-key record per row.
2. Deduplicate (dedup.py). Key records are spread over 256 bucket files by hash, so one bucket at
   a time fits in memory; within a bucket, duplicates of Mixpanel's key (event, distinct_id, time,
   $insert_id) are found by sorting, and the copy Mixpanel shows is kept.
3. Write parts. Per window, the staged rows minus their duplicates are compressed into part
   files in parallel (`StagedWindow.write_parts`), ready for any destination; nothing is parsed again.

Staging on disk also means a destination that fails and is retried reads the staged rows again
instead of spending another Export API query.

Before anything is written, the gates in input_checks.py judge the counts the parse step
gathered (bad lines, rows far outside the windows).
"""

from __future__ import annotations

import hashlib
import shutil
from array import array
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mixpanel_assets.mixpanel.errors import BadInputError  # noqa: F401 - raised here, re-exported
from mixpanel_assets.staging.block_worker import BlockSpec, block_path, write_part
from mixpanel_assets.staging.blocks import BLOCK_BYTES, _Block, _Inputs, _Progress, _run_blocks
from mixpanel_assets.staging.dedup import Fingerprint, _deduplicate, _KeyBuckets
from mixpanel_assets.staging.disk import StagingDiskError, write_file  # noqa: F401 - what staging raises on a failed write
from mixpanel_assets.staging.fragments import BoundaryJoins, absorb_joined, line_where
from mixpanel_assets.staging.input_checks import REACH_SECONDS, check_bad_lines, check_outside_window
from mixpanel_assets.staging.links import LINK_PARTS, LinkSet, links_dir, merge_links
from mixpanel_assets.staging.parts import EXTENSIONS, PartFile
from mixpanel_assets.staging.pool import InlineExecutor, process_pool, stop_futures
from mixpanel_assets.staging.rows_files import Segment, filtered_lines, line_starts
from mixpanel_assets.staging.scratch import scratch_dir
from mixpanel_assets.staging.table_ids import IdCounter
from mixpanel_assets.transform.records import MAX_REPORTED_BAD_LINES, BlockResult
from mixpanel_assets.windows import PartitionWindow, Window


class ExportStreamError(RuntimeError):
    """The source stream was cut or ended with Mixpanel's 'export terminated early' line."""


@dataclass
class StagedRows:
    """Staged row blocks on local disk (minus duplicates), ready to become part files."""

    segments: list[Segment] = field(default_factory=list)
    rows_read: int = 0
    duplicates: int = 0

    @property
    def rows(self) -> int:
        return self.rows_read - self.duplicates

    def content_token(self) -> str:
        raise NotImplementedError

    def part_stem(self, fmt: str = "json") -> str:
        """Part names depend only on content: a rerun with the same data rewrites the same names."""
        digest = hashlib.sha1(f"{self.content_token()}|{fmt}".encode()).hexdigest()[:10]
        return f"part-{digest}"

    def part_plans(self, max_bytes: int) -> list[list[tuple[str, np.ndarray | None]]]:
        """Which staged rows go into which part: (segment path, rows to leave out) per part.

        Part k holds the rows whose offset in the window's staged row stream (duplicates included)
        falls in [k * max_bytes, (k + 1) * max_bytes). That stream is the same whichever run staged
        the window, while its blocks are not (a range run's query cuts them elsewhere), so cutting by
        offset, not at block ends, keeps part contents and names identical across runs.
        """
        plans: list[list[tuple[str, np.ndarray | None]]] = []
        offset = 0
        for seg in self.segments:
            begin, end = offset, offset + seg.raw_bytes
            offset = end
            if seg.rows == 0 or end == begin:
                continue
            first, last = begin // max_bytes, (end - 1) // max_bytes
            if first == last:
                _plan(plans, first).append((str(seg.path), _rows_array(seg.drop_rows)))
                continue
            starts = line_starts(filtered_lines(seg.path, None)[0]) + begin
            owner = starts // max_bytes
            dropped = seg.drop_rows if seg.drop_rows is not None else np.empty(0, dtype=np.int64)
            for k in range(int(owner[0]), int(owner[-1]) + 1):
                outside = np.flatnonzero(owner != k)
                if len(outside) == len(owner):
                    continue
                _plan(plans, k).append((str(seg.path), _rows_array(np.union1d(outside, dropped))))
        return [plan for plan in plans if plan]

    def write_parts(self, out_dir: Path, *, fmt: str = "json", compression: str = "gzip",
                    max_bytes: int = 256 << 20, workers: int = 1, table: str = "mp_master_event") -> list[PartFile]:
        """Compress the kept rows into part files of ~max_bytes (uncompressed) each, in parallel."""
        plans = self.part_plans(max_bytes)
        # Parquet even as one part: the run process neither loads the writer nor keeps its freed memory.
        pooled = len(plans) > 1 or (fmt == "parquet" and plans)
        executor: Executor = process_pool(workers) if pooled else InlineExecutor()
        stem = self.part_stem(fmt)
        futures = [
            executor.submit(write_part, plan, str(out_dir), stem, i, compression, fmt, table)
            for i, plan in enumerate(plans)
        ]
        parts = []
        try:
            for future in futures:
                path, rows, raw, size, md5 = future.result()
                if path:
                    parts.append(PartFile(Path(path), rows, raw, size, md5))
        finally:
            stop_futures(futures)  # after a failure, no part is written once the caller cleans up
        return parts

    def iter_rows(self) -> Iterator[bytes]:
        """The kept rows as JSON lines (tests, checks and small destinations)."""
        for seg in self.segments:
            data, _ = filtered_lines(seg.path, seg.drop_rows)
            yield from data.splitlines()


def _rows_array(rows) -> array | None:
    """Row numbers as a stdlib array: it pickles to the part workers without importing numpy there."""
    return None if rows is None else array("I", [int(r) for r in rows])


def _plan(plans: list, index: int) -> list:
    while len(plans) <= index:
        plans.append([])
    return plans[index]


@dataclass
class StagedWindow(StagedRows):
    """One partition window of an events export."""

    window: Window = Window(0.0, 0.0)
    partition_key: str | None = None
    fingerprint: Fingerprint = Fingerprint()
    links: LinkSet | dict[tuple[str, str, str], float] = field(default_factory=lambda: LinkSet())
    partition: PartitionWindow | None = None  # the partition it stands for, when staged from one (exports.py)

    def content_token(self) -> str:
        return f"{self.window.start}-{self.window.end}-{self.fingerprint.token()}"


@dataclass
class StagedTable(StagedRows):
    """A whole table (people or identity mappings), replaced as a unit at the destination."""

    table: str = ""
    staging_dir: Path | None = None
    digest: str = ""
    extra_metadata: dict = field(default_factory=dict)
    lines: int = 0  # source lines read (profiles), for the bad-line rule (`check_bad_lines`)
    bad_lines: int = 0
    bad_examples: list[tuple[str, str]] = field(default_factory=list)
    duplicate_ids: int | None = None  # distinct_id values staged more than once (table_ids.py)

    def content_token(self) -> str:
        return f"{self.table}-{self.rows}-{self.digest}"

    def cleanup(self) -> None:
        if self.staging_dir is not None:
            shutil.rmtree(self.staging_dir, ignore_errors=True)


def stage_table(lines: Iterable[bytes], table: str, *, staging_root: str | Path | None = None,
                block_bytes: int = BLOCK_BYTES) -> StagedTable:
    """Stage already-transformed row lines of a whole table in blocks (bounded memory)."""
    staging_dir = scratch_dir(table, staging_root)
    staged = StagedTable(table=table, staging_dir=staging_dir)
    digest, ids = hashlib.sha1(), IdCounter(table)
    buffer: list[bytes] = []
    size = 0

    def flush() -> None:
        nonlocal buffer, size
        if not buffer:
            return
        ids.add(buffer)
        data = b"\n".join(buffer) + b"\n"
        path = block_path(staging_dir, 0, len(staged.segments))
        write_file(path, data)
        digest.update(data)
        staged.segments.append(Segment(path, len(buffer), len(data)))
        staged.rows_read += len(buffer)
        buffer, size = [], 0

    try:
        for line in lines:
            buffer.append(line)
            size += len(line) + 1
            if size >= block_bytes:
                flush()
        flush()
    except BaseException:
        staged.cleanup()
        raise
    staged.digest, staged.duplicate_ids = digest.hexdigest(), ids.duplicates()
    return staged


@dataclass
class StagedEvents:
    """The result of staging one run: its windows, counts for metadata, and where it lives."""

    staging_dir: Path
    windows: list[StagedWindow]
    lines: int = 0
    bad_lines: int = 0
    bad_examples: list[tuple[str, str]] = field(default_factory=list)
    outside_window: int = 0
    rejoined_lines: int = 0  # events whose line came split in two, joined again (fragments.py)
    millisecond_times: int = 0  # rows whose time was in milliseconds (block_worker.MS_TIMES)
    far_outside: int = 0  # rows beyond the run's reach: checked by _check_outside_window
    far_examples: list[tuple[str, float]] = field(default_factory=list)  # (where, time as sent)
    suppressed: int = 0  # rows of users deleted by a GDPR deletion, dropped (gdpr.py)
    source_bytes: int = 0
    queries: int = 0
    workers: int = 1
    owns_dir: bool = True
    _next_line: dict[str, int] = field(default_factory=dict, repr=False)  # per input: its next line number

    @property
    def rows(self) -> int:
        return sum(w.rows for w in self.windows)

    @property
    def duplicates(self) -> int:
        return sum(w.duplicates for w in self.windows)

    @property
    def fingerprint(self) -> Fingerprint:
        total = Fingerprint()
        for w in self.windows:
            total = total + w.fingerprint
        return total

    def cleanup(self) -> None:
        if self.owns_dir:
            shutil.rmtree(self.staging_dir, ignore_errors=True)


def stage_events(
    chunks: Iterable[bytes],
    windows: list[Window | PartitionWindow],
    partition_keys: list[str | None],
    *,
    staging_root: str | Path | None = None,
    workers: int = 1,
    events_filter: Iterable[str] | None = None,
    legacy_timezone: str | None = None,
    max_bad_fraction: float = 0.001,
    max_bad_count: int | None = None,
    write_rows: bool = True,
    block_bytes: int = BLOCK_BYTES,
    describe_source: str = "the export",
    progress: Callable[[str], None] | None = None,
    suppressed_distinct_ids: Iterable[str] | None = None,
    outside_reach: float | None = REACH_SECONDS,
) -> StagedEvents:
    """Stream `chunks` (raw export JSON lines) into deduplicated rows for each window.

    `chunks` holds bytes, `Origin` markers (a new input starts: line numbers restart) and
    `LocalFile` items (a whole local file the workers read themselves). A window given as a
    PartitionWindow is staged as that partition (`StagedWindow.partition`), for the destinations. `progress`, if given, is
    called about every PROGRESS_EVERY_SECONDS with a line on lines and bytes done, the rate and,
    when the input's size is known (local files), an ETA.

    Raises ExportStreamError if the stream reports it was cut, BadInputError if malformed lines
    exceed the policy or too many rows lie beyond `outside_reach` seconds of the windows (None:
    the source may hold rows of any time; see _check_outside_window), StagingDiskError if a staged
    file cannot be written; in each case the workers are stopped and nothing is left on disk.
    """
    partitions = [w if isinstance(w, PartitionWindow) else None for w in windows]
    windows = [w.window if isinstance(w, PartitionWindow) else w for w in windows]
    ordered = sorted(range(len(windows)), key=lambda i: windows[i].start)
    windows = [windows[i] for i in ordered]
    partitions = [partitions[i] for i in ordered]
    partition_keys = [partition_keys[i] for i in ordered]
    staging_dir = scratch_dir("stage", staging_root)
    staged = StagedEvents(
        staging_dir,
        [StagedWindow(window=w, partition_key=k, partition=p) for w, k, p in zip(windows, partition_keys, partitions)],
        workers=workers,
    )
    spec = BlockSpec(
        window_starts=tuple(w.start for w in windows),
        window_ends=tuple(w.end for w in windows),
        staging_dir=str(staging_dir),
        events_filter=frozenset(events_filter) if events_filter is not None else None,
        legacy_timezone=legacy_timezone,
        write_rows=write_rows,
        suppressed_distinct_ids=frozenset(suppressed_distinct_ids) if suppressed_distinct_ids else None,
        reach=(windows[0].start - outside_reach, max(w.end for w in windows) + outside_reach)
        if outside_reach is not None and windows else None,
    )
    buckets = _KeyBuckets(staging_dir / "keys", len(windows))
    terminated = False
    inputs = _Inputs(chunks, block_bytes)
    meter = _Progress(progress, describe_source, inputs)
    blocks = 0
    joins = BoundaryJoins()
    try:
        with closing(_run_blocks(inputs, spec, workers)) as results:  # closed: no worker writes after a failure
            for block, result in results:
                blocks += 1
                terminated |= result.terminated_early
                _absorb(staged, buckets, block, result, spec, joins)
                staged.source_bytes = inputs.source_bytes
                meter.update(staged)
        if terminated:
            raise ExportStreamError(
                f"{describe_source} ended with Mixpanel's 'export terminated early' line after "
                f"{staged.lines} events; the window is incomplete and nothing was written"
            )
        check_bad_lines(staged, max_bad_fraction, max_bad_count, describe_source)
        check_outside_window(staged, describe_source, outside_reach)
        # Links are merged in the pool while this process deduplicates, unless the input was small
        # enough to be parsed inline (starting worker processes would then cost more than it saves).
        executor = process_pool(workers) if workers > 1 and blocks > 1 else InlineExecutor()
        links = [
            [executor.submit(merge_links, str(staging_dir), w, part) for part in range(LINK_PARTS)]
            if links_dir(staging_dir, w).is_dir() else []
            for w in range(len(windows))
        ]
        drops, fingerprints, dup_counts = _deduplicate(buckets, len(windows))
        for w, window in enumerate(staged.windows):
            merged = [future.result() for future in links[w]]
            window.links = LinkSet([path for path, count in merged if count], sum(count for _, count in merged))
            window.fingerprint = fingerprints[w]
            window.duplicates = int(dup_counts[w])
            for seg_block, seg in _segments_with_blocks(window):
                seg.drop_rows = drops.get((w, seg_block))
    except BaseException:
        staged.cleanup()
        raise
    shutil.rmtree(staging_dir / "keys", ignore_errors=True)
    for w in range(len(windows)):
        shutil.rmtree(links_dir(staging_dir, w), ignore_errors=True)
    return staged


def _segments_with_blocks(window: StagedWindow):
    for seg in window.segments:
        yield int(seg.path.stem[1:]), seg


def _absorb(staged: StagedEvents, buckets: _KeyBuckets, block: _Block, result: BlockResult, spec: BlockSpec,
            joins: BoundaryJoins) -> None:
    first_line = block.first_line
    if first_line is None:
        first_line = staged._next_line.get(block.origin, 1)
    staged._next_line[block.origin] = first_line + result.line_count
    staged.lines += result.lines
    staged.bad_lines += result.bad_lines
    staged.outside_window += result.outside_window
    staged.suppressed += result.suppressed
    staged.rejoined_lines += result.rejoined_lines
    staged.millisecond_times += result.millisecond_times
    staged.far_outside += result.far_outside
    room = MAX_REPORTED_BAD_LINES - len(staged.bad_examples)
    if room > 0:
        for index, why in result.bad_examples[:room]:
            line_no = first_line + index
            where = f"{block.origin} line {line_no}" if block.origin else f"line {line_no}"
            staged.bad_examples.append((where, why))
    for index, time in result.far_examples[:max(0, MAX_REPORTED_BAD_LINES - len(staged.far_examples))]:
        staged.far_examples.append((line_where(block.origin, first_line + index), time))
    if result.head_fragment is not None or result.tail_fragment is not None or joins.tail is not None:
        joined = joins.check(block.block_id, block.origin, first_line, result)
        if joined is not None:  # its row goes before this block's rows, where the line was
            absorb_joined(staged, buckets, joined, spec)
    block_id = block.block_id
    for w, window in enumerate(staged.windows):
        rows = result.rows_per_window[w]
        if not rows:
            continue
        window.rows_read += rows
        window.segments.append(
            Segment(block_path(spec.staging_dir, w, block_id), rows, result.bytes_per_window[w])
        )
        buckets.add(w, block_id, result.hashes_per_window[w], result.procs_per_window[w],
                    result.no_dedup_per_window[w])


def part_extension(fmt: str, compression: str) -> str:
    return EXTENSIONS[(fmt, compression)]
