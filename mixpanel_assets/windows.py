"""Export windows: the half-open UTC intervals rows are sorted into, and the partitions they stand for.

Every layer speaks of windows (staging sorts rows into them, destinations replace them, the Dagster
wiring maps partition keys onto them), so they live below all of them and import nothing of ours.
A partition is a window of project-local time; `time` values stay UTC (DESIGN.md: one timezone rule).
"""

from __future__ import annotations

import datetime as dt
import math
import zoneinfo
from dataclasses import dataclass


@dataclass(frozen=True)
class Window:
    """A half-open UTC interval [start, end) in epoch seconds, the unit rows are sorted into."""

    start: float
    end: float


def epoch_micros(seconds: float) -> int:
    """A `time` as every destination stores it: whole microseconds, `seconds * 1e6` in double precision
    rounded half away from zero. DuckDB (`round`), BigQuery and Snowflake (`ROUND`) round the same
    product the same way; Parquet's round-half-even differs only on exact ties, never at a window bound.
    """
    scaled = abs(seconds * 1e6)
    whole = math.floor(scaled)
    if scaled - whole >= 0.5:  # exact: `whole` is within a factor 2 of `scaled` (or 0)
        whole += 1
    return whole if seconds >= 0 else -whole


def window_tail(end: float) -> tuple[float, float]:
    """(first, last) for a window ending at `end` (whole seconds): the times in [first, end) belong to
    the window but would be stored as `end`'s microsecond, i.e. in the next window; they are stored
    as `last`, the window's last microsecond, instead.

    The one rule for window membership: a row belongs to the window its time, as Mixpanel sent it,
    falls in, compared exactly with the window's bounds. That is how Mixpanel picks the day whose
    export query returns an event, so a row is never in a window whose query does not return it (a
    row rounded into the next day would be lost by a one-day run: outside its window in the query
    that returned it, and absent from the next day's). The stored value is then kept inside that
    window, so a warehouse counting or replacing the window by its stored `time` (DuckDB, BigQuery)
    or by the staged double (Snowflake, the part files) finds exactly the rows the export put there.
    Only times within half a microsecond of a window's end move (by less than that).
    """
    if not math.isfinite(end):  # an unbounded window has no last microsecond
        return end, end
    target = epoch_micros(end)
    first = (target - 0.5) / 1e6
    while epoch_micros(first) >= target:
        first = math.nextafter(first, -math.inf)
    while epoch_micros(first) < target:
        first = math.nextafter(first, math.inf)
    return first, (target - 1) / 1e6


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
