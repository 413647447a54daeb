"""Deduplication by Mixpanel's rule, with memory that does not grow with the size of the day.

Workers return one 16-byte digest of each row's dedup key (event, distinct_id, time, $insert_id)
with its mp_processing_time_ms; `_KeyBuckets` spreads these records over 256 bucket files by hash,
so one bucket at a time fits in memory, and `_deduplicate` finds duplicates within each bucket by
sorting. The copy with the latest mp_processing_time_ms is kept (Mixpanel shows the latest
ingested copy); ties keep the first in stream order. A window's `Fingerprint` sums what is kept.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mixpanel_assets.staging.block_worker import FLAG_NO_DEDUP
from mixpanel_assets.staging.disk import write_file

N_BUCKETS = 256  # dedup-key buckets: a 4M-event day is ~16k records (640 KB) per bucket to sort
_BUCKET_SHIFT = np.uint64(64 - 8)  # log2(N_BUCKETS) top bits of the hash pick the bucket
KEY_BUFFER_BYTES = 8 << 20  # dedup-key records buffered before they are appended to bucket files
_BUCKET_DTYPE = np.dtype(
    [("hi", "<u8"), ("lo", "<u8"), ("proc", "<u8"), ("win", "<u4"), ("blk", "<u4"), ("row", "<u4"), ("flags", "<u4")]
)
# The worker's 16-byte digests are big-endian 128-bit integers: hi = first 8 bytes, lo = last 8.
_DIGEST_DTYPE = np.dtype([("hi", ">u8"), ("lo", ">u8")])


@dataclass(frozen=True)
class Fingerprint:
    """Order-independent summary of a window's deduplicated events, comparable across exports.

    Additive, so hourly windows combine into the fingerprint of their day: the data-sync sensor
    compares a day's fingerprint from a fresh export probe with the one recorded at export time.
    """

    rows: int = 0
    key_sum: int = 0  # sum of the 64-bit dedup-key hashes of kept rows, mod 2**64
    max_processing_time_ms: int = 0

    def __add__(self, other: Fingerprint) -> Fingerprint:
        return Fingerprint(
            self.rows + other.rows,
            (self.key_sum + other.key_sum) & ((1 << 64) - 1),
            max(self.max_processing_time_ms, other.max_processing_time_ms),
        )

    def token(self) -> str:
        return f"{self.rows}-{self.key_sum:016x}-{self.max_processing_time_ms}"

    @classmethod
    def from_token(cls, token: str) -> Fingerprint:
        rows, key_sum, proc = token.split("-")
        return cls(int(rows), int(key_sum, 16), int(proc))


class _KeyBuckets:
    """Dedup-key records spread over bucket files by hash, buffered to keep writes large.

    Each window's row count, sum of key hashes and latest processing time are totalled here as
    blocks arrive, so deduplication only has to subtract the duplicates it finds (a dropped copy
    never has a later processing time than the copy kept, so the maximum is that of all rows).
    """

    def __init__(self, directory: Path, n_windows: int):
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.pending: list[np.ndarray] = []
        self.buffered = 0
        self.rows = [0] * n_windows
        self.key_sums = [0] * n_windows  # mod 2**64
        self.max_proc = [0] * n_windows

    def add(self, window: int, block: int, hashes: bytes, procs: bytes, no_dedup: bytes, first_row: int = 0) -> None:
        """Records of a block's rows in a window; `first_row` > 0 adds rows after those already added
        for that block (an event rejoined across a block boundary, fragments.py)."""
        digests = np.frombuffer(hashes, dtype=_DIGEST_DTYPE)
        records = np.empty(len(digests), dtype=_BUCKET_DTYPE)
        records["hi"], records["lo"] = digests["hi"], digests["lo"]
        records["proc"] = np.frombuffer(procs, dtype=np.uint64)
        records["row"] = np.arange(first_row, first_row + len(digests), dtype=np.uint32)
        records["flags"] = 0
        if no_dedup:
            records["flags"][np.frombuffer(no_dedup, dtype=np.uint32)] = FLAG_NO_DEDUP
        records["win"], records["blk"] = window, block
        if len(records):
            self.rows[window] += len(records)
            self.key_sums[window] = (self.key_sums[window] + int(records["lo"].sum())) & _U64_MASK
            self.max_proc[window] = max(self.max_proc[window], int(records["proc"].max()))
        self.pending.append(records)
        self.buffered += records.nbytes
        if self.buffered > KEY_BUFFER_BYTES:
            self.flush()

    def flush(self) -> None:
        """Append the buffered records to their buckets: one sort and one write per bucket."""
        if not self.pending:
            return
        records = np.concatenate(self.pending) if len(self.pending) > 1 else self.pending[0]
        self.pending.clear()
        self.buffered = 0
        bucket_of = (records["hi"] >> _BUCKET_SHIFT).astype(np.uint8 if N_BUCKETS <= 256 else np.uint32)
        order = np.argsort(bucket_of, kind="stable")
        records = np.take(records.view(_RECORD_BYTES), order)  # as opaque 40-byte items: 6x a structured gather
        bounds = np.searchsorted(bucket_of[order], np.arange(N_BUCKETS + 1))
        for b in np.flatnonzero(bounds[1:] > bounds[:-1]).tolist():
            write_file(self.directory / f"bucket{b:03d}.bin", records[bounds[b]:bounds[b + 1]].tobytes(), append=True)

    def buckets(self) -> Iterator[np.ndarray]:
        self.flush()
        for b in range(N_BUCKETS):
            path = self.directory / f"bucket{b:03d}.bin"
            if path.exists():
                yield np.fromfile(path, dtype=_BUCKET_DTYPE)


_U64_MASK = (1 << 64) - 1
_RECORD_BYTES = np.dtype(f"V{_BUCKET_DTYPE.itemsize}")
_DROP_DTYPE = np.dtype([("win", "<u4"), ("blk", "<u4"), ("row", "<u4")])


def _deduplicate(buckets: _KeyBuckets, n_windows: int):
    """Find duplicates bucket by bucket; return drops per (window, block) and window fingerprints.

    A duplicate needs an equal 64-bit `hi`, which a bucket's records rarely share otherwise, so
    each bucket is sorted by `hi` alone and only the few records in runs of equal `hi` are
    sorted by the whole rule: key, then latest processing time, then position in the stream.
    """
    dropped_parts: list[np.ndarray] = []
    for records in buckets.buckets():
        cand = records[(records["flags"] & FLAG_NO_DEDUP) == 0]
        if len(cand) < 2:
            continue
        hi = cand["hi"]
        order = np.argsort(hi)
        repeats = hi[order[1:]] == hi[order[:-1]]
        if not repeats.any():
            continue
        in_run = np.zeros(len(cand), dtype=bool)
        in_run[1:] |= repeats
        in_run[:-1] |= repeats
        group = cand[order[in_run]]
        # Each key's copies contiguous, the one kept first: latest processing time, then earliest in the stream.
        group = group[np.lexsort((group["row"], group["blk"], ~group["proc"], group["lo"], group["hi"]))]
        same_as_previous = np.zeros(len(group), dtype=bool)
        same_as_previous[1:] = (group["hi"][1:] == group["hi"][:-1]) & (group["lo"][1:] == group["lo"][:-1])
        if same_as_previous.any():
            dropped_parts.append(group[same_as_previous])
    rows, key_sums = list(buckets.rows), list(buckets.key_sums)
    dup_counts = np.zeros(n_windows, dtype=np.int64)
    drops: dict[tuple[int, int], np.ndarray] = {}
    if dropped_parts:
        dropped = np.concatenate(dropped_parts)
        for win, count in zip(*np.unique(dropped["win"], return_counts=True)):
            dup_counts[win] = count
        for win, lo in zip(dropped["win"].tolist(), dropped["lo"].tolist()):
            rows[win] -= 1
            key_sums[win] = (key_sums[win] - lo) & _U64_MASK
        flat = np.empty(len(dropped), dtype=_DROP_DTYPE)
        flat["win"], flat["blk"], flat["row"] = dropped["win"], dropped["blk"], dropped["row"]
        flat.sort(order=["win", "blk", "row"])
        wins, blks = flat["win"], flat["blk"]
        starts = np.flatnonzero(np.r_[True, (wins[1:] != wins[:-1]) | (blks[1:] != blks[:-1])]).tolist()
        for start, end in zip(starts, starts[1:] + [len(flat)]):
            drops[(int(wins[start]), int(blks[start]))] = flat["row"][start:end].copy()
    fingerprints = [Fingerprint(rows[w], key_sums[w], buckets.max_proc[w]) for w in range(n_windows)]
    return drops, fingerprints, dup_counts
