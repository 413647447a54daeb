"""Work done inside worker processes: parse a block of export lines, and write a part file.

Both functions take and return only plain, picklable values, and write their bulk output to
files in the run's staging folder, so little crosses the process boundary: a block's rows go to
disk, and only counts, dedup-key hashes and identity links come back. A block of a local,
uncompressed file is not sent at all: the worker reads its byte range itself (`FileRange`), so
the coordinating process never touches the bytes.

`parse_block` is the hot loop of every export (one iteration per event); what a line's row, key
and links are is decided in transform/events.py, this loop only sorts them into windows.
"""

from __future__ import annotations

import datetime as dt
import os
import struct
import zoneinfo
from bisect import bisect_right
from dataclasses import dataclass
from pathlib import Path

from mixpanel_assets.staging.disk import disk_error, write_file
from mixpanel_assets.staging.links import write_block_links
from mixpanel_assets.staging.rows_files import filtered_lines
from mixpanel_assets.transform.events import (
    event_row,
    identity_links,
    key_digest,
    processing_time,
    read_event,
    refusal,
)
from mixpanel_assets.transform.records import MAX_REPORTED_BAD_LINES, TERMINATED_EARLY, BadLine, BlockResult
from mixpanel_assets.windows import window_tail

FLAG_NO_DEDUP = 1  # a row without $insert_id: Mixpanel never deduplicates it
_U64_NATIVE = struct.Struct("=Q")  # what numpy reads back as uint64 (dedup._KeyBuckets)
_U32_NATIVE = struct.Struct("=I")
# A `time` above this is milliseconds: 1e11 seconds is the year 5138, when no event was ever sent,
# and 1e11 milliseconds is 1973-03-03, before any Mixpanel project. Exports made with
# `time_in_ms=true` (or files written from one) carry such times; the row's `time` is converted to
# seconds (an integer when the milliseconds are whole seconds, so both exports give the same row
# and dedup key); its `properties` keep the value as sent. Only rows outside every window are
# tested (no millisecond time is inside one), so rows in their window pay nothing for it.
MS_TIMES = 1e11
MAX_FAR_EXAMPLES = 5  # per block: rows far outside the run's reach, reported by line and time


@dataclass(frozen=True)
class BlockSpec:
    """Everything a worker needs to know about the run, sent with each block (small)."""

    window_starts: tuple[float, ...]
    window_ends: tuple[float, ...]
    staging_dir: str
    events_filter: frozenset[str] | None = None
    legacy_timezone: str | None = None
    write_rows: bool = True
    collect_links: bool = True
    suppressed_distinct_ids: frozenset[str] | None = None  # deleted users (gdpr.py): rows dropped
    # [start, end) of the times the source can give for the run (its windows plus a margin,
    # input_checks.REACH_SECONDS); rows outside it are counted as `far_outside`. None: any time is expected.
    reach: tuple[float, float] | None = None


@dataclass(frozen=True)
class FileRange:
    """The lines of a local file that start in byte range [start, end): a block the worker reads itself."""

    path: str
    start: int
    end: int


class InputFileChanged(RuntimeError):
    """A local input file got shorter while it was being exported: the lines staging planned to read are gone."""


def _legacy_converter(timezone: str):
    """Project-local epoch seconds -> UTC epoch seconds (projects created before 2023)."""
    tz = zoneinfo.ZoneInfo(timezone)

    def convert(local_epoch):
        try:
            naive = dt.datetime(1970, 1, 1) + dt.timedelta(seconds=local_epoch)
            offset = naive.replace(tzinfo=tz).utcoffset().total_seconds()
        except (OverflowError, ValueError):  # not a date a time zone has (years 1-9999)
            raise BadLine(f"properties.time {local_epoch!r} is not a time in {timezone} (years 1 to 9999)") from None
        result = local_epoch - offset
        return int(result) if isinstance(local_epoch, int) and result == int(result) else result

    return convert


def block_path(staging_dir: str | Path, window_index: int, block_id: int) -> Path:
    """A staged block's rows of one window."""
    return Path(staging_dir) / f"w{window_index:05d}" / f"b{block_id:07d}.jsonl"


def read_range(source: FileRange) -> bytes:
    """The whole lines that start inside the range: a line begun before `start` belongs to the
    previous block, and the line running over `end` is read to its end.

    Both ends are found with small probes first, so the block is read with one `pread` into one
    bytes object: no slicing or joining copies of 4 MB per block. Plain reads, not a memory map: a
    file truncated while mapped kills the process with SIGBUS, where a read returns short and the
    error below names the file.
    """
    fd = os.open(source.path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        if size < source.end:
            raise InputFileChanged(
                f"{source.path} is {size:,} bytes now, but bytes {source.start:,}-{source.end:,} of it were to be "
                "exported: it changed while being exported; export the partition again once it is complete")
        begin = 0 if source.start == 0 else _after_newline(fd, source.start - 1, source.end)
        if begin is None or begin >= source.end:
            return b""
        stop = _after_newline(fd, source.end - 1, None)
        data = os.pread(fd, stop - begin, begin)
        if len(data) != stop - begin:
            raise InputFileChanged(
                f"{source.path} got shorter while its bytes {begin:,}-{stop:,} were being read; "
                "export the partition again once it is complete")
        return data
    finally:
        os.close(fd)


def _after_newline(fd: int, pos: int, limit: int | None) -> int | None:
    """The offset just past the first newline at or after `pos` (before `limit`, if given);
    the end of the file if there is none, or None if `limit` comes first."""
    probe = 4096
    while limit is None or pos < limit:
        size = probe if limit is None else min(probe, limit - pos)
        chunk = os.pread(fd, size, pos)
        if not chunk:
            return None if limit is not None else pos
        cut = chunk.find(b"\n")
        if cut >= 0:
            return pos + cut + 1
        pos += len(chunk)
        probe = min(probe * 4, 1 << 20)
    return None


def process_block(source: bytes | FileRange, block_id: int, spec: BlockSpec) -> BlockResult:
    """Parse every line of a block and sort the rows into the run's windows.

    Rows go to one staging file per window, written once: the part files are made from them. For
    each row the worker returns its 16-byte dedup-key hash and its mp_processing_time_ms (row order
    is implicit), so the coordinator can find duplicates across the whole run without holding rows
    in memory. Bad lines are reported by their line index within the block; the coordinator turns
    that into a line number of the input.
    """
    block = read_range(source) if isinstance(source, FileRange) else source
    result, buffers, links = parse_block(block, spec)
    if spec.write_rows:
        for w, data in enumerate(buffers):
            if data:
                write_file(block_path(spec.staging_dir, w, block_id), data)
    for w, window_links in enumerate(links):
        if window_links:
            write_block_links(spec.staging_dir, w, block_id, window_links)
    return result


def parse_block(block: bytes, spec: BlockSpec) -> tuple[BlockResult, list[bytearray], list[dict]]:
    """A block's rows per window (newline-terminated), its BlockResult, and its identity links per window."""
    starts, ends = spec.window_starts, spec.window_ends
    n_windows = len(starts)
    single = n_windows == 1
    first_start, first_end = starts[0], ends[0]
    # A time in a window's last half microsecond is stored as that window's last microsecond, not
    # rounded into the next window (windows.window_tail); checked only once a time fails the window
    # test, so good lines pay nothing for it.
    tails = [window_tail(end) for end in ends]
    limits, lasts = [first for first, _ in tails], [last for _, last in tails]
    first_limit = limits[0]
    # Rows are appended to one buffer per window rather than kept as a list of bytes objects: each
    # row then reuses memory that is warm in the cache instead of claiming new memory (3x slower).
    buffers = [bytearray() for _ in range(n_windows)]
    hashes = [bytearray() for _ in range(n_windows)]  # 16 bytes a row: a window's row count is len // 16
    procs = [bytearray() for _ in range(n_windows)]  # native uint64 a row
    no_dedup = [bytearray() for _ in range(n_windows)]  # native uint32 row indexes
    links: list[dict] = [{} for _ in range(n_windows)]
    result = BlockResult(rows_per_window=[0] * n_windows, bytes_per_window=[0] * n_windows)
    convert = _legacy_converter(spec.legacy_timezone) if spec.legacy_timezone else None
    events_filter = spec.events_filter
    collect_links = spec.collect_links
    suppressed_ids = spec.suppressed_distinct_ids
    pack_proc, pack_row = _U64_NATIVE.pack, _U32_NATIVE.pack
    lines = outside = suppressed = 0
    parts = block.split(b"\n")
    for index, line in enumerate(parts):
        if not line:
            continue
        try:
            name, time, fields, properties = read_event(line)
        except BadLine as exc:
            if line.isspace():
                continue
            if line.strip() == TERMINATED_EARLY:
                result.terminated_early = True
                continue
            joined = _rejoin(parts, index, result)
            if joined is None:
                lines += 1
                result.bad_lines += 1
                if len(result.bad_examples) < MAX_REPORTED_BAD_LINES:
                    result.bad_examples.append((index, f"{exc}: {line[:80]!r}"))
                continue
            name, time, fields, properties = joined
        lines += 1
        try:  # any other line that cannot become a row is a bad line too; the try costs good lines nothing
            if convert is not None:
                if time > MS_TIMES:
                    time = from_ms(time)
                    result.millisecond_times += 1
                time = convert(time)
            if events_filter is not None and name not in events_filter:
                outside += 1
                continue
            if single:
                if first_start <= time < first_limit:
                    w = 0
                elif first_start <= time < first_end:
                    time, w = lasts[0], 0
                else:
                    time, w = _outside(time, index, spec, result)
                    if w < 0:
                        continue
            else:
                w = bisect_right(starts, time) - 1
                if w < 0 or time >= limits[w]:
                    if w >= 0 and time < ends[w]:
                        time = lasts[w]
                    else:
                        time, w = _outside(time, index, spec, result)
                        if w < 0:
                            continue
            if suppressed_ids is not None and fields.distinct_id in suppressed_ids:
                suppressed += 1
                continue
            row = event_row(name, time, fields, properties)
            digest = key_digest(name, time, fields)
            event_links = identity_links(name, fields) if collect_links else None
        except Exception as exc:  # noqa: BLE001 - counted and reported with its reason, like any bad line
            _refuse(result, index, line, exc)
            continue
        window_hashes = hashes[w]
        if fields.insert_id is None:
            no_dedup[w] += pack_row(len(window_hashes) >> 4)
        buffer = buffers[w]
        buffer += row
        buffer += b"\n"
        window_hashes += digest
        procs[w] += pack_proc(processing_time(fields))
        if event_links:
            window_links = links[w]
            for link in event_links:
                seen = window_links.get(link)
                if seen is None or time < seen:
                    window_links[link] = time
    result.line_count = len(parts) - block.endswith(b"\n") if block else 0  # the split counted them
    result.lines = lines
    result.outside_window += outside
    result.suppressed = suppressed
    result.rows_per_window = [len(h) >> 4 for h in hashes]
    result.bytes_per_window = [len(b) if spec.write_rows else 0 for b in buffers]
    result.hashes_per_window = [bytes(h) for h in hashes]
    result.procs_per_window = [bytes(p) for p in procs]
    result.no_dedup_per_window = [bytes(r) for r in no_dedup]
    return result, buffers, links


def _rejoin(parts: list[bytes], index: int, result: BlockResult):
    """The event that bad line `index` makes with the next line, or None; only ever called for a bad line.

    Mixpanel occasionally splits a line in two (MIXPANEL_SPEC.md section 4; Airbyte's source
    joins adjacent fragments too). A bad line and the next one are joined when together they read
    as one event; the next line is then emptied, so the loop skips it. A line that cannot be joined
    and begins or ends the block is handed to the coordinator (`head_fragment`/`tail_fragment`),
    which joins it with its neighbour across the block boundary (fragments.py). Joining never takes
    a good line: a fragment closes brackets its line opened, so it is never a whole event itself.
    """
    after = index + 1
    if after < len(parts) and parts[after]:
        try:
            event = read_event(parts[index] + parts[after])
        except (ValueError, TypeError, OverflowError, RecursionError):  # BadLine is a ValueError
            event = None
        if event is not None:
            parts[after] = b""
            result.rejoined_lines += 1
            return event
    if index == 0:
        result.head_fragment = parts[0]
    if after == len(parts) or (after == len(parts) - 1 and not parts[after]):
        result.tail_fragment = (index, parts[index])
    return None


def from_ms(time):
    """Milliseconds -> seconds, an integer when whole (see MS_TIMES)."""
    if time.__class__ is int and time % 1000 == 0:
        return time // 1000
    return time / 1000


def _window_of(spec: BlockSpec, time) -> int:
    w = bisect_right(spec.window_starts, time) - 1
    return w if w >= 0 and time < spec.window_ends[w] else -1


def _outside(time, index: int, spec: BlockSpec, result: BlockResult):
    """(time, window) of a row whose time is in no window, window -1 if it stays outside.

    Off the hot path: a millisecond time (MS_TIMES) is converted and placed again; a row still
    outside is counted, and as `far_outside` (with its line and time as sent) when it is beyond
    the run's reach, which input_checks.py checks against its threshold."""
    seconds = time
    if time > MS_TIMES and spec.legacy_timezone is None:  # a legacy project's times were converted already
        seconds = from_ms(time)
        w = _window_of(spec, seconds)
        if w >= 0:
            result.millisecond_times += 1
            return seconds, w
    result.outside_window += 1
    reach = spec.reach
    if reach is not None and not reach[0] <= seconds < reach[1]:
        result.far_outside += 1
        if len(result.far_examples) < MAX_FAR_EXAMPLES:
            result.far_examples.append((index, time))
    return time, -1


def _refuse(result: BlockResult, index: int, line: bytes, exc: Exception) -> None:
    """Count a line whose row could not be made as a bad line (the rare path: a call is fine here)."""
    if isinstance(exc, MemoryError):
        raise exc
    result.bad_lines += 1
    if len(result.bad_examples) < MAX_REPORTED_BAD_LINES:
        result.bad_examples.append((index, f"{refusal(exc)}: {line[:80]!r}"))


def write_part(segments: list[tuple[str, object]], out_dir: str, stem: str, index: int, compression: str,
               fmt: str = "json", table: str = "mp_master_event") -> tuple[str, int, int, int, str]:
    """Write one part from consecutive staged blocks; returns (path, rows, uncompressed bytes, size, md5).

    The staged blocks' boundaries do not show in the output: JsonPartWriter compresses fixed-size
    chunks of the part's content (parts.COMPRESS_CHUNK), so a part is byte-identical whichever run
    (one partition, or a range of them) wrote it.
    """
    from mixpanel_assets.staging.parts import JsonPartWriter

    if fmt == "parquet":
        from mixpanel_assets.staging.parquet_parts import write_parquet_part

        return write_parquet_part(segments, out_dir, stem, index, compression, table)
    writer = JsonPartWriter(Path(out_dir), stem, compression, max_bytes=1 << 62, first_index=index)
    try:
        for path, drop_rows in segments:
            data, rows = filtered_lines(path, drop_rows)
            writer.write_block(data, rows)
        parts = writer.close()
    except OSError as exc:
        writer.abort()
        raise disk_error(exc, Path(out_dir), sum(Path(path).stat().st_size for path, _ in segments)) from exc
    except BaseException:
        writer.abort()
        raise
    if not parts:
        return "", 0, 0, 0, ""
    part = parts[0]
    return str(part.path), part.rows, part.raw_bytes, part.size, part.md5
