"""Partitions and export windows, all in the project timezone (DESIGN.md: one timezone rule).

A partition is a window of project-local time; `time` values stay UTC. Folder dates, warehouse
partition dates and partition keys all read the same local calendar, so "2024-11-22" means the
same events everywhere.
"""

from __future__ import annotations

import datetime as dt
import zoneinfo
from dataclasses import dataclass

import dagster as dg

from mixpanel_assets.config import PipelineConfig, ProjectConfig
from mixpanel_assets.windows import PartitionWindow, query_spans

UTC = dt.UTC
HOURLY_FMT = "%Y-%m-%d-%H:%M"
HOURLY_FMT_WITH_OFFSET = "%Y-%m-%d-%H:%M%z"  # non-UTC zones: the repeated DST hour needs an offset


def events_partitions_def(pipeline: PipelineConfig, project: ProjectConfig) -> dg.TimeWindowPartitionsDefinition:
    end_date = None
    if pipeline.to_date is not None:
        end_date = (pipeline.to_date + dt.timedelta(days=1)).isoformat()  # Dagster's end_date is exclusive
    if pipeline.frequency == "hourly":
        fmt = HOURLY_FMT if project.timezone == "UTC" else HOURLY_FMT_WITH_OFFSET
        start = dt.datetime.combine(pipeline.from_date, dt.time(0), tzinfo=project.tz)
        return dg.HourlyPartitionsDefinition(
            start_date=start.strftime(fmt), end_date=_end_for(end_date, fmt, project), timezone=project.timezone, fmt=fmt
        )
    return dg.DailyPartitionsDefinition(
        start_date=pipeline.from_date.isoformat(), end_date=end_date, timezone=project.timezone
    )


def _end_for(end_date: str | None, fmt: str, project: ProjectConfig) -> str | None:
    if end_date is None:
        return None
    return dt.datetime.combine(dt.date.fromisoformat(end_date), dt.time(0), tzinfo=project.tz).strftime(fmt)


def windows_for_keys(partitions_def: dg.TimeWindowPartitionsDefinition, keys: list[str], grain: str) -> list[PartitionWindow]:
    tz = zoneinfo.ZoneInfo(partitions_def.timezone)
    windows = []
    for key in keys:
        tw = partitions_def.time_window_for_partition_key(key)
        start = tw.start.astimezone(UTC)
        end = tw.end.astimezone(UTC)
        local = start.astimezone(tz)
        windows.append(PartitionWindow(key, start, end, local, grain))
    return sorted(windows, key=lambda w: w.start)


@dataclass(frozen=True)
class BackfillPlan:
    """What a backfill costs: its runs (partition keys each) and the Export API queries of each run."""

    runs: list[list[str]]
    queries_per_run: list[int]

    @property
    def queries(self) -> int:
        return sum(self.queries_per_run)


def plan_backfill(partitions_def: dg.TimeWindowPartitionsDefinition, keys: list[str], partitions_per_run: int,
                  grain: str, max_days_per_query: int = 1) -> BackfillPlan:
    """The runs a backfill of `keys` becomes and the queries they cost, as Dagster launches them.

    Dagster's BackfillPolicy.multi_run(N) cuts each contiguous range of the selected partitions into
    runs of N consecutive partitions, starting at the range's first partition; each run then
    queries as query_spans groups its windows.
    """
    all_keys = partitions_def.get_partition_keys()
    position = {key: i for i, key in enumerate(all_keys)}
    ordered = sorted(set(keys), key=position.__getitem__)
    ranges: list[list[str]] = []
    for key in ordered:
        if ranges and position[key] == position[ranges[-1][-1]] + 1:
            ranges[-1].append(key)
        else:
            ranges.append([key])
    runs = [r[i:i + partitions_per_run] for r in ranges for i in range(0, len(r), partitions_per_run)]
    tz = zoneinfo.ZoneInfo(partitions_def.timezone)
    queries = [len(query_spans(windows_for_keys(partitions_def, run, grain), tz, max_days_per_query)) for run in runs]
    return BackfillPlan(runs, queries)
