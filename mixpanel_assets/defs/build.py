"""Build the Dagster Definitions of a project from its pipelines.yaml.

Loading reads only that file: no network, no environment variables (credentials stay EnvVar
references until a run starts), no cloud client imports.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import dagster as dg

from mixpanel_assets.config import PipelinesFile, load_pipelines_file
from mixpanel_assets.defs.assets import EVENTS_TABLE, pipeline_assets, source_specs
from mixpanel_assets.defs.checks import pipeline_checks
from mixpanel_assets.defs.freshness import FRESHNESS_SENSOR, partition_freshness
from mixpanel_assets.defs.gdpr import gdpr_job
from mixpanel_assets.defs.instance import SOURCE_RESOURCE_KEY, qualified, with_key_prefix
from mixpanel_assets.defs.resources import source_resource
from mixpanel_assets.defs.schedules import pipeline_job, pipeline_schedule
from mixpanel_assets.defs.sensors import probe_job, sync_sensor
from mixpanel_assets.destinations.io_managers import build_io_manager, io_manager_key


def build_definitions(config_path: str | Path, today: dt.date | None = None) -> dg.Definitions:
    """The definitions of pipelines.yaml, the same whatever the date: validation, assets, partitions,
    checks and jobs never depend on it. `today` (default: the real date) only leaves out the
    schedule of a date-ranged pipeline whose to_date has passed, which has nothing left to run."""
    config_path = Path(config_path).resolve()
    config = load_pipelines_file(config_path)
    return definitions_for(config, config_path.parent, today or dt.date.today())


def definitions_for(config: PipelinesFile, base_dir: Path, today: dt.date,
                    key_prefix: str | None = None) -> dg.Definitions:
    """`key_prefix` qualifies every name, so several configurations share a code location (instance.py)."""
    config = with_key_prefix(config, key_prefix)
    source_key = qualified(key_prefix, SOURCE_RESOURCE_KEY)
    resources = {source_key: source_resource(config.project, base_dir)}
    for pipeline in config.pipelines:
        resources[io_manager_key(pipeline)] = build_io_manager(pipeline, config.project, base_dir)
    jobs, schedules, sensors = [], [], []
    for pipeline in config.pipelines:
        job = pipeline_job(pipeline, config)
        jobs.append(job)
        schedule = pipeline_schedule(pipeline, config, job, today)
        if schedule is not None:
            schedules.append(schedule)
        if pipeline.syncs:
            probe = probe_job(pipeline, config, source_key, resources[source_key])
            jobs.append(probe)
            sensors.append(sync_sensor(pipeline, config, job, probe))
    assets = pipeline_assets(config, base_dir, source_key)
    events_assets = {a.key.path[0]: a for a in assets if a.key.path[-1] == EVENTS_TABLE}
    freshness_checks, freshness_sensors = partition_freshness(config, events_assets,
                                                              qualified(key_prefix, FRESHNESS_SENSOR))
    return dg.Definitions(
        assets=[*source_specs(config.project, source_key), *assets],
        asset_checks=[*pipeline_checks(config), *freshness_checks],
        jobs=[*jobs, gdpr_job(config, base_dir, key_prefix)],
        schedules=schedules,
        sensors=[*sensors, *freshness_sensors],
        resources=resources,
    )
