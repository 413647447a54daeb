"""The Dagster assets of each pipeline, built from pipelines.yaml.

Per pipeline (key prefix = pipeline name, group = pipeline name):
  events   -> [name, mp_master_event]            hourly or daily partitions in the project timezone
  people   -> [name, mp_people_data]             unpartitioned, replaced whole
  identity -> [name, mp_identity_mappings_data]  unpartitioned, replaced whole, from the events' links
Upstream, the Mixpanel project appears as external assets, so lineage reads Mixpanel -> tables.
"""


import contextlib
import dataclasses
import warnings
from pathlib import Path

import dagster as dg

from mixpanel_assets.config import PipelineConfig, PipelinesFile, ProjectConfig
from mixpanel_assets.defs.backfill_limit import enforce_backfill_limit
from mixpanel_assets.defs.freshness import events_freshness_policy
from mixpanel_assets.defs.gdpr_register import ProfilesWithoutDeleted, suppressed_distinct_ids
from mixpanel_assets.defs.instance import SOURCE_RESOURCE_KEY
from mixpanel_assets.defs.partitions import events_partitions_def, windows_for_keys
from mixpanel_assets.defs.resources import state_store
from mixpanel_assets.destinations.io_managers import io_manager_key
from mixpanel_assets.destinations.registry import table_location
from mixpanel_assets.mixpanel.errors import SourceError, SourceTransientError
from mixpanel_assets.mixpanel.resource import MixpanelSourceResource
from mixpanel_assets.schema import EVENTS_TABLE, IDENTITY_TABLE, PEOPLE_TABLE
from mixpanel_assets.staging.exports import EventsExportSpec, export_events, export_identity, export_people
from mixpanel_assets.staging.stage import BadInputError


def retry_policy(project: ProjectConfig) -> dg.RetryPolicy | None:
    """Step retries for what the source's retry layer does not cover (a destination or disk
    hiccup). Source failures never reach it: the source retried them already (mixpanel/retry.py)
    and `source_failures_to_dagster` fails the step without retries, so Export API queries are
    not multiplied. `project.step_retries` sets the numbers."""
    retries = project.step_retries
    if retries.max_retries == 0:
        return None
    if retries.delay_seconds == 0:
        return dg.RetryPolicy(max_retries=retries.max_retries)
    return dg.RetryPolicy(max_retries=retries.max_retries, delay=retries.delay_seconds,
                          backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS)


def project_pool(project: ProjectConfig) -> str:
    """One Dagster pool per Mixpanel project: Mixpanel runs one pipeline step per project at a time."""
    return f"mixpanel_project_{project.id}"


def source_keys(project: ProjectConfig, source_key: str = SOURCE_RESOURCE_KEY) -> dict[str, dg.AssetKey]:
    """[mixpanel, project_<id>, events | profiles]; `source_key` is the prefixed name of a MixpanelPipelines
    instance with a key_prefix, since components stamp their own metadata on each instance's specs."""
    base = [source_key, f"project_{project.id}"]
    return {"events": dg.AssetKey([*base, "events"]), "profiles": dg.AssetKey([*base, "profiles"])}


def source_specs(project: ProjectConfig, source_key: str = SOURCE_RESOURCE_KEY) -> list[dg.AssetSpec]:
    keys = source_keys(project, source_key)
    meta = {"mixpanel/project_id": project.id, "mixpanel/residency": project.residency,
            "mixpanel/timezone": project.timezone}
    return [
        dg.AssetSpec(keys["events"], description=f"Events of Mixpanel project {project.id} (Raw Event Export API).",
                     group_name="mixpanel", kinds={"mixpanel"}, metadata=meta),
        dg.AssetSpec(keys["profiles"], description=f"User profiles of Mixpanel project {project.id} (Engage API).",
                     group_name="mixpanel", kinds={"mixpanel"}, metadata=meta),
    ]


@contextlib.contextmanager
def source_failures_to_dagster():
    """The one place our source and input errors become Dagster failures, none of them retried
    by Dagster: a permanent error (refused credentials, no API access, a missing project,
    malformed data) fails the same way again, and a transient one reaching here has used up the
    source's retries (or only a later run can help), so a step retry would only spend more of the
    60 queries/hour. The metadata says which, for the UI and for alerts."""
    try:
        yield
    except BadInputError as exc:
        raise dg.Failure(description=str(exc), allow_retries=False,
                         metadata={"mixpanel/error": "bad_input", "mixpanel/retry_later_helps": False}) from exc
    except SourceError as exc:
        metadata = {"mixpanel/error": exc.reason, "mixpanel/retry_later_helps": exc.retryable}
        if exc.status is not None:
            metadata["mixpanel/http_status"] = exc.status
        if isinstance(exc, SourceTransientError):
            metadata["mixpanel/attempts"] = exc.attempts
        raise dg.Failure(description=str(exc), allow_retries=False, metadata=metadata) from exc


def events_asset(pipeline: PipelineConfig, project: ProjectConfig, base_dir: Path,
                 source_key: str = SOURCE_RESOURCE_KEY) -> dg.AssetsDefinition:
    partitions_def = events_partitions_def(pipeline, project)
    per_run = pipeline.backfill_partitions_per_run or (24 if pipeline.frequency == "hourly" else 1)
    spec = EventsExportSpec(
        pipeline=pipeline.name,
        timezone=project.timezone,
        events=pipeline.events,
        where=pipeline.where,
        legacy_timezone=project.timezone if project.legacy_project_timezone_dates else None,
        workers=project.export_workers,
        max_bad_fraction=project.bad_lines.max_fraction,
        max_bad_count=project.bad_lines.max_count,
    )

    @dg.asset(
        key=[pipeline.name, EVENTS_TABLE],
        partitions_def=partitions_def,
        io_manager_key=io_manager_key(pipeline),
        required_resource_keys={source_key},
        deps=[source_keys(project, source_key)["events"]],
        backfill_policy=dg.BackfillPolicy.multi_run(max_partitions_per_run=per_run),
        freshness_policy=events_freshness_policy(pipeline) if pipeline.recurring else None,
        pool=project_pool(project),
        group_name=pipeline.name,
        kinds={"mixpanel", pipeline.destination.kind},
        retry_policy=retry_policy(project),
        metadata={
            "dagster/table_name": table_location(pipeline.destination, project.id, EVENTS_TABLE, base_dir),
            "mixpanel/pipeline": pipeline.name,
            "mixpanel/frequency": pipeline.frequency,
            "partition_expr": "time",
        },
        tags={"mixpanel/data_source": "events"},
        description=(
            f"Mixpanel events of project {project.id}, {pipeline.frequency} partitions in {project.timezone}, "
            f"deduplicated by (event, distinct_id, time, $insert_id), into {pipeline.destination.describe()}."
        ),
    )
    def mp_master_event(context: dg.AssetExecutionContext) -> dg.Output:
        mixpanel: MixpanelSourceResource = getattr(context.resources, source_key)
        windows = windows_for_keys(partitions_def, list(context.partition_keys), pipeline.frequency)
        enforce_backfill_limit(context, pipeline, project, windows)
        # Users deleted by a GDPR deletion stay deleted until Mixpanel has deleted them too.
        run_spec = dataclasses.replace(spec, suppressed_distinct_ids=suppressed_distinct_ids(mixpanel.state_path))
        source = mixpanel.open(context.log)
        try:
            with source_failures_to_dagster():
                staged = export_events(source, windows, run_spec, state_store(mixpanel), context.log)
        finally:
            source.close()
        for window in staged.windows:
            w = window.partition
            context.add_asset_metadata(
                {
                    "dagster/partition_row_count": window.rows,
                    "rows_read": window.rows_read,
                    "duplicates_dropped": window.duplicates,
                    "window_start": w.start.isoformat(),
                    "window_end": w.end.isoformat(),
                    "mixpanel/fingerprint": window.fingerprint.token(),
                    "identity_links": len(window.links),
                },
                partition_key=window.partition_key,
            )
        return dg.Output(
            staged,
            metadata={
                "source": source.description,
                "lines_read": staged.lines,
                "bad_lines": staged.bad_lines,
                "rejoined_lines": staged.rejoined_lines,
                "millisecond_times": staged.millisecond_times,
                "rows_outside_window": staged.outside_window,
                "rows_of_deleted_users_dropped": staged.suppressed,
                "source_bytes": staged.source_bytes,
                "source_queries": staged.queries,
                "partitions_in_run": len(windows),
            },
        )

    return mp_master_event


def people_asset(pipeline: PipelineConfig, project: ProjectConfig, base_dir: Path,
                 source_key: str = SOURCE_RESOURCE_KEY) -> dg.AssetsDefinition:
    @dg.asset(
        key=[pipeline.name, PEOPLE_TABLE],
        io_manager_key=io_manager_key(pipeline),
        required_resource_keys={source_key},
        deps=[source_keys(project, source_key)["profiles"]],
        pool=project_pool(project),
        group_name=pipeline.name,
        kinds={"mixpanel", pipeline.destination.kind},
        retry_policy=retry_policy(project),
        metadata={"dagster/table_name": table_location(pipeline.destination, project.id, PEOPLE_TABLE, base_dir),
                  "mixpanel/pipeline": pipeline.name},
        tags={"mixpanel/data_source": "people"},
        description=f"User profiles of Mixpanel project {project.id}, replaced whole on every run.",
    )
    def mp_people_data(context: dg.AssetExecutionContext) -> dg.Output:
        mixpanel: MixpanelSourceResource = getattr(context.resources, source_key)
        source = ProfilesWithoutDeleted(mixpanel.open(context.log), suppressed_distinct_ids(mixpanel.state_path))
        try:
            with source_failures_to_dagster():
                staged = export_people(source, None, mixpanel.max_bad_fraction, context.log, mixpanel.max_bad_count)
        finally:
            source.close()
        return dg.Output(staged, metadata={"dagster/row_count": staged.rows, **staged.extra_metadata,
                                           "profiles_of_deleted_users_dropped": source.suppressed,
                                           "source": source.description})

    return mp_people_data


def identity_asset(pipeline: PipelineConfig, config: PipelinesFile, base_dir: Path,
                   source_key: str = SOURCE_RESOURCE_KEY) -> dg.AssetsDefinition:
    project = config.project
    event_pipelines = [p.name for p in config.event_pipelines]

    @dg.asset(
        key=[pipeline.name, IDENTITY_TABLE],
        io_manager_key=io_manager_key(pipeline),
        required_resource_keys={source_key},
        deps=[dg.AssetKey([name, EVENTS_TABLE]) for name in event_pipelines],
        group_name=pipeline.name,
        kinds={"mixpanel", pipeline.destination.kind},
        retry_policy=retry_policy(project),
        metadata={"dagster/table_name": table_location(pipeline.destination, project.id, IDENTITY_TABLE, base_dir),
                  "mixpanel/pipeline": pipeline.name, "mixpanel/identity_merge": project.identity_merge},
        tags={"mixpanel/data_source": "identity"},
        description=(
            f"distinct_id -> resolved_distinct_id for project {project.id} ({project.identity_merge} ID merge), "
            f"computed from the identity links of every exported partition of {', '.join(event_pipelines)}; "
            "replaced whole on every run."
        ),
    )
    def mp_identity_mappings_data(context: dg.AssetExecutionContext) -> dg.Output:
        mixpanel: MixpanelSourceResource = getattr(context.resources, source_key)
        staged = export_identity(state_store(mixpanel), event_pipelines, project.identity_merge, None,
                                 project.identity.memory_limit_mb)
        context.log.info(f"{staged.rows} identity mappings from {staged.extra_metadata['links']} links")
        return dg.Output(staged, metadata={"dagster/row_count": staged.rows, **staged.extra_metadata})

    return mp_identity_mappings_data


def pipeline_assets(config: PipelinesFile, base_dir: Path,
                    source_key: str = SOURCE_RESOURCE_KEY) -> list[dg.AssetsDefinition]:
    assets = []
    with warnings.catch_warnings():
        # backfill_policy is a beta parameter; it is how a backfill of hourly partitions costs one
        # Export API query per day instead of one per hour, so we use it knowingly.
        warnings.filterwarnings("ignore", category=dg.BetaWarning)
        for pipeline in config.pipelines:
            assets.append(_pipeline_asset(pipeline, config, base_dir, source_key))
    return assets


def _pipeline_asset(pipeline: PipelineConfig, config: PipelinesFile, base_dir: Path,
                    source_key: str) -> dg.AssetsDefinition:
    if pipeline.data_source == "events":
        return events_asset(pipeline, config.project, base_dir, source_key)
    if pipeline.data_source == "people":
        return people_asset(pipeline, config.project, base_dir, source_key)
    return identity_asset(pipeline, config, base_dir, source_key)
