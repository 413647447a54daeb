"""Mixpanel's backfill limit (from_date at most 6 months back), enforced where it has a meaning.

Mixpanel counts the limit from the day a pipeline is created. pipelines.yaml may say that day
(`created`), and then config.py checks from_date against it while the location loads. Without
it, checking against the load date would make a location that loads today fail to load six
months later, with nothing changed. So the limit is checked when a run exports instead, counted
from the pipeline's first export (the closest thing to its creation that Dagster records), or from
the run's own day when nothing was exported yet: partitions older than that fail the run, before
the source is queried, with a message that says how to lift the limit. Once a pipeline has
exported, the partitions it may export never shrink as time passes.
"""

from __future__ import annotations

import datetime as dt

import dagster as dg

from mixpanel_assets.config import PipelineConfig, ProjectConfig, months_before
from mixpanel_assets.windows import PartitionWindow

UTC = dt.UTC


def backfill_anchor(first_export: dt.datetime | None, run_time: dt.datetime, project: ProjectConfig) -> tuple[dt.date, str]:
    """The day the limit counts from, in the project timezone, and how to name it in a message."""
    run_day = run_time.astimezone(project.tz).date()
    if first_export is not None and first_export.astimezone(project.tz).date() < run_day:
        return first_export.astimezone(project.tz).date(), "the day of the pipeline's first export"
    return run_day, "the day of this run"


def backfill_limit_problem(pipeline: PipelineConfig, project: ProjectConfig, windows: list[PartitionWindow],
                           anchor: dt.date, anchor_name: str) -> str | None:
    """Why this run may not export `windows` under Mixpanel's limit, or None when it may."""
    limits = project.limits
    if not limits.enforce_mixpanel_limits or pipeline.created is not None:
        return None  # lifted, or already checked against `created` while the location loaded
    earliest = months_before(anchor, limits.max_backfill_months)
    too_old = [w for w in windows if w.local_date < earliest]
    if not too_old:
        return None
    keys = too_old[0].partition_key if len(too_old) == 1 else f"{too_old[0].partition_key}..{too_old[-1].partition_key}"
    return (
        f"pipeline {pipeline.name!r}, field from_date: partition {keys} ({len(too_old)} of this run's "
        f"{len(windows)}) is more than {limits.max_backfill_months} months before {anchor}, {anchor_name} "
        "(Mixpanel's backfill limit); nothing was exported. To export it, set the pipeline's 'created' date "
        "in pipelines.yaml to the day the pipeline was set up (the limit then counts from it), or set "
        "project.limits.enforce_mixpanel_limits: false to lift the limit."
    )


def enforce_backfill_limit(context: dg.AssetExecutionContext, pipeline: PipelineConfig, project: ProjectConfig,
                           windows: list[PartitionWindow]) -> None:
    """Fail the run, without retries, when it would export partitions beyond the limit."""
    if not project.limits.enforce_mixpanel_limits or pipeline.created is not None:
        return  # no instance queries when there is nothing to check
    instance = context.instance
    first = instance.fetch_materializations(dg.AssetRecordsFilter(asset_key=context.asset_key), limit=1,
                                            ascending=True).records
    first_export = dt.datetime.fromtimestamp(first[0].timestamp, UTC) if first else None
    record = instance.get_run_record_by_id(context.run.run_id)
    run_time = record.create_timestamp if record is not None else dt.datetime.now(UTC)
    if run_time.tzinfo is None:
        run_time = run_time.replace(tzinfo=UTC)
    problem = backfill_limit_problem(pipeline, project, windows, *backfill_anchor(first_export, run_time, project))
    if problem:
        raise dg.Failure(description=problem, allow_retries=False)
