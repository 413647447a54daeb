"""Work done inside worker processes: parse a block of export lines, and write a part file.

Both functions take and return only plain, picklable values, and write their bulk output to
files in the run's staging folder, so little crosses the process boundary: a block's rows go to
disk, and only counts, dedup-key records and identity links come back.
"""

from __future__ import annotations

import datetime as dt
import zoneinfo
from array import array
from bisect import bisect_right
from dataclasses import dataclass
from pathlib import Path

from mixpanel_assets.records import (
    MAX_REPORTED_BAD_LINES,
    TERMINATED_EARLY,
    BadLine,
    BlockResult,
    dedup_key_hash,
    identity_links,
    parse_event,
)

MASK64 = (1 << 64) - 1
FLAG_NO_DEDUP = 1  # a row without $insert_id: Mixpanel never deduplicates it


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


def process_block(block: bytes, block_id: int, first_line_no: int, spec: BlockSpec, origin: str = "") -> BlockResult:
    """Parse every line of `block` and sort the rows into the run's windows.

    Rows go to one staging file per window; for each row the worker also returns its dedup-key
    record (hash_hi, hash_lo, mp_processing_time_ms, row_index, flags) so the coordinator can
    find duplicates across the whole window without holding rows in memory.
    """
    starts, ends = spec.window_starts, spec.window_ends
    n_windows = len(starts)
    rows: list[list[bytes]] = [[] for _ in range(n_windows)]
    keys = [array("Q") for _ in range(n_windows)]
    links: list[dict] = [{} for _ in range(n_windows)]
    result = BlockResult(rows_per_window=[0] * n_windows, bytes_per_window=[0] * n_windows)
    convert = _legacy_converter(spec.legacy_timezone) if spec.legacy_timezone else None
    events_filter = spec.events_filter
    collect_links = spec.collect_links
    line_no = first_line_no - 1
    for line in block.split(b"\n"):
        line_no += 1
        if not line or line.isspace():
            continue
        result.lines += 1
        try:
            props, row, name, time = parse_event(line, convert)
        except BadLine as exc:
            if line.strip() == TERMINATED_EARLY:
                result.terminated_early = True
                result.lines -= 1
                continue
            result.bad_lines += 1
            if len(result.bad_examples) < MAX_REPORTED_BAD_LINES:
                where = f"{origin} line {line_no}" if origin else f"line {line_no}"
                result.bad_examples.append((where, f"{exc}: {line[:80]!r}"))
            continue
        if events_filter is not None and name not in events_filter:
            result.outside_window += 1
            continue
        w = bisect_right(starts, time) - 1
        if w < 0 or time >= ends[w]:
            result.outside_window += 1
            continue
        window_rows = rows[w]
        key, dedupable = dedup_key_hash(name, props, time)
        proc = props.get("mp_processing_time_ms")
        proc = proc if proc.__class__ is int and proc >= 0 else 0
        keys[w].extend((key >> 64, key & MASK64, proc, len(window_rows), 0 if dedupable else FLAG_NO_DEDUP))
        window_rows.append(row)
        if collect_links:
            for link in identity_links(name, props):
                seen = links[w].get(link)
                if seen is None or time < seen:
                    links[w][link] = time
    for w in range(n_windows):
        window_rows = rows[w]
        if not window_rows:
            continue
        result.rows_per_window[w] = len(window_rows)
        if spec.write_rows:
            data = b"\n".join(window_rows) + b"\n"
            result.bytes_per_window[w] = len(data)
            path = block_path(spec.staging_dir, w, block_id)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
    result.keys_per_window = [k.tobytes() for k in keys]
    result.links_per_window = links
    return result


def filtered_lines(path: Path, drop_rows) -> tuple[bytes, int]:
    """A staged block's rows minus the duplicates found for it; (newline-terminated data, rows)."""
    data = Path(path).read_bytes()
    if drop_rows is None or len(drop_rows) == 0:
        return data, data.count(b"\n")
    lines = data.split(b"\n")
    lines.pop()  # the empty string after the final newline
    drop = set(int(r) for r in drop_rows)
    kept = [line for i, line in enumerate(lines) if i not in drop]
    return (b"\n".join(kept) + b"\n") if kept else b"", len(kept)


def write_part(segments: list[tuple[str, object]], out_dir: str, stem: str, index: int, compression: str,
               fmt: str = "json", table: str = "mp_master_event") -> tuple[str, int, int, int]:
    """Write one part from consecutive staged blocks; returns (path, rows, uncompressed bytes, size)."""
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
