"""Part files: the compressed JSON-lines files every destination uploads or loads.

A part is written in one pass from blocks of row lines, with a streaming compressor, so memory is
one block whatever the part's size. Parts are cut at `max_bytes` of uncompressed rows, and named
`<stem>-<NNNNN>.<ext>` so the same content always gets the same names (see staging.py for the stem).
Compression uses ISA-L (python-isal) for gzip: 5x zlib's speed at level 1 with a similar ratio,
which is what makes gzip output cost less than parsing.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from isal import isal_zlib

from mixpanel_assets.mixpanel.inputs import open_compressed

GZIP_LEVEL = 2  # ISA-L's level 2 is both faster and smaller than its level 1 on export rows
ZSTD_LEVEL = 3
# Compressors are fed exactly this many bytes at a time: ISA-L's (and zstd's) output depends on
# how the input is chunked, and a part must be byte-identical whichever blocks it was written from.
COMPRESS_CHUNK = 1 << 20

EXTENSIONS = {
    ("json", "gzip"): ".json.gz",
    ("json", "zstd"): ".json.zst",
    ("json", "none"): ".json",
    ("parquet", "zstd"): ".parquet",
    ("parquet", "gzip"): ".parquet",
    ("parquet", "none"): ".parquet",
}


@dataclass(frozen=True)
class PartFile:
    path: Path
    rows: int
    raw_bytes: int  # uncompressed JSON bytes of the rows
    size: int  # bytes of the file as written (compressed)
    # Hex MD5 of the file's bytes as written: what the destinations compare with their store's own
    # checksum, so the asset checks can prove the parts at rest without downloading them.
    md5: str = ""

    @property
    def name(self) -> str:
        return self.path.name


class _Compressor:
    def __init__(self, compression: str):
        self.compression = compression
        if compression == "gzip":
            self._c = isal_zlib.compressobj(GZIP_LEVEL, isal_zlib.DEFLATED, 31)
        elif compression == "zstd":
            import zstandard

            self._c = zstandard.ZstdCompressor(level=ZSTD_LEVEL).compressobj()
        elif compression == "none":
            self._c = None
        else:
            raise ValueError(f"unknown compression {compression!r}")

    def compress(self, data: bytes) -> bytes:
        return data if self._c is None else self._c.compress(data)

    def flush(self) -> bytes:
        return b"" if self._c is None else self._c.flush()


class JsonPartWriter:
    """Streams newline-terminated row blocks into size-capped, compressed JSON-lines parts."""

    def __init__(self, out_dir: Path, stem: str, compression: str = "gzip", max_bytes: int = 256 << 20,
                 first_index: int = 0):
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.stem = stem
        self.compression = compression
        self.ext = EXTENSIONS[("json", compression)]
        self.max_bytes = max_bytes
        self.index = first_index
        self.parts: list[PartFile] = []
        self._file = None

    def _open(self) -> None:
        path = self.out_dir / f"{self.stem}-{self.index:05d}{self.ext}"
        self._file = open(path, "wb")
        self._md5 = hashlib.md5()
        self._path = path
        self._compressor = _Compressor(self.compression)
        self._pending = b""
        self._rows = 0
        self._raw = 0

    def _compress(self, block: bytes) -> None:
        view = memoryview(block)
        offset = 0
        if self._pending:
            offset = COMPRESS_CHUNK - len(self._pending)
            if len(block) < offset:
                self._pending += block
                return
            self._write(self._compressor.compress(self._pending + view[:offset]))
        whole = offset + (len(block) - offset) // COMPRESS_CHUNK * COMPRESS_CHUNK
        for start in range(offset, whole, COMPRESS_CHUNK):
            self._write(self._compressor.compress(view[start:start + COMPRESS_CHUNK]))
        self._pending = bytes(view[whole:])

    def _write(self, data: bytes) -> None:
        """Hash what goes to disk as it goes: the part's MD5 costs no second read of the file."""
        self._md5.update(data)
        self._file.write(data)

    def _close_current(self) -> None:
        if self._file is None:
            return
        if self._pending:
            self._write(self._compressor.compress(self._pending))
            self._pending = b""
        self._write(self._compressor.flush())
        size = self._file.tell()
        self._file.close()
        self.parts.append(PartFile(self._path, self._rows, self._raw, size, self._md5.hexdigest()))
        self._file = None
        self.index += 1

    def write_block(self, block: bytes, rows: int) -> None:
        """Append `rows` newline-terminated lines; a block never straddles two parts."""
        if not rows:
            return
        if self._file is not None and self._raw and self._raw + len(block) > self.max_bytes:
            self._close_current()
        if self._file is None:
            self._open()
        self._compress(block)
        self._rows += rows
        self._raw += len(block)

    def close(self) -> list[PartFile]:
        self._close_current()
        return self.parts

    def abort(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        for part in self.parts:
            part.path.unlink(missing_ok=True)


def iter_part_lines(path: Path, chunk_size: int = 1 << 20):
    """Yield the row lines of a part file (any of our compressions), for readers and checks."""
    with open_compressed(Path(path)) as stream:
        rest = b""
        while True:
            chunk = stream.read(chunk_size)
            if not chunk:
                break
            chunk = rest + chunk
            cut = chunk.rfind(b"\n") + 1
            rest = chunk[cut:]
            yield from chunk[:cut].splitlines()
        if rest:
            yield rest


def file_md5(path: Path, chunk_size: int = 1 << 20) -> str:
    """Hex MD5 of a finished file (Parquet parts, rewritten parts), read in chunks."""
    digest = hashlib.md5()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def remove_quietly(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
