"""Staged JSON-lines rows -> Arrow columns, cut out of the rows' bytes with numpy instead of line by line.

A staged row is written by orjson in the table's column order (transform/records.py, events.py),
so its layout is known without parsing it:

  {"<lead 1>":V,…,"<lead k>":V,"<json column>":{…},"<tail 1>":V,…}

Lead and tail values are strings or `null` (the time is a number); the JSON column is everything
between its key and the tail. Inside a JSON string every `"` is escaped, so the quotes of a row
delimit its strings: the lead values are walked from the start of each row, the tail values from
its end, all rows of a row group at once, each closing quote looked for in the next WINDOW bytes
of every row (a numpy view of the group, one index per row); only an id longer than a few windows
is searched for row by row. Each step checks the key it passes, byte for byte, so a row that does
not have the layout is noticed, not misread.

Values are then copied into their columns by Arrow (`take` over the row group's bytes, cut at the
value boundaries) and checked as UTF-8, and numbers are parsed by Arrow's cast (correctly rounded,
as orjson reads them). Python builds no object per row: no `orjson.loads` per line and no lists of
values, whose freed memory the worker would keep, and no array built from Python objects, which
keeps pyarrow from importing pandas (`pa.array` looks for it: +50 MB per process). A 256 MB part
(272k events) costs ~110 vs ~175 MB of a worker's peak RSS, and 83 vs 143 MB after (2026-12).

A string holding an escape (a backslash: quotes, control characters) would need decoding; a row
group with one, or with any row that does not have the layout, raises `Irregular`, and the caller
reads that group with orjson instead (parquet_parts.py). test_parquet_columns.py checks that both
give the same columns, on hostile rows too.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from mixpanel_assets.schema import JSON, STRING, TIMESTAMP, columns

_NEWLINE, _QUOTE, _BACKSLASH, _OPEN, _CLOSE = 10, 34, 92, 123, 125
_NULL = np.uint64(int.from_bytes(b"null", "little"))
_MASK4 = np.uint64(0xFFFFFFFF)
_MAX_OFFSET = (1 << 31) - 1  # Arrow's string type has 32-bit offsets
WINDOW = 48  # bytes looked at, all rows at once, for the quote closing an id (a UUID is 36)
_WINDOWS = 4  # windows tried before a row's quote is looked for with a byte search


class Irregular(ValueError):
    """A row group the byte cutter cannot vouch for (an escaped string, another layout): parse it instead."""


@dataclass(frozen=True)
class Layout:
    lead: tuple[str, ...]  # string columns before the JSON column
    json: str | None  # the JSON column, copied as its bytes
    tail: tuple[tuple[str, str], ...]  # (column, logical type) after it


def layout(table: str) -> Layout:
    """Where each of the table's columns sits in its staged row (schema.py's column order)."""
    cols = columns(table)
    kinds = [kind for _, kind in cols]
    split = kinds.index(JSON) if JSON in kinds else len(cols)
    if any(kind != STRING for _, kind in cols[:split]):
        raise ValueError(f"{table}: only string columns can precede its JSON column in a staged row")
    json = cols[split][0] if split < len(cols) else None
    return Layout(tuple(name for name, _ in cols[:split]), json, tuple(cols[split + 1:]))


@dataclass
class _Rows:
    """One row group's bytes, its row bounds, and the rows every walk step so far confirmed."""

    data: bytes
    u8: np.ndarray
    starts: np.ndarray
    ends: np.ndarray  # each row's newline
    backslashes: np.ndarray
    ok: np.ndarray

    def at(self, positions: np.ndarray, width: int = 1) -> np.ndarray:
        """The bytes at `positions` (n x width), positions clipped so a misread row cannot read outside."""
        if width == 1 or width > len(self.u8):
            return np.take(self.u8, positions[:, None] + np.arange(width), mode="clip")
        # Row i of the sliding view is u8[i:i + width] (no copy): one index per row, not one per byte.
        safe = np.clip(positions, 0, len(self.u8) - width)
        out = np.lib.stride_tricks.sliding_window_view(self.u8, width)[safe]
        edge = safe != positions  # a window running past either end of the group
        if edge.any():
            out[edge] = np.take(self.u8, positions[edge][:, None] + np.arange(width), mode="clip")
        return out

    def word(self, positions: np.ndarray) -> np.ndarray:
        """The 8 bytes at each position as one little-endian uint64 (zero bytes past either end).

        One 8-byte load per row from a view of the group at every byte offset: comparing keys this
        way costs a fraction of gathering them byte by byte."""
        u8 = self.u8
        last = len(u8) - 8
        if last < 0:
            padded = np.zeros(8, dtype=np.uint8)
            padded[:len(u8)] = u8
            u8, last = padded, 0
        words = np.ndarray((last + 1,), dtype="<u8", buffer=u8, strides=(1,))
        safe = np.clip(positions, 0, last)
        out = words[safe]
        shift = positions - safe  # > 0 past the end, < 0 before the start
        if shift.any():
            right = np.clip(shift, 0, 8).astype(np.uint64) * np.uint64(8)
            left = np.clip(-shift, 0, 8).astype(np.uint64) * np.uint64(8)
            out = np.where(right >= 64, np.uint64(0), out >> np.minimum(right, np.uint64(56)))
            out = np.where(left >= 64, np.uint64(0), out << np.minimum(left, np.uint64(56)))
        return out

    def expect(self, positions: np.ndarray, text: bytes) -> None:
        for k in range(0, len(text), 8):
            chunk = text[k:k + 8]
            mask = np.uint64((1 << (8 * len(chunk))) - 1)
            self.ok &= (self.word(positions + k) & mask) == np.uint64(int.from_bytes(chunk, "little"))

    def next_quote(self, pos: np.ndarray, wanted: np.ndarray) -> np.ndarray:
        """The first quote at or after `pos` in the `wanted` rows: looked for WINDOW bytes at a time in
        all the rows still searching, then (an id over ~4 windows long) with a byte search, row by row."""
        return self._quote(pos, wanted, 1)

    def prev_quote(self, pos: np.ndarray, wanted: np.ndarray) -> np.ndarray:
        """The last quote at or before `pos` in the `wanted` rows (next_quote, backwards)."""
        return self._quote(pos, wanted, -1)

    def _quote(self, pos: np.ndarray, wanted: np.ndarray, step: int) -> np.ndarray:
        quote = np.full(len(pos), -1, dtype=np.int64)
        todo = np.flatnonzero(self.ok & wanted)
        for window in range(_WINDOWS):
            if not len(todo):
                break
            if step > 0:
                first = pos[todo] + window * WINDOW
                hit = self.at(first, WINDOW) == _QUOTE
                where = hit.argmax(axis=1)
            else:
                first = pos[todo] - (window + 1) * WINDOW + 1
                hit = self.at(first, WINDOW) == _QUOTE
                where = (WINDOW - 1) - hit[:, ::-1].argmax(axis=1)
            found = hit.any(axis=1)
            quote[todo[found]] = first[found] + where[found]
            todo = todo[~found]
        for i in todo:  # long ids, rare
            at = int(pos[i])
            if step > 0:
                quote[i] = self.data.find(b'"', at + _WINDOWS * WINDOW, int(self.ends[i]))
            else:
                quote[i] = self.data.rfind(b'"', int(self.starts[i]), max(at - _WINDOWS * WINDOW + 1, 0))
        inside = (quote > self.starts) & (quote < self.ends)
        self.ok &= ~wanted | (inside & ((quote >= pos) if step > 0 else (quote <= pos)))
        return quote

    def string_forward(self, pos: np.ndarray) -> tuple[np.ndarray, tuple]:
        """A string or null value starting at `pos`: (the position after it, its span)."""
        is_str = self.at(pos)[:, 0] == _QUOTE
        self.ok &= is_str | ((self.word(pos) & _MASK4) == _NULL)
        close = self.next_quote(pos + 1, is_str)
        begin = np.where(is_str, pos + 1, pos)
        end = np.where(is_str, close, pos)
        return np.where(is_str, close + 1, pos + 4), (begin, end, is_str)

    def string_backward(self, end_: np.ndarray) -> tuple[np.ndarray, tuple]:
        """A string or null value ending just before `end_`: (the position where it starts, its span)."""
        last = end_ - 1
        is_str = self.at(last)[:, 0] == _QUOTE
        self.ok &= is_str | ((self.word(end_ - 4) & _MASK4) == _NULL)
        opening = self.prev_quote(last - 1, is_str)
        begin = np.where(is_str, opening + 1, end_)
        end = np.where(is_str, last, end_)
        return np.where(is_str, opening, end_ - 4), (begin, end, is_str)

    def number_backward(self, end_: np.ndarray) -> tuple[np.ndarray, tuple]:
        """A number ending just before `end_`: it starts after the `":` closing its key (numbers hold no quote)."""
        begin = self.prev_quote(end_ - 1, np.ones(len(end_), dtype=bool)) + 2
        self.ok &= end_ > begin
        return begin, (begin, end_, np.ones(len(end_), dtype=bool))

    def escaped(self, begin: np.ndarray, end: np.ndarray) -> np.ndarray:
        """Rows with a backslash in [begin - 2, end]: an escape inside the value, or a quote the walk took for its end."""
        slashes = self.backslashes
        return np.searchsorted(slashes, end + 1) > np.searchsorted(slashes, begin - 2)


def cut_columns(data: bytes, table_layout: Layout) -> dict[str, pa.Array]:
    """The columns of newline-terminated staged rows: strings (nulls kept) and the JSON column as
    `pa.string()`, numbers as `pa.float64()`. Raises Irregular where orjson must read the rows."""
    if len(data) > _MAX_OFFSET:
        raise Irregular("row group over 2 GiB")
    u8 = np.frombuffer(data, dtype=np.uint8)
    ends = np.flatnonzero(u8 == _NEWLINE)
    n = len(ends)
    if n == 0 or ends[-1] != len(data) - 1:
        raise Irregular("rows are not newline-terminated")
    starts = np.empty(n, dtype=np.int64)
    starts[0] = 0
    starts[1:] = ends[:-1] + 1
    # Escapes are rare in ids and absent from most groups: a byte search (memchr) usually spares the scan.
    backslashes = np.flatnonzero(u8 == _BACKSLASH) if b"\\" in data else np.empty(0, dtype=np.int64)
    rows = _Rows(data, u8, starts, ends, backslashes, (u8[starts] == _OPEN) & (u8[ends - 1] == _CLOSE))
    spans: dict[str, tuple] = {}
    strings: list[str] = []
    pos = starts + 1
    for i, name in enumerate(table_layout.lead):
        key = (b"," if i else b"") + b'"' + name.encode() + b'":'
        rows.expect(pos, key)
        pos, spans[name] = rows.string_forward(pos + len(key))
        strings.append(name)
    back = ends - 1  # the row's closing brace
    for name, kind in reversed(table_layout.tail):
        if kind == TIMESTAMP:
            back, spans[name] = rows.number_backward(back)
        else:
            back, spans[name] = rows.string_backward(back)
            strings.append(name)
        key = b',"' + name.encode() + b'":'
        back = back - len(key)
        rows.expect(back, key)
    if table_layout.json is not None:
        key = b',"' + table_layout.json.encode() + b'":'
        rows.expect(pos, key)
        begin = pos + len(key)
        rows.ok &= back - begin >= 2  # at least `{}`
        spans[table_layout.json] = (begin, back, np.ones(n, dtype=bool))
    else:
        rows.ok &= pos == back  # the lead walk ended where the row's closing brace is
    for name in strings:
        begin, end, _ = spans[name]
        rows.ok &= ~rows.escaped(begin, end)
    if not rows.ok.all():
        bad = int(np.flatnonzero(~rows.ok)[0])
        raise Irregular(f"row {bad} of the group has an escaped string or another layout")
    numbers = {name for name, kind in table_layout.tail if kind == TIMESTAMP}
    buffer = pa.py_buffer(data)
    result = {}
    for name, (begin, end, valid) in spans.items():
        values = _take(buffer, begin, end, valid)
        if name in numbers:
            try:
                values = values.cast(pa.float64())
            except pa.ArrowInvalid as exc:
                raise Irregular(f"{name} is not a number ({exc})") from None
        result[name] = values
    return result


def _take(buffer: pa.Buffer, begin: np.ndarray, end: np.ndarray, valid: np.ndarray) -> pa.Array:
    """The byte ranges [begin, end) of `buffer` as one string array (validated as UTF-8), null where not valid.

    The ranges and the gaps between them become one binary array over the row group's bytes
    (no copy); taking every other element copies the values into a column."""
    n = len(begin)
    bounds = np.empty(2 * n, dtype=np.int64)
    bounds[0::2] = begin
    bounds[1::2] = end
    if n > 1 and (np.diff(bounds) < 0).any():
        raise Irregular("value ranges out of order")
    pieces = pa.Array.from_buffers(pa.binary(), 2 * n - 1, [None, pa.py_buffer(bounds.astype(np.int32)), buffer])
    index = np.arange(0, 2 * n, 2, dtype=np.int64)
    taken = pieces.take(pa.Array.from_buffers(pa.int64(), n, [None, pa.py_buffer(index)]))
    validity = None if valid.all() else pa.py_buffer(np.packbits(valid, bitorder="little"))
    _, offsets, values = taken.buffers()
    binary = pa.Array.from_buffers(pa.binary(), n, [validity, offsets, values], offset=taken.offset)
    try:
        return binary.cast(pa.string())
    except pa.ArrowInvalid as exc:
        raise Irregular(f"not UTF-8 ({exc})") from None


def bytes_array(arrow_type: pa.DataType, encoded: list[bytes], valid: np.ndarray | None = None) -> pa.Array:
    """A binary or string array over `encoded` (the non-null values, in order), null where `valid` is
    False, built from one buffer and its offsets: without `pa.array` (which imports pandas)."""
    n = len(encoded) if valid is None else len(valid)
    lengths = np.zeros(n, dtype=np.int64)
    found = np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded))
    if valid is None:
        lengths[:] = found
    else:
        lengths[valid] = found
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    if offsets[-1] > _MAX_OFFSET:
        raise ValueError(f"{offsets[-1]:,} bytes of values in one row group: over Arrow's 2 GiB")
    validity = None if valid is None or valid.all() else pa.py_buffer(np.packbits(valid, bitorder="little"))
    return pa.Array.from_buffers(arrow_type, n, [validity, pa.py_buffer(offsets.astype(np.int32)),
                                                 pa.py_buffer(b"".join(encoded))])


def string_array(values: list) -> pa.Array:
    """A string array from Python strings and Nones (valid UTF-8 already: no check needed)."""
    valid = np.fromiter((v is not None for v in values), dtype=bool, count=len(values))
    return bytes_array(pa.string(), [v.encode() for v in values if v is not None], valid)


def numbers_to_array(values: np.ndarray, arrow_type: pa.DataType) -> pa.Array:
    """A fixed-width array (int64, float64, timestamp) over a numpy array, without `pa.array`."""
    values = np.ascontiguousarray(values)
    return pa.Array.from_buffers(arrow_type, len(values), [None, pa.py_buffer(values)])


@contextmanager
def malloc_pool() -> Iterator[None]:
    """Arrow allocates through malloc (its system pool) inside the block, then as before.

    Arrow's default pool (mimalloc) keeps the pages it frees: a part written or read back in the
    run process itself (one part: no workers; the asset checks) would leave ~60 MB more resident
    for the rest of the run (reading back a 272k-row part: 222 vs 161 MB peak RSS, 1.5 vs 1.2 s;
    2026-12). Buffers remember their pool, so switching back is safe; the switch is process-wide,
    so another thread allocating meanwhile would use malloc too, which is harmless. Worker
    processes use malloc already (pool.py)."""
    previous = pa.default_memory_pool()
    system = pa.system_memory_pool()
    if previous.backend_name == system.backend_name:
        yield
        return
    pa.set_memory_pool(system)
    try:
        yield
    finally:
        pa.set_memory_pool(previous)
