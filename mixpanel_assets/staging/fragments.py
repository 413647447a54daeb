"""Lines split in two across a block boundary, joined again by the coordinator.

Mixpanel occasionally splits an export line in two (MIXPANEL_SPEC.md section 4). The block
worker joins the two fragments when both are in its block (block_worker._rejoin); blocks are cut
at line ends, so a split can also fall exactly on a cut: the first fragment ends block N and the
second begins block N+1, each parsed by another worker. Each worker therefore hands back a bad
first or last line (`BlockResult.head_fragment` / `tail_fragment`, only ever set on the bad-line
path), and the coordinator, which absorbs blocks in input order, tries the pair here.

A joined event's row is appended to block N's staged file of its window, after block N's rows
and before block N+1's: the window's row stream, and so its part files, are the same bytes as
when the split falls inside a block. Its dedup records continue block N's row numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

from mixpanel_assets.staging.block_worker import BlockSpec, block_path, parse_block
from mixpanel_assets.staging.disk import write_file
from mixpanel_assets.staging.links import write_block_links
from mixpanel_assets.staging.rows_files import Segment
from mixpanel_assets.transform.events import read_event
from mixpanel_assets.transform.records import MAX_REPORTED_BAD_LINES, BlockResult


def line_where(origin: str, line_no: int) -> str:
    """A line's place as reports name it: `2024-11-22.jsonl line 501`, or `line 501` for one stream."""
    return f"{origin} line {line_no}" if origin else f"line {line_no}"


@dataclass
class _Tail:
    block_id: int
    origin: str
    next_line: int  # the first line number of the block that continues this input
    where: str
    data: bytes


@dataclass
class Joined:
    block_id: int  # the block holding the first fragment
    line: bytes
    where: str  # of the first fragment
    where_second: str


class BoundaryJoins:
    """Remembers the last block's bad last line until the next block of the same input arrives."""

    def __init__(self) -> None:
        self.tail: _Tail | None = None

    def check(self, block_id: int, origin: str, first_line: int, result: BlockResult) -> Joined | None:
        """Call once per block, in input order: the event the previous block's last line and this
        block's first line make together, if they do."""
        tail, self.tail = self.tail, None
        joined = None
        head = result.head_fragment
        if (tail is not None and head is not None and origin == tail.origin
                and block_id == tail.block_id + 1 and first_line == tail.next_line):
            line = tail.data + head
            try:
                read_event(line)
                joined = Joined(tail.block_id, line, tail.where, line_where(origin, first_line))
            except (ValueError, TypeError, OverflowError, RecursionError):  # BadLine is a ValueError
                pass
        if result.tail_fragment is not None:
            index, data = result.tail_fragment
            if not (joined is not None and index == 0):  # a one-line block whose line was just used
                self.tail = _Tail(block_id, origin, first_line + result.line_count,
                                  line_where(origin, first_line + index), data)
        return joined


def absorb_joined(staged, buckets, joined: Joined, spec: BlockSpec) -> None:
    """Count and stage a joined event as one row of the first fragment's block (see the module doc).

    `staged` has already counted both fragments as bad lines; they become one event read."""
    result, buffers, links = parse_block(joined.line + b"\n", spec)
    staged.lines += result.lines - 2
    staged.bad_lines -= 2
    staged.rejoined_lines += 1
    staged.outside_window += result.outside_window
    staged.suppressed += result.suppressed
    staged.millisecond_times += result.millisecond_times
    staged.far_outside += result.far_outside
    for _, time in result.far_examples[:max(0, MAX_REPORTED_BAD_LINES - len(staged.far_examples))]:
        staged.far_examples.append((joined.where, time))
    staged.bad_examples[:] = [e for e in staged.bad_examples if e[0] not in (joined.where, joined.where_second)]
    block_id = joined.block_id
    for w, window in enumerate(staged.windows):
        rows = result.rows_per_window[w]
        if links[w]:
            write_block_links(spec.staging_dir, w, block_id, links[w], tag="-joined")
        if not rows:
            continue
        path = block_path(spec.staging_dir, w, block_id)
        if spec.write_rows:
            write_file(path, bytes(buffers[w]), append=True)
        last = window.segments[-1] if window.segments else None
        first_row = 0
        if last is not None and last.path == path:
            first_row = last.rows
            last.rows += rows
            last.raw_bytes += result.bytes_per_window[w]
        else:
            window.segments.append(Segment(path, rows, result.bytes_per_window[w]))
        window.rows_read += rows
        buckets.add(w, block_id, result.hashes_per_window[w], result.procs_per_window[w],
                    result.no_dedup_per_window[w], first_row=first_row)
