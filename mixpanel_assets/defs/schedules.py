"""Jobs and schedules per pipeline, at the times Mixpanel's own pipelines run.

Mixpanel starts hourly exports 30 minutes after the hour and daily exports at 00:30 of the next
day in the project timezone (MIXPANEL_SPEC.md 1.3); we do the same, so the newest partition has
had half an hour for late-arriving events. People and identity are replaced at the same cadence;
identity runs 15 minutes after the events so it sees the newest links. Schedules start stopped:
turning one on in the UI is the explicit "start the pipeline" step.
"""

from __future__ import annotations

import datetime as dt

import dagster as dg

from mixpanel_assets.config import PipelineConfig, PipelinesFile
from mixpanel_assets.schema import EVENTS_TABLE, IDENTITY_TABLE, PEOPLE_TABLE

TABLE = {"events": EVENTS_TABLE, "people": PEOPLE_TABLE, "identity": IDENTITY_TABLE}


def job_name(pipeline: PipelineConfig) -> str:
    return f"{pipeline.name}_job"


def pipeline_job(pipeline: PipelineConfig, config: PipelinesFile) -> dg.UnresolvedAssetJobDefinition:
    project = config.project
    return dg.define_asset_job(
        job_name(pipeline),
        selection=dg.AssetSelection.assets(dg.AssetKey([pipeline.name, TABLE[pipeline.data_source]])),
        tags={"mixpanel/project": str(project.id), "mixpanel/pipeline": pipeline.name},
        description=f"Export {pipeline.data_source} of Mixpanel project {project.id} to {pipeline.destination.describe()}.",
    )


def pipeline_schedule(pipeline: PipelineConfig, config: PipelinesFile, job, today: dt.date) -> dg.ScheduleDefinition | None:
    if pipeline.to_date is not None and pipeline.to_date < today:
        return None  # a date-ranged pipeline: backfill it, there is nothing left to schedule
    tz = config.project.timezone
    if pipeline.data_source == "events":
        if pipeline.frequency == "hourly":
            return dg.build_schedule_from_partitioned_job(job, minute_of_hour=30, name=f"{pipeline.name}_schedule")
        return dg.build_schedule_from_partitioned_job(job, hour_of_day=0, minute_of_hour=30, name=f"{pipeline.name}_schedule")
    minute = 30 if pipeline.data_source == "people" else 45
    cron = f"{minute} * * * *" if pipeline.frequency == "hourly" else f"{minute} 0 * * *"
    return dg.ScheduleDefinition(
        name=f"{pipeline.name}_schedule", job=job, cron_schedule=cron, execution_timezone=tz,
        description=f"Replace {TABLE[pipeline.data_source]} {pipeline.frequency}.",
    )
