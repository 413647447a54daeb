"""Export windows: the half-open UTC intervals rows are sorted into, and the partitions they stand for.

Every layer speaks of windows (staging sorts rows into them, destinations replace them, the Dagster
wiring maps partition keys onto them), so they live below all of them and import nothing of ours.
A partition is a window of project-local time; `time` values stay UTC (DESIGN.md: one timezone rule).
"""

from __future__ import annotations

import datetime as dt
import zoneinfo
from dataclasses import dataclass


@dataclass(frozen=True)
class Window:
    """A half-open UTC interval [start, end) in epoch seconds, the unit rows are sorted into."""

    start: float
    end: float


@dataclass(frozen=True)
class PartitionWindow:
    """One partition's window, in UTC for fetching and in local time for paths and labels."""

    partition_key: str
    start: dt.datetime  # UTC
    end: dt.datetime  # UTC
    local_start: dt.datetime  # project timezone
    grain: str  # "hourly" | "daily"

    @property
    def window(self) -> Window:
        return Window(self.start.timestamp(), self.end.timestamp())

    @property
    def local_date(self) -> dt.date:
        return self.local_start.date()

    def folder_parts(self) -> tuple[str, ...]:
        """YYYY/MM/DD for days, YYYY/MM/DD/HH for hours (HH_2 for the repeated DST hour)."""
        d = self.local_start
        parts = (f"{d.year:04d}", f"{d.month:02d}", f"{d.day:02d}")
        if self.grain == "hourly":
            hour = f"{d.hour:02d}"
            if d.fold:
                hour += "_2"
            parts += (hour,)
        return parts


def query_spans(windows: list[PartitionWindow], tz: zoneinfo.ZoneInfo, max_days: int = 1) -> list[tuple[dt.datetime, dt.datetime, list[PartitionWindow]]]:
    """Group a run's windows into Export API queries: contiguous windows within `max_days` local
    days, or within `max_days` x 24 hours.

    A backfill run of 24 hourly partitions costs one query, not 24, also when it does not start at
    midnight (Dagster cuts a backfill into runs of N consecutive partitions from wherever the
    selection starts) or crosses a DST change: one query may span two dates, with a time filter.
    The API allows 60 queries an hour.
    """
    spans: list[tuple[dt.datetime, dt.datetime, list[PartitionWindow]]] = []
    limit = dt.timedelta(days=max_days)
    for w in windows:
        if spans:
            start, end, members = spans[-1]
            first_day = members[0].local_start.date()
            same_days = (w.local_start.date() - first_day).days < max_days
            if w.start == end and (same_days or w.end - start <= limit):
                spans[-1] = (start, w.end, members + [w])
                continue
        spans.append((w.start, w.end, [w]))
    return spans
