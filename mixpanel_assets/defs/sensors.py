"""The data-sync sensor and its probe job, one pair per events pipeline with `sync: true`.

A tick of the sensor costs no Mixpanel query and only a handful of instance reads, so it never
holds up the sensor daemon; everything that talks to Mixpanel runs as a run:

1. When the newest successful probe is older than `sync_window.probe_interval_hours` and some
   exported days are due (sync.due_days), the sensor requests a probe run
   (`<pipeline>_sync_probe_job`): one Export API query over those days, fingerprints recorded as
   an observation of the Mixpanel events asset.
2. For each due day whose probed fingerprint differs from the exported one (sync.changes), it
   requests a re-export of that day: `<pipeline>_job` for the day's partition, or one run over the
   day's hours for hourly pipelines (one Export API query). The run key holds the day, the
   source's fingerprint and the probe, so the same change is never exported twice, a later change
   of the same day is, and a failed sync run is retried after the next probe.
3. The cursor (JSON) remembers the run keys it requested, so a restarted or re-evaluated sensor
   does not request them again even where the daemon's run-key deduplication does not apply.
"""


import datetime as dt
import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass

import dagster as dg

from mixpanel_assets.config import PipelineConfig, PipelinesFile, SyncWindow
from mixpanel_assets.defs.assets import (
    EVENTS_TABLE,
    project_pool,
    source_failures_to_dagster,
    source_keys,
)
from mixpanel_assets.defs.gdpr_register import suppressed_distinct_ids
from mixpanel_assets.defs.instance import SOURCE_RESOURCE_KEY
from mixpanel_assets.defs.partitions import events_partitions_def
from mixpanel_assets.defs.schedules import job_name
from mixpanel_assets.defs.sync import (
    EXPORTED_FINGERPRINT_TAG,
    FINGERPRINT_KEY,
    PIPELINE_KEY,
    PROBE_FINGERPRINTS_KEY,
    PROBE_STARTED_KEY,
    PROBE_TAG,
    SYNC_DAY_TAG,
    SYNC_FINGERPRINT_TAG,
    SYNC_REASON_TAG,
    SYNC_TAG,
    ExportedDay,
    Probe,
    candidate_days,
    changes,
    day_bounds,
    due_days,
    probe_source,
    sum_fingerprints,
)
from mixpanel_assets.mixpanel.resource import MixpanelSourceResource

SENSOR_INTERVAL_SECONDS = 600
IN_FLIGHT = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
]
_STORAGE_ID_BATCH = 500

log = logging.getLogger(__name__)


def sync_sensor_name(pipeline: PipelineConfig) -> str:
    return f"{pipeline.name}_sync_sensor"


def probe_job_name(pipeline: PipelineConfig) -> str:
    return f"{pipeline.name}_sync_probe_job"


def probe_op_name(pipeline: PipelineConfig) -> str:
    return f"{pipeline.name}_sync_probe"


@dataclass(frozen=True)
class SyncTarget:
    """Everything a tick needs to know about one pipeline, fixed when the definitions load."""

    pipeline: PipelineConfig
    partitions_def: dg.TimeWindowPartitionsDefinition
    timezone: str

    @property
    def name(self) -> str:
        return self.pipeline.name

    @property
    def asset_key(self) -> dg.AssetKey:
        return dg.AssetKey([self.pipeline.name, EVENTS_TABLE])

    @property
    def window(self) -> SyncWindow:
        return self.pipeline.effective_sync_window

    @property
    def tz(self):
        import zoneinfo

        return zoneinfo.ZoneInfo(self.timezone)

    def day_keys(self, day: dt.date) -> tuple[str, ...]:
        """The partition keys of a local day: the day itself, or its 23-25 hours."""
        if self.pipeline.frequency == "daily":
            return (day.isoformat(),)
        start, end = day_bounds(day, self.tz)
        return tuple(self.partitions_def.get_partition_keys_in_time_window(dg.TimeWindow(start, end)))

    def day_of(self, partition_key: str) -> dt.date:
        if self.pipeline.frequency == "daily":
            return dt.date.fromisoformat(partition_key)
        return self.partitions_def.time_window_for_partition_key(partition_key).start.astimezone(self.tz).date()


# --- instance reads (cheap: no Mixpanel, a few queries of the event log and run storage) --------


def exported_days(instance: dg.DagsterInstance, target: SyncTarget, today: dt.date) -> dict[dt.date, ExportedDay]:
    """The exported days inside the window's age limit, with their summed fingerprints."""
    by_day: dict[dt.date, list[str]] = {}
    for key in instance.get_materialized_partitions(target.asset_key):
        by_day.setdefault(target.day_of(key), []).append(key)
    days = candidate_days(by_day, today, target.window)
    keys = [k for d in days for k in by_day[d]]
    latest = _latest_materializations(instance, target.asset_key, keys)
    result = {}
    for day in days:
        expected = target.day_keys(day)
        present = [latest[k] for k in expected if k in latest]
        missing = len(expected) - len(present)
        fingerprint = None if missing else sum_fingerprints(token for token, _ in present)
        exported_at = max((ts for _, ts in present), default=0.0)
        result[day] = ExportedDay(day, expected, fingerprint, exported_at, missing)
    return result


def _latest_materializations(instance: dg.DagsterInstance, asset_key: dg.AssetKey,
                             keys: list[str]) -> dict[str, tuple[str | None, float]]:
    """partition key -> (fingerprint token or None, timestamp) of its newest materialization."""
    if not keys:
        return {}
    storage_ids = instance.get_latest_storage_id_by_partition(
        asset_key, dg.DagsterEventType.ASSET_MATERIALIZATION, partitions=set(keys)
    )
    ids = list(storage_ids.values())
    result = {}
    for i in range(0, len(ids), _STORAGE_ID_BATCH):
        batch = ids[i : i + _STORAGE_ID_BATCH]
        records = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=asset_key, storage_ids=batch), limit=len(batch)
        ).records
        for record in records:
            metadata = record.asset_materialization.metadata
            entry = metadata.get(FINGERPRINT_KEY)
            result[record.partition_key] = (entry.value if entry is not None else None, record.timestamp)
    return result


def latest_probe(instance: dg.DagsterInstance, pipeline: PipelineConfig) -> Probe | None:
    """The fingerprints recorded by the pipeline's newest successful probe run, if any."""
    runs = instance.get_runs(
        filters=dg.RunsFilter(job_name=probe_job_name(pipeline), statuses=[dg.DagsterRunStatus.SUCCESS]), limit=1
    )
    if not runs:
        return None
    run = runs[0]
    for entry in instance.all_logs(run.run_id, of_type=dg.DagsterEventType.ASSET_OBSERVATION):
        observation = entry.asset_observation
        metadata = observation.metadata if observation is not None else {}
        pipeline_entry = metadata.get(PIPELINE_KEY)
        if pipeline_entry is None or pipeline_entry.value != pipeline.name or PROBE_FINGERPRINTS_KEY not in metadata:
            continue
        return Probe(run.run_id, float(metadata[PROBE_STARTED_KEY].value), dict(metadata[PROBE_FINGERPRINTS_KEY].value))
    return None


def _in_flight(instance: dg.DagsterInstance, pipeline: PipelineConfig) -> tuple[bool, set[str]]:
    """(a probe run is queued or running, days with a sync run queued or running)."""
    probing = bool(instance.get_runs(
        filters=dg.RunsFilter(job_name=probe_job_name(pipeline), statuses=IN_FLIGHT), limit=1
    ))
    syncing = instance.get_runs(
        filters=dg.RunsFilter(job_name=job_name(pipeline), tags={SYNC_TAG: "true"}, statuses=IN_FLIGHT)
    )
    return probing, {run.tags.get(SYNC_DAY_TAG) for run in syncing if run.tags.get(SYNC_DAY_TAG)}


# --- one tick -------------------------------------------------------------------------------


def _load_cursor(text: str | None) -> dict:
    try:
        cursor = json.loads(text) if text else {}
    except ValueError:
        cursor = {}
    if not isinstance(cursor, dict) or cursor.get("v") != 1:
        cursor = {"v": 1}
    cursor.setdefault("requested", {})
    cursor.setdefault("probe", None)
    return cursor


def evaluate_sync(instance: dg.DagsterInstance, target: SyncTarget, cursor_text: str | None, now: float,
                  logger: logging.Logger | None = None) -> dg.SensorResult:
    """One sensor tick: request a probe when one is due, and a re-export for each changed day."""
    logger = logger or log
    pipeline = target.pipeline
    window = target.window
    cursor = _load_cursor(cursor_text)
    today = dt.datetime.fromtimestamp(now, target.tz).date()
    exported = exported_days(instance, target, today)
    due = due_days(exported, now, window)
    probe = latest_probe(instance, pipeline)
    probing, syncing = _in_flight(instance, pipeline)
    requests: list[dg.RunRequest] = []
    requested = cursor["requested"]

    if probe is not None:
        for change in changes(exported, due, probe):
            day = change.day.isoformat()
            run_key = f"sync:{pipeline.name}:{day}:{change.source.token()}:{probe.run_id[:8]}"
            if requested.get(day) == run_key or day in syncing:
                continue
            requests.append(_sync_request(target, exported[change.day], change, run_key))
            requested[day] = run_key
            logger.info(f"{pipeline.name}: {day} changed in Mixpanel ({change.reason}); requesting a re-export")

    interval = window.probe_interval_hours * 3600
    probe_stale = probe is None or now - probe.started_at >= interval
    if due and probe_stale and not probing:
        run_key = f"probe:{pipeline.name}:{int(now // interval)}"
        if cursor["probe"] != run_key:
            requests.append(_probe_request(pipeline, due[0], due[-1], run_key))
            cursor["probe"] = run_key
            logger.info(f"{pipeline.name}: probing Mixpanel for {len(due)} days {due[0]}..{due[-1]}")

    # Forget days that left the window, so the cursor stays small.
    cursor["requested"] = {d: k for d, k in requested.items() if dt.date.fromisoformat(d) in exported}
    skip = None
    if not requests:
        skip = _skip_reason(exported, due, probe, probing, now, interval)
    return dg.SensorResult(run_requests=requests, cursor=json.dumps(cursor, sort_keys=True), skip_reason=skip)


def _sync_request(target: SyncTarget, day: ExportedDay, change, run_key: str) -> dg.RunRequest:
    tags = {
        SYNC_TAG: "true",
        SYNC_DAY_TAG: day.day.isoformat(),
        SYNC_REASON_TAG: change.reason,
        SYNC_FINGERPRINT_TAG: change.source.token(),
        EXPORTED_FINGERPRINT_TAG: change.exported.token(),
    }
    if len(day.partition_keys) == 1:
        return dg.RunRequest(run_key=run_key, job_name=job_name(target.pipeline),
                             partition_key=day.partition_keys[0], tags=tags)
    # An hourly day re-exports as one run over its hours: one Export API query, not 24.
    tags["dagster/asset_partition_range_start"] = day.partition_keys[0]
    tags["dagster/asset_partition_range_end"] = day.partition_keys[-1]
    return dg.RunRequest(run_key=run_key, job_name=job_name(target.pipeline), tags=tags)


def _probe_request(pipeline: PipelineConfig, first: dt.date, last: dt.date, run_key: str) -> dg.RunRequest:
    return dg.RunRequest(
        run_key=run_key,
        job_name=probe_job_name(pipeline),
        run_config={"ops": {probe_op_name(pipeline): {"config": {"first_day": first.isoformat(),
                                                                 "last_day": last.isoformat()}}}},
        tags={PROBE_TAG: pipeline.name},
    )


def _skip_reason(exported: Mapping[dt.date, ExportedDay], due, probe: Probe | None, probing: bool,
                 now: float, interval: float) -> str:
    incomplete = sum(1 for d in exported.values() if d.fingerprint is None)
    parts = [f"{len(exported)} exported days in the sync window, {len(due)} due for a check"]
    if incomplete:
        parts.append(f"{incomplete} with partitions never exported (backfill them to sync them)")
    if probing:
        parts.append("a probe run is in progress")
    elif probe is not None:
        parts.append(f"newest probe {(now - probe.started_at) / 3600:.1f} h old, every change requested")
    return "; ".join(parts)


# --- Dagster definitions --------------------------------------------------------------------


class ProbeConfig(dg.Config):
    """The days to probe (project-local dates, inclusive); the sensor fills them in."""

    first_day: str
    last_day: str


def probe_job(pipeline: PipelineConfig, config: PipelinesFile, source_key: str = SOURCE_RESOURCE_KEY,
              source: dg.ConfigurableResource | None = None) -> dg.JobDefinition:
    """`source`: the project's source resource, bound to the job. Definitions rebuilds a sensor whose
    job still lacks a resource, and Dagster 1.13's rebuild passes `owners=[]`: a BetaWarning about
    'owners', a parameter we never set, on every load. A job with its resource needs no rebuild."""
    project = config.project
    events_key = source_keys(project, source_key)["events"]

    @dg.op(name=probe_op_name(pipeline), pool=project_pool(project), required_resource_keys={source_key},
           description=f"Fingerprint days of Mixpanel project {project.id} as pipeline {pipeline.name!r} exports them.")
    def probe(context: dg.OpExecutionContext, config: ProbeConfig) -> None:
        mixpanel: MixpanelSourceResource = getattr(context.resources, source_key)
        first, last = dt.date.fromisoformat(config.first_day), dt.date.fromisoformat(config.last_day)
        if last < first:
            raise dg.Failure(f"sync probe of pipeline {pipeline.name!r}: last_day {last} is before first_day {first}",
                             allow_retries=False)
        source = mixpanel.open(context.log)
        try:
            with source_failures_to_dagster():
                result = probe_source(source, pipeline, project, first, last, context.log,
                                      workers=mixpanel.export_workers, staging_dir=mixpanel.staging_dir,
                                      suppressed_distinct_ids=suppressed_distinct_ids(mixpanel.state_path))
        finally:
            source.close()
        context.log.info(f"probed {len(result.fingerprints)} days with {result.queries} source queries, "
                         f"{result.lines} lines")
        context.log_event(dg.AssetObservation(
            asset_key=events_key,
            description=f"Fingerprints of {first}..{last} as pipeline {pipeline.name} exports them (data sync).",
            metadata={
                PIPELINE_KEY: pipeline.name,
                PROBE_FINGERPRINTS_KEY: dg.MetadataValue.json({d: f.token() for d, f in result.fingerprints.items()}),
                PROBE_STARTED_KEY: dg.MetadataValue.timestamp(result.started_at),
                "first_day": first.isoformat(),
                "last_day": last.isoformat(),
                "source_queries": result.queries,
                "lines_read": result.lines,
                "bad_lines": result.bad_lines,
            },
        ))

    @dg.job(name=probe_job_name(pipeline), tags={PROBE_TAG: pipeline.name, "mixpanel/project": str(project.id),
                                                "mixpanel/pipeline": pipeline.name},
            resource_defs={source_key: source} if source is not None else None,
            description=(f"Data sync of {pipeline.name}: ask Mixpanel for the current fingerprint of exported days "
                         "(one Export API query, no rows kept). Started by the sync sensor."))
    def _job():
        probe()

    return _job


def sync_target(pipeline: PipelineConfig, config: PipelinesFile) -> SyncTarget:
    return SyncTarget(pipeline, events_partitions_def(pipeline, config.project), config.project.timezone)


def sync_sensor(pipeline: PipelineConfig, config: PipelinesFile, export_job, probe: dg.JobDefinition) -> dg.SensorDefinition:
    target = sync_target(pipeline, config)
    window = pipeline.effective_sync_window
    age = "any age" if window.max_age_days is None else f"at most {window.max_age_days} days old"

    @dg.sensor(
        name=sync_sensor_name(pipeline),
        jobs=[export_job, probe],
        minimum_interval_seconds=SENSOR_INTERVAL_SECONDS,
        default_status=dg.DefaultSensorStatus.STOPPED,
        description=(
            f"Data sync of {pipeline.name}: every {window.probe_interval_hours:g} h a probe run fingerprints the "
            f"exported days ({age}, exported at least {window.min_age_hours:g} h ago) in Mixpanel with one Export API "
            "query; each day whose fingerprint changed (late or back-dated events, deletions) is re-exported."
        ),
    )
    def _sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult:
        return evaluate_sync(context.instance, target, context.cursor, time.time(), context.log)

    return _sensor
