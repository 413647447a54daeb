"""Which partition each deleted row lay in, from one grouped count in the warehouse.

A GDPR deletion reports the rows it removes per partition: the audit says what went where, and
the row-count checks subtract them. Asking a warehouse once per partition would cost one query
job per hour of history; so the warehouse counts the users' rows per time bucket in one query,
a bucket being the longest span (at most an hour) that divides every window boundary: each bucket
then lies inside exactly one window, or inside none (a gap between the partitions asked about).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable

from mixpanel_assets.destinations.base import EVENTS_TABLE, Removal
from mixpanel_assets.windows import PartitionWindow


def bucket_seconds(windows: list[PartitionWindow]) -> int:
    """3600 for hours and days in whole-hour time zones, 1800 or 900 in the others."""
    size = 3600
    for window in windows:
        for edge in (window.start, window.end):
            size = math.gcd(size, math.floor(edge.timestamp()))
    return max(size, 1)


def removals_by_window(windows: list[PartitionWindow], counts: Iterable[tuple[int, int]], bucket: int,
                       location: str) -> list[Removal]:
    """(bucket number, rows) -> one Removal per window with rows, in window order, then the rows
    outside every window under partition_key None."""
    starts = [w.start.timestamp() for w in windows]
    found: dict[int, int] = {}
    for number, rows in counts:
        at = int(number) * bucket
        i = bisect.bisect_right(starts, at) - 1
        inside = i >= 0 and at < windows[i].end.timestamp()
        found[i if inside else len(windows)] = found.get(i if inside else len(windows), 0) + int(rows)
    return [Removal(EVENTS_TABLE, windows[i].partition_key if i < len(windows) else None, rows, location)
            for i, rows in sorted(found.items()) if rows]
