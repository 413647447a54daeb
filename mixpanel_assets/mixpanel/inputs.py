"""What a source hands staging: the two markers it yields among its byte chunks (so staging can name
and split inputs), and how a local file is opened whatever its compression.

They live with the sources (the lowest layer that yields them) in a module of their own that
imports nothing, because the parse workers import it too and must start fast.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


class Origin(str):
    """A marker a source yields between byte chunks: the following lines come from this input.

    Lets bad-line reports say "2024-11-22.jsonl line 501" instead of a position in a
    concatenation of every file.
    """


@dataclass(frozen=True)
class LocalFile:
    """An input item standing for a whole uncompressed local file, read by the workers themselves.

    A source yields it where it would yield `Origin(name)` and the file's bytes; staging then cuts
    the file into byte ranges that the worker processes read directly, so the coordinating process
    never reads, splits or pickles the data (most of its work otherwise).
    """

    path: str
    name: str


def open_compressed(path: Path):
    """A binary reader of a file's content, decompressed by its name (.gz with ISA-L, .zst, or as is):
    the one place that knows our compressions, for source files and for part files read back."""
    name = Path(path).name
    if name.endswith(".gz"):
        from isal import igzip

        return igzip.open(path, "rb")
    if name.endswith(".zst"):
        import zstandard

        return zstandard.ZstdDecompressor().stream_reader(open(path, "rb"), closefd=True)
    return open(path, "rb")
