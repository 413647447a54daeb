"""Cutting a run's input into blocks of whole lines, the unit of parse work, and running them.

Streams are cut into ~4 MB blocks at line ends; a whole local file becomes byte ranges that the
workers read themselves. Cut points depend only on the bytes, so the same data always gives the
same blocks. `_run_blocks` parses them in the worker pool (block_worker.py), in input order, and
`_Progress` reports how far the run is.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

from mixpanel_assets.staging.block_worker import BlockSpec, FileRange, process_block
from mixpanel_assets.staging.disk import write_file
from mixpanel_assets.staging.parts import remove_quietly
from mixpanel_assets.staging.pool import process_pool, stop_futures
from mixpanel_assets.transform.records import LocalFile, Origin

BLOCK_BYTES = 4 << 20
PROGRESS_EVERY_SECONDS = 10.0


def split_blocks(chunks: Iterable, block_bytes: int = BLOCK_BYTES) -> Iterator[tuple[int, str, int | None, bytes | FileRange]]:
    """Regroup arbitrary byte chunks into (block_id, origin, first_line_no, block) cut at line ends.

    Cut points depend only on the byte stream, so the same data always gives the same blocks.
    An `Origin` item in `chunks` starts a new input: line numbers restart at 1 and no block spans
    two inputs. A `LocalFile` item becomes FileRange blocks at fixed byte offsets of the file.
    Only an input's first block says its first line (1); the others say None, as their numbers are
    known once the blocks before them are parsed (each worker counts its block's lines anyway), so
    the coordinator, which every byte of a stream passes, never scans a block for newlines.
    Stream bytes are gathered in one buffer, copied once into it and once out as the block.
    """
    pending = bytearray()
    block_id = 0
    first: int | None = 1
    origin = ""

    def emit(data: bytes):
        nonlocal block_id, first
        item = (block_id, origin, first, data)
        block_id += 1
        first = None
        return item

    for chunk in chunks:
        if isinstance(chunk, (Origin, LocalFile)):
            if pending:
                if not pending.endswith(b"\n"):
                    pending += b"\n"
                yield emit(bytes(pending))
                pending = bytearray()
            if isinstance(chunk, Origin):
                origin, first = str(chunk), 1
                continue
            size = os.path.getsize(chunk.path)
            for start in range(0, size, block_bytes):
                yield block_id, chunk.name, None, FileRange(chunk.path, start, min(start + block_bytes, size))
                block_id += 1
            origin, first = "", 1
            continue
        if not chunk:
            continue
        pending += chunk
        while len(pending) >= block_bytes:
            cut = pending.find(b"\n", block_bytes - 1) + 1
            if cut == 0:
                break
            block = bytes(pending[:cut])
            del pending[:cut]
            yield emit(block)
    if pending:
        yield emit(bytes(pending))


@dataclass
class _Block:
    """One unit of parse work and where its lines are in their input (for bad-line reports)."""

    block_id: int
    origin: str
    first_line: int | None  # None for a FileRange: known once the previous blocks are counted
    source: bytes | FileRange


class _Inputs:
    """The run's input as blocks (see split_blocks), counting source bytes as they pass."""

    def __init__(self, chunks: Iterable, block_bytes: int):
        self.chunks = chunks
        self.block_bytes = block_bytes
        self.source_bytes = 0  # bytes of the blocks handed out so far
        self.total_bytes: int | None = 0  # the inputs' size, or None once a stream (size unknown) is seen

    def _sizes(self):
        for item in self.chunks:
            if isinstance(item, LocalFile):
                if self.total_bytes is not None:
                    self.total_bytes += os.path.getsize(item.path)
            elif not isinstance(item, Origin):
                self.total_bytes = None
            yield item

    def __iter__(self) -> Iterator[_Block]:
        for block_id, origin, first_line, source in split_blocks(self._sizes(), self.block_bytes):
            self.source_bytes += source.end - source.start if isinstance(source, FileRange) else len(source)
            yield _Block(block_id, origin, first_line, source)


def _run_blocks(inputs: Iterable[_Block], spec: BlockSpec, workers: int):
    """Yield (block, BlockResult) in input order, parsing in a pool once there is >1 block.

    A stream's block reaches its worker as a file in the run's staging folder, which the worker
    reads like a local file's range (`_HandOff`): written once and read once, where pickling 4 MB
    through the pool's pipe copied it five times and took ~8% of the export's CPU.
    """
    blocks = iter(inputs)
    first = next(blocks, None)
    if first is None:
        return
    second = next(blocks, None)
    if second is None or workers <= 1:
        for block in _chain(first, second, blocks):
            yield block, process_block(block.source, block.block_id, spec)
        return
    pool = process_pool(workers)
    hand_off = _HandOff(spec.staging_dir)
    in_flight: list[tuple[_Block, Future]] = []
    limit = workers * 2
    try:
        for block in _chain(first, second, blocks):
            source = hand_off.put(block)
            in_flight.append((block, pool.submit(process_block, source, block.block_id, spec)))
            if len(in_flight) >= limit:
                done, future = in_flight.pop(0)
                result = future.result()
                hand_off.done(done)
                yield done, result
        while in_flight:
            done, future = in_flight.pop(0)
            result = future.result()
            hand_off.done(done)
            yield done, result
    finally:
        # A failure here or in the caller (a full disk, too many bad lines, a cut stream): the blocks
        # still queued are cancelled and the running ones awaited, so none is written after the
        # caller removed the staging folder (the caller closes this generator: stage.py).
        stop_futures([future for _, future in in_flight])
        hand_off.close()


class _HandOff:
    """Stream blocks handed to the workers as files (`in-<block>.jsonl` in the staging folder), each
    removed once its result is back. They live for a second or two, so the page cache holds them and
    they are deleted before the kernel writes them out; a local file's blocks need none."""

    def __init__(self, folder: str):
        self.folder = folder
        self.paths: dict[int, str] = {}

    def put(self, block: _Block) -> bytes | FileRange:
        if isinstance(block.source, FileRange):
            return block.source
        path = os.path.join(self.folder, f"in-{block.block_id:06d}.jsonl")
        write_file(Path(path), block.source)
        self.paths[block.block_id] = path
        block.source = FileRange(path, 0, len(block.source))  # the bytes are not held while it waits
        return block.source

    def done(self, block: _Block) -> None:
        path = self.paths.pop(block.block_id, None)
        if path is not None:
            remove_quietly(Path(path))

    def close(self) -> None:
        for path in self.paths.values():
            remove_quietly(Path(path))
        self.paths.clear()


def _chain(first, second, rest):
    yield first
    if second is not None:
        yield second
    yield from rest


class _Progress:
    """Throttled progress lines for the run log: lines, MB, rate and (for local files) an ETA."""

    def __init__(self, report: Callable[[str], None] | None, what: str, inputs: _Inputs):
        self.report = report
        self.what = what
        self.inputs = inputs
        self.started = self.last = time.monotonic()

    def update(self, staged) -> None:
        if self.report is None:
            return
        now = time.monotonic()
        if now - self.last < PROGRESS_EVERY_SECONDS:
            return
        self.last = now
        elapsed = now - self.started
        done = staged.source_bytes
        line = (f"{self.what}: {staged.lines:,} lines, {done / 1e6:,.0f} MB parsed in {elapsed:,.0f} s "
                f"({staged.lines / elapsed:,.0f} lines/s)")
        total = self.inputs.total_bytes
        if total and done:
            line += f"; {100 * done / total:.0f}% of {total / 1e6:,.0f} MB, about {elapsed * (total - done) / done:,.0f} s to go"
        self.report(line)
