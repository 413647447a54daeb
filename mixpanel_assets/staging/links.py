"""Identity links found while staging: written per block by the workers, merged per window, read sorted.

A day's links grow with its users; the export's memory must not, so they are never one dict in
one process: workers write each block's links in LINK_PARTS hash partitions, `merge_links` merges
one partition of a window at a time (in the workers, while the coordinator deduplicates), and
`LinkSet` reads the merged, sorted partition files back as one sorted stream.
"""

from __future__ import annotations

import heapq
import pickle
import struct
from collections.abc import Iterator
from pathlib import Path

import orjson
import xxhash

from mixpanel_assets.staging.disk import write_file

LINK_PARTS = 8  # a window's links are merged in this many hash partitions: memory is 1/8 of them
_LINK_HEADER = struct.Struct(f"<{LINK_PARTS + 1}Q")  # where each partition's pickle starts in a block's file


def _link_part(link: tuple[str, str, str]) -> int:
    # A hash that is the same in every process (str hashes are salted per process).
    return xxhash.xxh3_64_intdigest("\0".join(link).encode("utf-8", "surrogatepass")) % LINK_PARTS


def links_dir(staging_dir: str | Path, window_index: int) -> Path:
    """A window's per-block link files; merged files go beside this folder (see merge_links)."""
    return Path(staging_dir) / "links" / f"w{window_index:05d}" / "blocks"


def write_block_links(staging_dir: str, window_index: int, block_id: int, links: dict, tag: str = "") -> None:
    """One file per block holding LINK_PARTS pickles (one per hash partition) behind an offset
    header: each merge task reads only its partition, and a block creates one file, not eight
    (file creation is a large part of the kernel time of an export). `tag` names a second file of
    the same block (an event rejoined across its boundary, fragments.py)."""
    parts: list[dict] = [{} for _ in range(LINK_PARTS)]
    for link, seen_at in links.items():
        parts[_link_part(link)][link] = seen_at
    blobs = [pickle.dumps(part_links, pickle.HIGHEST_PROTOCOL) if part_links else b"" for part_links in parts]
    offsets = [_LINK_HEADER.size]
    for blob in blobs:
        offsets.append(offsets[-1] + len(blob))
    path = links_dir(staging_dir, window_index) / f"b{block_id:07d}{tag}.pickles"
    write_file(path, b"".join([_LINK_HEADER.pack(*offsets), *blobs]))


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


class LinkSet:
    """A window's identity links ((kind, a, b) -> earliest time), kept on disk in sorted partitions.

    A day's links grow with its users; the export's memory must not, so they are never one dict:
    `sorted_items()` merges the partition files as it reads them (StateStore.write_links streams
    it into the state file), `len()` is known without reading.
    """

    def __init__(self, files: list[str] | None = None, count: int = 0):
        self.files = files or []
        self.count = count

    def __len__(self) -> int:
        return self.count

    def sorted_items(self) -> Iterator[tuple[tuple[str, str, str], float]]:
        return heapq.merge(*(self._read(path) for path in self.files))

    def items(self) -> Iterator[tuple[tuple[str, str, str], float]]:
        return self.sorted_items()

    def __iter__(self) -> Iterator[tuple[str, str, str]]:
        return (link for link, _ in self.sorted_items())

    def to_dict(self) -> dict[tuple[str, str, str], float]:
        return dict(self.sorted_items())

    def __eq__(self, other) -> bool:
        if isinstance(other, LinkSet):
            other = other.to_dict()
        return isinstance(other, dict) and self.to_dict() == other

    @staticmethod
    def _read(path: str) -> Iterator[tuple[tuple[str, str, str], float]]:
        loads = orjson.loads
        with open(path, "rb") as f:
            for line in f:
                kind, a, b, seen_at = loads(line)
                yield (kind, a, b), seen_at
