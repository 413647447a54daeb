"""Local source files holding one JSON array of events or profiles, read as JSON lines.

mixpanel-utils' `export_events` and `export_people` write `[{...}, {...}]` by default (on one
line; other tools pretty-print it), while the export reads JSON lines. Such a file is turned into
JSON lines on the fly, as byte chunks, never held whole: each item's own text becomes one line
(a raw newline in valid JSON can only be whitespace between tokens, so it becomes a space). An
item of a compact array is therefore the very line its JSON-lines twin has, and gives the same row.

Item boundaries come from the standard library's C scanner (`json.JSONDecoder.raw_decode`, which
reads one value at an offset and says where it ends), not from a streaming parser such as ijson:
its fast (yajl) backend stops at integers past 64 bits ("integer overflow" on a property of
10**19 would fail the whole file, where a JSON-lines file loads it), and it rebuilds every item
as Python objects to serialise again. This reads 10-15 MB/s on one core, in the coordinating
process; the workers parse the lines as they parse any other.

A file that is not one JSON array fails with its name, line and column, and nothing is written;
an item that is not an event (or profile) goes on as a line and is judged by project.bad_lines
like any bad line, its line number being its item number.
"""

from __future__ import annotations

import codecs
import json
import re
from collections.abc import Iterable, Iterator

from mixpanel_assets.mixpanel.errors import BadInputError

OUT_CHUNK = 1 << 20
MAX_ITEM_CHARS = 1 << 30  # one item longer than this (or never closed) fails instead of filling memory
_NEAR_END = 64  # a parse error this close to the end of what is read may only mean "read more"
_WS = re.compile(r"[ \t\n\r]*")
_DECODER = json.JSONDecoder()
_BOM = "\ufeff"


def starts_as_array(head: bytes) -> bool | None:
    """Whether a file's first bytes open a JSON array; None while they are only whitespace."""
    text = head.lstrip(b" \t\r\n")
    if text.startswith(b"\xef\xbb\xbf"):
        text = text[3:].lstrip(b" \t\r\n")
    return (text[:1] == b"[") if text else None


def origin_of_array(name: str) -> str:
    """How bad-line reports name an array file: its line numbers are item numbers."""
    return f"{name} (a JSON array, one line per item)"


def array_lines(chunks: Iterable[bytes], name: str) -> Iterator[bytes]:
    """The items of the JSON array in `chunks` (a file's bytes) as JSON lines, in ~1 MB chunks."""
    return _ArrayReader(chunks, name).chunks()


class _ArrayReader:
    """The text of the file not yet converted (`buf`, read up to `pos`) and where `buf` starts in
    the file (line, column), for error messages."""

    def __init__(self, chunks: Iterable[bytes], name: str):
        self._chunks = iter(chunks)
        # surrogateescape: bytes that are not UTF-8 pass through unchanged, for the line's parser to judge.
        self._decode = codecs.getincrementaldecoder("utf-8")("surrogateescape").decode
        self.name = name
        self.buf = ""
        self.pos = 0
        self.eof = False
        self.items = 0
        self._line, self._column = 1, 1

    def chunks(self) -> Iterator[bytes]:
        out: list[bytes] = []
        size = 0
        for item in self._items():
            if "\n" in item or "\r" in item:
                item = item.replace("\r", " ").replace("\n", " ")
            line = item.encode("utf-8", "surrogateescape")
            out.append(line)
            size += len(line) + 1
            if size >= OUT_CHUNK:
                yield b"\n".join(out) + b"\n"
                out, size = [], 0
        if out:
            yield b"\n".join(out) + b"\n"

    def _items(self) -> Iterator[str]:
        char = self._peek()
        if char == _BOM:
            self.pos += 1
            char = self._peek()
        if char != "[":
            self._fail("the file does not start with '['")
        self.pos += 1
        char = self._peek()
        if char == "]":
            self.pos += 1
        else:
            while True:
                if not char:
                    self._fail("the file ends inside the array (no closing ']')")
                yield self._item()
                self.items += 1
                char = self._peek()
                if char == ",":
                    self.pos += 1
                    char = self._peek()
                elif char == "]":
                    self.pos += 1
                    break
                else:
                    self._fail("expected ',' or ']' after an item" if char else
                               "the file ends inside the array (no closing ']')")
        if self._peek():
            self._fail("more data after the array's closing ']'")

    def _item(self) -> str:
        while True:
            try:
                _, end = _DECODER.raw_decode(self.buf, self.pos)
            except json.JSONDecodeError as exc:
                maybe_cut = exc.pos >= len(self.buf) - _NEAR_END or exc.msg.startswith("Unterminated string")
                if self.eof or not maybe_cut:
                    self._fail(exc.msg, exc.pos)
                self._read_more_of_item()
                continue
            if end >= len(self.buf) and not self.eof:  # a number at the end may go on in the next chunk
                self._read_more_of_item()
                continue
            item = self.buf[self.pos:end]
            self.pos = end
            return item

    def _read_more_of_item(self) -> None:
        held = len(self.buf) - self.pos
        if held > MAX_ITEM_CHARS:
            self._fail(f"an item longer than {MAX_ITEM_CHARS >> 20} MB, or never closed")
        self._more(held)  # at least double what is held, so a big item is parsed a few times, not once a chunk

    def _peek(self) -> str:
        """The next character that is not whitespace, reading on as needed; '' at the end of the file."""
        while True:
            self.pos = _WS.match(self.buf, self.pos).end()
            if self.pos < len(self.buf):
                return self.buf[self.pos]
            if not self._more():
                return ""

    def _more(self, at_least: int = 0) -> bool:
        """Drop the text already converted, then read at least one chunk (and `at_least` characters)
        more; False when the file had nothing more."""
        if self.eof:
            return False
        self._drop(self.pos)
        added = []
        count = 0
        while not added or count < at_least:
            chunk = next(self._chunks, None)
            if chunk is None:
                added.append(self._decode(b"", final=True))
                self.eof = True
                break
            text = self._decode(chunk)
            added.append(text)
            count += len(text) or 1
        self.buf += "".join(added)
        return bool(count) or bool(added[-1])

    def _drop(self, n: int) -> None:
        newlines = self.buf.count("\n", 0, n)
        if newlines:
            self._line += newlines
            self._column = n - self.buf.rfind("\n", 0, n)
        else:
            self._column += n
        self.buf = self.buf[n:]
        self.pos -= n

    def _fail(self, why: str, at: int | None = None) -> None:
        at = self.pos if at is None else at
        newlines = self.buf.count("\n", 0, at)
        line = self._line + newlines
        column = at - self.buf.rfind("\n", 0, at) if newlines else self._column + at
        raise BadInputError(
            f"local source file {self.name} is neither JSON lines nor a JSON array of events or profiles: "
            f"{why} at line {line}, column {column} (after {self.items:,} item{'' if self.items == 1 else 's'}); "
            "nothing was written"
        )
