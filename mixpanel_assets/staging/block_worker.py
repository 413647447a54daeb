"""Work done inside worker processes: parse a block of export lines, and write a part file.

Both functions take and return only plain, picklable values, and write their bulk output to
files in the run's staging folder, so little crosses the process boundary: a block's rows go to
disk, and only counts, dedup-key hashes and identity links come back. A block of a local,
uncompressed file is not sent at all: the worker maps its byte range itself (`FileRange`), so
the coordinating process never touches the bytes, and on the compiled path only a reference to
the range is staged; its rows are parsed again when parts are written (`regenerated_rows`).

`process_block` is the hot loop of every export (one iteration per event), in three tiers:

1. `_fastrows.scan` (C, `_fastrows.c`) takes the lines of Mixpanel's usual compact shape whole:
   row, dedup-key digest, processing time, window, identity links, in well under a microsecond.
   It stops at every line it is not certain about, and hands it to:
2. the Python loop of `parse_block`: one `orjson.loads` per line, the row built by one
   `orjson.dumps` with the line's own `properties` bytes embedded as an `orjson.Fragment`, the
   dedup key hashed to 16 raw bytes appended to a bytearray. It is the reference the compiled
   path is tested against (test_fastrows.py), and parses everything when the extension is not
   built or `MIXPANEL_ASSETS_FAST_ROWS=0`. A line it cannot take leaves for
3. `records.parse_event`, the reference for what a row is and why a line is refused.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import functools
import math
import mmap
import os
import pickle
import struct
import zoneinfo
from array import array
from bisect import bisect_right
from dataclasses import dataclass
from pathlib import Path

import orjson
import xxhash

from mixpanel_assets.transform.records import (
    MAX_REPORTED_BAD_LINES,
    TERMINATED_EARLY,
    BadLine,
    BlockResult,
    _id_str,
    identity_links,
    parse_event,
)

try:
    from mixpanel_assets import _fastrows
except ImportError:  # not built (no C compiler at install time): the pure-Python loop does all lines
    _fastrows = None

FAST_ROWS_ENV = "MIXPANEL_ASSETS_FAST_ROWS"  # "0" parses with the pure-Python loop only (read per run)
FLAG_NO_DEDUP = 1  # a row without $insert_id: Mixpanel never deduplicates it
_U64 = 1 << 64
_U64_NATIVE = struct.Struct("=Q")  # what numpy reads back as uint64 (staging._KeyBuckets)
_U32_NATIVE = struct.Struct("=I")
_CLOSE_BRACE = ord("}")


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
    fast_rows: bool = True  # use the compiled line -> row path when it is built (see fast_rows_enabled)
    # Local-file blocks on the compiled path stage a reference to their lines, not their rows: the
    # rows are parsed again when parts are written (see regenerated_rows). Needs SPEC_FILE in staging_dir.
    rows_by_reference: bool = False


def fast_rows_enabled() -> bool:
    """Whether this run parses with the compiled path: built, and not turned off by FAST_ROWS_ENV."""
    return _fastrows is not None and os.environ.get(FAST_ROWS_ENV, "1") != "0"


def rows_path() -> str:
    """Which line -> row path a run takes, for the run log."""
    if _fastrows is None:
        return "the pure-Python line parser (the compiled mixpanel_assets._fastrows is not built)"
    if not fast_rows_enabled():
        return f"the pure-Python line parser ({FAST_ROWS_ENV}=0)"
    return "the compiled line parser (mixpanel_assets._fastrows), the Python parser for unusual lines"


@dataclass(frozen=True)
class FileRange:
    """The lines of a local file that start in byte range [start, end): a block the worker reads itself."""

    path: str
    start: int
    end: int


def _legacy_converter(timezone: str):
    """Project-local epoch seconds -> UTC epoch seconds (projects created before 2023)."""
    tz = zoneinfo.ZoneInfo(timezone)

    def convert(local_epoch):
        naive = dt.datetime(1970, 1, 1) + dt.timedelta(seconds=local_epoch)
        offset = naive.replace(tzinfo=tz).utcoffset().total_seconds()
        result = local_epoch - offset
        return int(result) if isinstance(local_epoch, int) and result == int(result) else result

    return convert


def block_path(staging_dir: str | Path, window_index: int, block_id: int, by_reference: bool = False) -> Path:
    """A staged block's rows of one window: the rows (.jsonl) or a reference to the input lines (.ref)."""
    return Path(staging_dir) / f"w{window_index:05d}" / f"b{block_id:07d}{REF_SUFFIX if by_reference else '.jsonl'}"


SPEC_FILE = "block-spec.pickle"  # the run's BlockSpec, beside the staged blocks, for regenerated_rows
REF_SUFFIX = ".ref"


class StagedInputChanged(RuntimeError):
    """A local input file changed between staging and writing parts: its rows cannot be parsed again."""


def read_range(source: FileRange) -> bytes:
    """The whole lines that start inside the range: a line begun before `start` belongs to the
    previous block, and the line running over `end` is read to its end.

    Both ends are found with small probes first, so the block is read with one `pread` into one
    bytes object: no slicing or joining copies of 4 MB per block.
    """
    fd = os.open(source.path, os.O_RDONLY)
    try:
        begin = 0 if source.start == 0 else _after_newline(fd, source.start - 1, source.end)
        if begin is None or begin >= source.end:
            return b""
        stop = _after_newline(fd, source.end - 1, None)
        return os.pread(fd, stop - begin, begin)
    finally:
        os.close(fd)


@contextlib.contextmanager
def _mapped_range(source: FileRange):
    """The lines read_range returns, as a read-only view of the file mapped into memory: the
    compiled path parses the page cache in place instead of copying the block first."""
    fd = os.open(source.path, os.O_RDONLY)
    try:
        begin = 0 if source.start == 0 else _after_newline(fd, source.start - 1, source.end)
        if begin is None or begin >= source.end:
            yield b""
            return
        stop = _after_newline(fd, source.end - 1, None)
        base = begin - begin % mmap.ALLOCATIONGRANULARITY
        mapped = mmap.mmap(fd, stop - base, flags=mmap.MAP_SHARED | _MAP_POPULATE, prot=mmap.PROT_READ, offset=base)
        try:
            with memoryview(mapped) as whole, whole[begin - base:] as view:
                yield view
        finally:
            mapped.close()
    finally:
        os.close(fd)


_MAP_POPULATE = getattr(mmap, "MAP_POPULATE", 0)  # map the pages in one call, not one fault per page


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

    Rows go to one staging file per window. For each row the worker returns its 16-byte dedup-key
    hash and its mp_processing_time_ms (row order is implicit), so the coordinator can find
    duplicates across the whole run without holding rows in memory. Bad lines are reported by
    their line index within the block; the coordinator turns that into a line number of the input.
    """
    if isinstance(source, FileRange) and _fastrows is not None and spec.fast_rows:
        with _mapped_range(source) as block:
            result, buffers, links = parse_block(block, spec, _ROW_BUFFERS)
    else:
        block = read_range(source) if isinstance(source, FileRange) else source
        result, buffers, links = parse_block(block, spec, _ROW_BUFFERS)
    # Writing a day's rows to disk and reading them back costs more than parsing its lines again
    # (page-cache copies of the whole day, twice), so local-file blocks on the compiled path stage a
    # reference: where the lines are, and the length and hash of each window's rows to check them by.
    by_reference = (isinstance(source, FileRange) and spec.rows_by_reference
                    and _FastLines.arguments(spec) is not None)
    for w, data in enumerate(buffers):
        if spec.write_rows and data:
            path = block_path(spec.staging_dir, w, block_id, by_reference)
            path.parent.mkdir(parents=True, exist_ok=True)
            if by_reference:
                ref = (source.path, source.start, source.end, w, len(data), xxhash.xxh3_64_intdigest(data))
                path.write_bytes(pickle.dumps(ref, pickle.HIGHEST_PROTOCOL))
            else:
                path.write_bytes(data)
    result.rows_by_reference = by_reference
    _keep_row_buffers(buffers)
    for w, window_links in enumerate(links):
        if window_links:
            _write_block_links(spec.staging_dir, w, block_id, window_links)
    return result


_ROW_BUFFERS: list = []  # RowBuffers this process keeps between blocks (their memory stays mapped)
_KEPT_ROW_BUFFERS = 2  # a block's rows rarely span more windows; a few MB each, whatever the day


def _keep_row_buffers(buffers: list) -> None:
    for buffer in buffers:
        if buffer is not None and buffer.__class__ is not bytearray and len(_ROW_BUFFERS) < _KEPT_ROW_BUFFERS:
            buffer.clear()
            _ROW_BUFFERS.append(buffer)


def parse_block(block: bytes | memoryview, spec: BlockSpec, pool: list | None = None) -> tuple[BlockResult, list, list[dict]]:
    """A block's rows per window (newline-terminated), its BlockResult, and its identity links per window.

    The rows of a window are a bytearray (Python path) or a `_fastrows.RowBuffer` (compiled path;
    None for a window without rows), both bytes-like. `pool` lends RowBuffers kept from earlier blocks.

    Lines of Mixpanel's usual shape go through the compiled path (`_fastrows.scan`) when it is
    built and `spec.fast_rows` is on; it stops at any line it is not certain about, and that line
    takes the Python loop below, which appends to the same buffers, so rows keep their line order.
    """
    starts, ends = spec.window_starts, spec.window_ends
    n_windows = len(starts)
    single = n_windows == 1
    first_start, first_end = starts[0], ends[0]
    # Rows are appended to one buffer per window rather than kept as a list of bytes objects: each
    # row then reuses memory that is warm in the cache instead of claiming new memory (3x slower).
    fast_args = _FastLines.arguments(spec)
    # The compiled path writes rows into RowBuffers, taken from `pool` as windows get rows.
    buffers: list = [None] * n_windows if fast_args is not None else [bytearray() for _ in range(n_windows)]
    pool = [] if pool is None else pool
    hashes = [bytearray() for _ in range(n_windows)]  # 16 bytes a row: a window's row count is len // 16
    procs = [bytearray() for _ in range(n_windows)]  # native uint64 a row
    no_dedup = [bytearray() for _ in range(n_windows)]  # native uint32 row indexes
    links: list[dict] = [{} for _ in range(n_windows)]
    result = BlockResult(rows_per_window=[0] * n_windows, bytes_per_window=[0] * n_windows)
    convert = _legacy_converter(spec.legacy_timezone) if spec.legacy_timezone else None
    events_filter = spec.events_filter
    collect_links = spec.collect_links
    suppressed_ids = spec.suppressed_distinct_ids
    suppressed = 0
    loads, dumps, fragment, digest = orjson.loads, orjson.dumps, orjson.Fragment, xxhash.xxh3_128_digest
    pack_proc, pack_row = _U64_NATIVE.pack, _U32_NATIVE.pack
    prefixes: dict[str, bytes] = {}
    lines = 0
    outside = 0
    fast = None
    if fast_args is not None:
        fast = _FastLines(block, (*fast_args[:2], buffers, hashes, procs, no_dedup, links if collect_links else None,
                                  *fast_args[2:], pool))
    elif block.__class__ is not bytes:
        block = bytes(block)  # a mapped file range (process_block): the Python loop splits bytes
    for index, line in fast if fast is not None else enumerate(block.split(b"\n")):
        if not line:
            continue
        try:
            event = loads(line)
            name = event["event"]
            props = event["properties"]
            time = props["time"]
            if (name.__class__ is not str or not name or props.__class__ is not dict
                    or (time.__class__ is not int and time.__class__ is not float)):
                raise BadLine
        except Exception:  # noqa: BLE001 - classified by the reference parser below
            if line.isspace():
                continue
            lines += 1
            try:
                props, _, name, time = parse_event(line)
            except BadLine as exc:
                if line.strip() == TERMINATED_EARLY:
                    result.terminated_early = True
                    lines -= 1
                    continue
                result.bad_lines += 1
                if len(result.bad_examples) < MAX_REPORTED_BAD_LINES:
                    result.bad_examples.append((index, f"{exc}: {line[:80]!r}"))
                continue
            event = None
        else:
            lines += 1
        if convert is not None:
            time = convert(time)
        if events_filter is not None and name not in events_filter:
            outside += 1
            continue
        if single:
            if not first_start <= time < first_end:
                outside += 1
                continue
            w = 0
        else:
            w = bisect_right(starts, time) - 1
            if w < 0 or time >= ends[w]:
                outside += 1
                continue
        device = props.get("$device_id")
        distinct = props.get("distinct_id")
        insert = props.get("$insert_id")
        user = props.get("$user_id")
        if device.__class__ is not str and device is not None:
            device = _id_str(device)
        if distinct.__class__ is not str and distinct is not None:
            distinct = _id_str(distinct)
        if suppressed_ids is not None and distinct in suppressed_ids:
            suppressed += 1
            continue
        if insert.__class__ is not str and insert is not None:
            insert = _id_str(insert)
        if user.__class__ is not str and user is not None:
            user = _id_str(user)
        # Slice the properties object from the line when it has Mixpanel's compact shape
        # {"event":<name>,"properties":{...}}; otherwise serialise the parsed object.
        properties = props
        if event is not None and len(event) == 2:
            prefix = prefixes.get(name)
            if prefix is None:
                prefix = prefixes[name] = b'{"event":' + dumps(name) + b',"properties":'
            if line.startswith(prefix):
                body = line if line[-1] == _CLOSE_BRACE else line.rstrip()
                if body[-1] == _CLOSE_BRACE:
                    properties = fragment(body[len(prefix):-1])
        window_hashes = hashes[w]
        if insert is None:
            no_dedup[w] += pack_row(len(window_hashes) >> 4)
        buffer = buffers[w]
        if buffer is None:
            buffer = buffers[w] = pool.pop() if pool else _fastrows.RowBuffer()
        buffer += dumps({"device_id": device, "distinct_id": distinct, "event_name": name,
                         "insert_id": insert, "properties": properties, "time": time, "user_id": user})
        buffer += b"\n"
        window_hashes += digest(dumps((name, distinct, time, insert)))
        proc = props.get("mp_processing_time_ms")
        procs[w] += pack_proc(proc if proc.__class__ is int and 0 <= proc < _U64 else 0)
        if collect_links:
            for link in identity_links(name, props):
                window_links = links[w]
                seen = window_links.get(link)
                if seen is None or time < seen:
                    window_links[link] = time
    if fast is not None:
        lines += fast.lines
        outside += fast.outside
        suppressed += fast.suppressed
        result.fast_lines = fast.lines
        result.line_count = fast.index
    else:
        result.line_count = block.count(b"\n") + (1 if block and block[-1] != 10 else 0)
    result.lines = lines
    result.outside_window = outside
    result.suppressed = suppressed
    result.rows_per_window = [len(h) >> 4 for h in hashes]
    result.bytes_per_window = [len(b) if spec.write_rows and b is not None else 0 for b in buffers]
    result.hashes_per_window = [bytes(h) for h in hashes]
    result.procs_per_window = [bytes(p) for p in procs]
    result.no_dedup_per_window = [bytes(r) for r in no_dedup]
    return result, buffers, links


class _FastLines:
    """Drives `_fastrows.scan` over a block and yields, as (index, line), only the lines it leaves
    to Python; counts what it did itself (lines, outside the windows, suppressed)."""

    def __init__(self, block: bytes, args: tuple):
        self.block = block
        self.args = args
        self.lines = self.outside = self.suppressed = 0
        self.index = 0  # once iterated: the block's line count (a last line without newline included)

    @staticmethod
    def arguments(spec: BlockSpec) -> tuple | None:
        """scan()'s run-wide arguments (window bounds, filters), or None when the run must take
        the Python path: not built, turned off, legacy timezones, bounds it cannot compare exactly."""
        if _fastrows is None or not spec.fast_rows or spec.legacy_timezone is not None:
            return None
        bounds = _integer_bounds(spec.window_starts, spec.window_ends)
        if bounds is None:
            return None
        events = _utf8_set(spec.events_filter) if spec.events_filter is not None else None
        suppressed = spec.suppressed_distinct_ids
        suppressed_bytes = _utf8_set(suppressed) if suppressed is not None else None
        suppress_none = suppressed is not None and None in suppressed
        return (*bounds, events, suppressed_bytes, suppress_none)

    def __iter__(self):
        scan, block, args = _fastrows.scan, self.block, self.args
        pos = index = 0
        while True:
            pos, index, start, end, lines, outside, suppressed = scan(block, pos, index, *args)
            self.lines += lines
            self.outside += outside
            self.suppressed += suppressed
            if start < 0:
                self.index = index
                return
            yield index, bytes(block[start:end])  # bytes even from a mapped range: bad-line reports repr() it
            index += 1


_BOUND_LIMIT = 1 << 62


def _integer_bounds(starts, ends) -> tuple[bytes, bytes] | None:
    """Window bounds for integer times, as native int64 bytes: for an integer t and a real s,
    s <= t exactly when ceil(s) <= t. None when a bound is not a finite number of sane size."""
    try:
        ceiled = [math.ceil(x) for x in (*starts, *ends)]
    except (OverflowError, ValueError, TypeError):
        return None
    if any(not -_BOUND_LIMIT < x < _BOUND_LIMIT for x in ceiled):
        return None
    n = len(starts)
    return array("q", ceiled[:n]).tobytes(), array("q", ceiled[n:]).tobytes()


@functools.lru_cache(maxsize=8)
def _utf8_set(values: frozenset) -> frozenset[bytes]:
    """The UTF-8 bytes of a set's strings (what the compiled path compares raw names and ids with)."""
    return frozenset(v.encode("utf-8", "surrogatepass") for v in values if isinstance(v, str))


LINK_PARTS = 8  # a window's links are merged in this many hash partitions: memory is 1/8 of them
_LINK_HEADER = struct.Struct(f"<{LINK_PARTS + 1}Q")  # where each partition's pickle starts in a block's file


def _link_part(link: tuple[str, str, str]) -> int:
    # A hash that is the same in every process (str hashes are salted per process).
    return xxhash.xxh3_64_intdigest("\0".join(link).encode("utf-8", "surrogatepass")) % LINK_PARTS


def links_dir(staging_dir: str | Path, window_index: int) -> Path:
    """A window's per-block link files; merged files go beside this folder (see merge_links)."""
    return Path(staging_dir) / "links" / f"w{window_index:05d}" / "blocks"


def _write_block_links(staging_dir: str, window_index: int, block_id: int, links: dict) -> None:
    """One file per block holding LINK_PARTS pickles (one per hash partition) behind an offset
    header: each merge task reads only its partition, and a block creates one file, not eight
    (file creation is a large part of the kernel time of an export)."""
    parts: list[dict] = [{} for _ in range(LINK_PARTS)]
    for link, seen_at in links.items():
        parts[_link_part(link)][link] = seen_at
    blobs = [pickle.dumps(part_links, pickle.HIGHEST_PROTOCOL) if part_links else b"" for part_links in parts]
    offsets = [_LINK_HEADER.size]
    for blob in blobs:
        offsets.append(offsets[-1] + len(blob))
    directory = links_dir(staging_dir, window_index)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"b{block_id:07d}.pickles").write_bytes(b"".join([_LINK_HEADER.pack(*offsets), *blobs]))


def merge_links(staging_dir: str, window_index: int, part: int) -> tuple[str, int]:
    """One hash partition of a window's identity links, each with the earliest time it was seen,
    written sorted as JSON lines `[kind, a, b, time]`; returns (file, number of links).

    Runs in the workers while the coordinator deduplicates, one partition at a time, so neither
    the coordinator nor a worker ever holds a whole day's links: their number grows with the
    day's users, and memory must not.
    """
    merged: dict[tuple[str, str, str], float] = {}
    directory = links_dir(staging_dir, window_index)
    if directory.is_dir():
        for path in sorted(directory.iterdir()):
            with open(path, "rb") as f:
                offsets = _LINK_HEADER.unpack(f.read(_LINK_HEADER.size))
                size = offsets[part + 1] - offsets[part]
                if not size:
                    continue
                f.seek(offsets[part])
                block_links = pickle.loads(f.read(size))
            for link, seen_at in block_links.items():
                seen = merged.get(link)
                if seen is None or seen_at < seen:
                    merged[link] = seen_at
    out = directory.parent / f"merged-{part}.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    dumps = orjson.dumps
    with open(out, "wb") as f:
        f.writelines(dumps([kind, a, b, seen_at]) + b"\n" for (kind, a, b), seen_at in sorted(merged.items()))
    return str(out), len(merged)


def line_starts(data: bytes):
    """Byte offset of each line of newline-terminated `data` (vectorised: ~1 GB/s)."""
    import numpy as np  # not at import time: parse workers never need it, and every MB counts there

    ends = np.flatnonzero(np.frombuffer(data, dtype=np.uint8) == 10)
    starts = np.empty(len(ends), dtype=np.int64)
    if len(ends):
        starts[0] = 0
        starts[1:] = ends[:-1] + 1
    return starts


def filtered_lines(path, drop_rows, keep_buffers: bool = True) -> tuple[bytes, int]:
    """A staged block's rows minus the rows listed in `drop_rows`; (newline-terminated data, rows).

    Dropped rows (about 1% of a day) are cut out as byte ranges, so a block costs a copy, not a
    split and join of every line, and the worker needs no numpy. A staged reference (REF_SUFFIX)
    is parsed again from its input (regenerated_rows).
    """
    path = Path(path)
    if path.suffix == REF_SUFFIX:
        return regenerated_rows(path, drop_rows, keep_buffers)
    data = path.read_bytes()
    if _fastrows is not None:
        return filter_lines_fast(data, drop_rows)
    return filter_lines_python(data, drop_rows)


def regenerated_rows(ref_path: Path, drop_rows, keep_buffers: bool = True) -> tuple[bytes, int]:
    """A staged reference's rows, parsed again from the input lines, checked against the length
    and hash recorded when the block was staged; minus `drop_rows`.

    The parse is the one that staged the block (same BlockSpec, SPEC_FILE), so the rows are the
    same bytes; a changed input file is caught by the check and named.
    """
    path, start, end, window, size, digest = pickle.loads(ref_path.read_bytes())
    spec = _regeneration_spec(str(ref_path.parent.parent / SPEC_FILE))
    pool = _ROW_BUFFERS if keep_buffers else []
    with _mapped_range(FileRange(path, start, end)) as block:
        _, buffers, _ = parse_block(block, spec, pool)
    try:
        rows = buffers[window]
        if rows is None or len(rows) != size or xxhash.xxh3_64_intdigest(rows) != digest:
            raise StagedInputChanged(
                f"{path} changed while it was being exported (its lines at bytes {start}-{end} no longer give "
                f"the rows staged from them); export the partition again")
        if _fastrows is not None:
            return filter_lines_fast(rows, drop_rows)
        return filter_lines_python(bytes(rows), drop_rows)
    finally:
        if keep_buffers:
            _keep_row_buffers(buffers)


@functools.lru_cache(maxsize=4)
def _cached_spec(spec_file: str, mtime_ns: int) -> BlockSpec:
    spec = pickle.loads(Path(spec_file).read_bytes())
    return dataclasses.replace(spec, collect_links=False)


def _regeneration_spec(spec_file: str) -> BlockSpec:
    return _cached_spec(spec_file, os.stat(spec_file).st_mtime_ns)


def filter_lines_fast(data: bytes, drop_rows) -> tuple[bytes, int]:
    """filter_lines_python in C (one memchr pass, one copy)."""
    drop = None
    if drop_rows is not None and len(drop_rows):
        drop = array("I", sorted({int(r) for r in drop_rows if 0 <= r < 1 << 32}))
    return _fastrows.filter_lines(data, drop)


def filter_lines_python(data: bytes, drop_rows) -> tuple[bytes, int]:
    """The reference for filter_lines_fast, used when the extension is not built."""
    total = data.count(b"\n")
    if drop_rows is None or len(drop_rows) == 0:
        return data, total
    drop = sorted({int(r) for r in drop_rows if 0 <= r < total})
    if len(drop) == total:
        return b"", 0
    find = data.find
    pieces = []
    kept_from = 0  # start of the bytes not yet copied
    row, start = 0, 0  # a row number and the byte offset where it starts
    for target in drop:
        while row < target:
            start = find(b"\n", start) + 1
            row += 1
        end = find(b"\n", start) + 1
        if start > kept_from:
            pieces.append(data[kept_from:start])
        kept_from = start = end
        row += 1
    if kept_from < len(data):
        pieces.append(data[kept_from:])
    return b"".join(pieces), total - len(drop)


def write_part(segments: list[tuple[str, object]], out_dir: str, stem: str, index: int, compression: str,
               fmt: str = "json", table: str = "mp_master_event") -> tuple[str, int, int, int]:
    """Write one part from consecutive staged blocks; returns (path, rows, uncompressed bytes, size).

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
            data, rows = filtered_lines(Path(path), drop_rows)
            writer.write_block(data, rows)
        parts = writer.close()
    except BaseException:
        writer.abort()
        raise
    if not parts:
        return "", 0, 0, 0
    part = parts[0]
    return str(part.path), part.rows, part.raw_bytes, part.size
