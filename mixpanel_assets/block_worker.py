"""Work done inside worker processes: parse a block of export lines, and write a part file.

Both functions take and return only plain, picklable values, and write their bulk output to
files in the run's staging folder, so little crosses the process boundary: a block's rows go to
disk, and only counts, dedup-key hashes and identity links come back. A block of a local,
uncompressed file is not sent at all: the worker reads its byte range itself (`FileRange`), so
the coordinating process never touches the bytes.

`process_block` is the hot loop of every export (one iteration per event). It is written for
speed: one `orjson.loads` per line, the row built by one `orjson.dumps` with the line's own
`properties` bytes embedded as an `orjson.Fragment`, the dedup key hashed to 16 raw bytes
appended to a bytearray. Anything unusual (a malformed line, an id that is not a string, a line
whose shape is not Mixpanel's compact one) leaves the fast path for `records.parse_event`, which
is the reference for what a row is and why a line is refused.
"""

from __future__ import annotations

import datetime as dt
import pickle
import zoneinfo
from array import array
from bisect import bisect_right
from dataclasses import dataclass
from pathlib import Path

import orjson
import xxhash

from mixpanel_assets.records import (
    MAX_REPORTED_BAD_LINES,
    TERMINATED_EARLY,
    BadLine,
    BlockResult,
    _id_str,
    identity_links,
    parse_event,
)

FLAG_NO_DEDUP = 1  # a row without $insert_id: Mixpanel never deduplicates it
_U64 = 1 << 64
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


def block_path(staging_dir: str | Path, window_index: int, block_id: int) -> Path:
    return Path(staging_dir) / f"w{window_index:05d}" / f"b{block_id:07d}.jsonl"


def read_range(source: FileRange) -> bytes:
    """The whole lines that start inside the range: a line begun before `start` belongs to the
    previous block, and the line running over `end` is read to its end."""
    with open(source.path, "rb") as f:
        if source.start > 0:
            f.seek(source.start - 1)
            data = f.read(source.end - source.start + 1)
            first = data.find(b"\n")
            if first < 0:
                return b""
            data = data[first + 1:]
        else:
            data = f.read(source.end)
        if data and data[-1] != 10:
            tail = [data]
            while True:
                more = f.read(1 << 16)
                if not more:
                    break
                cut = more.find(b"\n")
                if cut >= 0:
                    tail.append(more[: cut + 1])
                    break
                tail.append(more)
            data = b"".join(tail)
    return data


def process_block(source: bytes | FileRange, block_id: int, spec: BlockSpec) -> BlockResult:
    """Parse every line of a block and sort the rows into the run's windows.

    Rows go to one staging file per window. For each row the worker returns its 16-byte dedup-key
    hash and its mp_processing_time_ms (row order is implicit), so the coordinator can find
    duplicates across the whole run without holding rows in memory. Bad lines are reported by
    their line index within the block; the coordinator turns that into a line number of the input.
    """
    block = read_range(source) if isinstance(source, FileRange) else source
    starts, ends = spec.window_starts, spec.window_ends
    n_windows = len(starts)
    single = n_windows == 1
    first_start, first_end = starts[0], ends[0]
    # Rows are appended to one buffer per window rather than kept as a list of bytes objects: each
    # row then reuses memory that is warm in the cache instead of claiming new memory (3x slower).
    buffers = [bytearray() for _ in range(n_windows)]
    counts = [0] * n_windows
    hashes = [bytearray() for _ in range(n_windows)]
    procs = [array("Q") for _ in range(n_windows)]
    no_dedup = [array("I") for _ in range(n_windows)]
    links: list[dict] = [{} for _ in range(n_windows)]
    result = BlockResult(rows_per_window=[0] * n_windows, bytes_per_window=[0] * n_windows)
    convert = _legacy_converter(spec.legacy_timezone) if spec.legacy_timezone else None
    events_filter = spec.events_filter
    collect_links = spec.collect_links
    suppressed_ids = spec.suppressed_distinct_ids
    suppressed = 0
    loads, dumps, fragment, digest = orjson.loads, orjson.dumps, orjson.Fragment, xxhash.xxh3_128_digest
    prefixes: dict[str, bytes] = {}
    lines = 0
    outside = 0
    index = -1
    for line in block.split(b"\n"):
        index += 1
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
        if insert is None:
            no_dedup[w].append(counts[w])
        counts[w] += 1
        buffer = buffers[w]
        buffer += dumps({"device_id": device, "distinct_id": distinct, "event_name": name,
                         "insert_id": insert, "properties": properties, "time": time, "user_id": user})
        buffer += b"\n"
        hashes[w] += digest(dumps((name, distinct, time, insert)))
        proc = props.get("mp_processing_time_ms")
        procs[w].append(proc if proc.__class__ is int and 0 <= proc < _U64 else 0)
        if collect_links:
            for link in identity_links(name, props):
                window_links = links[w]
                seen = window_links.get(link)
                if seen is None or time < seen:
                    window_links[link] = time
    result.lines = lines
    result.outside_window = outside
    result.suppressed = suppressed
    result.line_count = index + 1 if block and block[-1] != 10 else index
    for w in range(n_windows):
        if not counts[w]:
            continue
        result.rows_per_window[w] = counts[w]
        if spec.write_rows:
            data = buffers[w]
            result.bytes_per_window[w] = len(data)
            path = block_path(spec.staging_dir, w, block_id)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
    result.hashes_per_window = [bytes(h) for h in hashes]
    result.procs_per_window = [p.tobytes() for p in procs]
    result.no_dedup_per_window = [r.tobytes() if len(r) else b"" for r in no_dedup]
    for w, window_links in enumerate(links):
        if window_links:
            _write_block_links(spec.staging_dir, w, block_id, window_links)
    return result


LINK_PARTS = 8  # a window's links are merged in this many hash partitions: memory is 1/8 of them


def _link_part(link: tuple[str, str, str]) -> int:
    # A hash that is the same in every process (str hashes are salted per process).
    return xxhash.xxh3_64_intdigest("\0".join(link).encode("utf-8", "surrogatepass")) % LINK_PARTS


def links_dir(staging_dir: str | Path, window_index: int, part: int) -> Path:
    return Path(staging_dir) / "links" / f"w{window_index:05d}" / f"p{part}"


def _write_block_links(staging_dir: str, window_index: int, block_id: int, links: dict) -> None:
    parts: list[dict] = [{} for _ in range(LINK_PARTS)]
    for link, seen_at in links.items():
        parts[_link_part(link)][link] = seen_at
    for part, part_links in enumerate(parts):
        if part_links:
            directory = links_dir(staging_dir, window_index, part)
            directory.mkdir(parents=True, exist_ok=True)
            (directory / f"b{block_id:07d}.pickle").write_bytes(pickle.dumps(part_links, pickle.HIGHEST_PROTOCOL))


def merge_links(staging_dir: str, window_index: int, part: int) -> tuple[str, int]:
    """One hash partition of a window's identity links, each with the earliest time it was seen,
    written sorted as JSON lines `[kind, a, b, time]`; returns (file, number of links).

    Runs in the workers while the coordinator deduplicates, one partition at a time, so neither
    the coordinator nor a worker ever holds a whole day's links: their number grows with the
    day's users, and memory must not.
    """
    merged: dict[tuple[str, str, str], float] = {}
    directory = links_dir(staging_dir, window_index, part)
    if directory.is_dir():
        for path in sorted(directory.iterdir()):
            for link, seen_at in pickle.loads(path.read_bytes()).items():
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


def filtered_lines(path, drop_rows) -> tuple[bytes, int]:
    """A staged block's rows minus the rows listed in `drop_rows`; (newline-terminated data, rows).

    Dropped rows (about 1% of a day) are cut out as byte ranges found with bytes.find, so a block
    costs a few copies, not a split and join of every line, and the worker needs no numpy.
    """
    data = Path(path).read_bytes()
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
    from mixpanel_assets.parts import JsonPartWriter

    if fmt == "parquet":
        from mixpanel_assets.parquet_parts import write_parquet_part

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
