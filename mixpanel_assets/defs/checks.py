"""Asset checks: what each destination holds, compared with what was exported.

Per events asset, three partitioned checks, evaluated for every partition an export run writes
(they are part of the pipeline's job) and on demand from the partition's page:

* `row_count_matches_source`: the window's rows in the destination equal the source's
  deduplicated count recorded at export (`dagster/partition_row_count`), minus rows a GDPR
  deletion removed since; a folder whose part files disagree with its manifest fails too.
* `no_duplicate_dedup_keys`: no (event_name, distinct_id, time, insert_id) is stored twice.
* `schema_matches_mixpanel`: the seven columns of mp_master_event, in order, with Mixpanel's types.

Per people / identity asset, unpartitioned: `row_count_matches_export`, `distinct_id_unique`,
`schema_matches_mixpanel`.

How it is proved (metadata `method`): warehouses answer with pushed-down SQL over the stored rows
("read_back"). Object stores, by default, from the folder's manifest and one listing of it
("manifest", destinations/objects/at_rest.py): every part at rest has the size and store checksum
recorded when it was written, no other part file is there, and the manifest's counts add up;
duplicates were removed by staging before the parts were written. The pipeline's `checks`
settings ask for the deep read-back instead (every part downloaded and re-parsed), always or for a
pseudo-random share of evaluations (`read_back_share`: a hash of run id and partition key).

Partitioned checks and multi-partition runs: Dagster attaches a check's result to a partition
only when the run has a single partition key, but an hourly day is exported as one run over 24
partitions. So the events checks record one evaluation per partition themselves, each pointing at
that partition's materialization, which is how the UI shows them on every partition either way.
"""


import hashlib
import json
import warnings

import dagster as dg

from mixpanel_assets.config import PipelineConfig, PipelinesFile
from mixpanel_assets.defs.partitions import PartitionWindow, events_partitions_def, windows_for_keys
from mixpanel_assets.destinations.base import Destination
from mixpanel_assets.destinations.io_managers import io_manager_key, open_destination
from mixpanel_assets.schema import DEDUP_KEY, EVENT_COLUMNS, EVENTS_TABLE, IDENTITY_TABLE, PEOPLE_TABLE, columns

ROW_COUNT = "row_count_matches_source"
NO_DUPLICATES = "no_duplicate_dedup_keys"
SCHEMA = "schema_matches_mixpanel"
TABLE_ROW_COUNT = "row_count_matches_export"
UNIQUE_IDS = "distinct_id_unique"
GDPR_REMOVED_KEY = "mixpanel/gdpr_rows_removed"  # observation metadata written by gdpr.py

_DESCRIPTIONS = {
    ROW_COUNT: "Rows of the partition's window in the destination equal the source's deduplicated count at export "
               "(less rows removed by GDPR deletions since).",
    NO_DUPLICATES: f"No Mixpanel dedup key ({', '.join(DEDUP_KEY)}) is stored more than once.",
    SCHEMA: "The columns and types of Mixpanel's table, in Mixpanel's order.",
    TABLE_ROW_COUNT: "Rows in the destination equal the rows exported (less rows removed by GDPR deletions since).",
    UNIQUE_IDS: "Every distinct_id appears once.",
}


def _target(record: dg.EventLogRecord | None):
    """Point an evaluation at the materialization it checked, so the UI shows it as current.

    Dagster fills this in only for results of single-partition runs; our evaluations are per
    partition of multi-partition runs, and the target's type has no public constructor. Its
    serialised form is the one Dagster persists in every event log (and so must keep reading),
    so we build it from that form with the public `dg.deserialize_value`, never from Dagster's
    private modules. test_checks asserts the partitions read as current.
    """
    if record is None:
        return None
    return dg.deserialize_value(json.dumps({
        "__class__": "AssetCheckEvaluationTargetMaterializationData",
        "run_id": record.run_id, "storage_id": record.storage_id, "timestamp": record.timestamp,
    }))


def _latest_by_partition(instance: dg.DagsterInstance, key: dg.AssetKey, partitions: list[str]) -> dict[str, dg.EventLogRecord]:
    ids = instance.get_latest_storage_id_by_partition(key, dg.DagsterEventType.ASSET_MATERIALIZATION, set(partitions))
    if not ids:
        return {}
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=key, storage_ids=list(ids.values())), limit=len(ids)
    ).records
    return {r.partition_key: r for r in records}


def _gdpr_removed(instance: dg.DagsterInstance, key: dg.AssetKey, after: dict[str | None, int]) -> dict[str | None, int]:
    """Rows removed by GDPR deletions after each partition's (or the table's) latest materialization."""
    if not after:
        return {}
    partitions = [p for p in after if p is not None]
    records = instance.fetch_observations(
        dg.AssetRecordsFilter(asset_key=key, asset_partitions=partitions or None,
                              after_storage_id=min(after.values())),
        limit=10_000,
    ).records
    removed: dict[str | None, int] = {}
    for record in records:
        partition = record.partition_key
        entry = record.asset_observation.metadata.get(GDPR_REMOVED_KEY) if record.asset_observation else None
        if entry is None or partition not in after or record.storage_id <= after[partition]:
            continue
        removed[partition] = removed.get(partition, 0) + int(entry.value)
    return removed


def _schema_result(columns: list[tuple[str, str]], expected) -> tuple[bool, dict]:
    expected = [list(c) for c in expected]
    found = [list(c) for c in columns]
    return found == expected, {"expected_columns": dg.MetadataValue.json(expected),
                               "found_columns": dg.MetadataValue.json(found)}


def reads_back(settings, run_id: str | None, partition_key: str | None) -> bool:
    """Whether this evaluation reads the rows back: always with `read_back`, else for a share of
    evaluations picked by a hash of the run and the partition (stable within a run, different
    across runs, so repeated runs end up reading back different partitions)."""
    if settings.read_back:
        return True
    if settings.read_back_share <= 0:
        return False
    digest = hashlib.sha256(f"{run_id or ''}|{partition_key or ''}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < settings.read_back_share


def _method(readback) -> dict:
    return {"method": readback.method, **({"method_note": readback.note} if readback.note else {})}


def events_checks(pipeline: PipelineConfig, config: PipelinesFile) -> dg.AssetChecksDefinition:
    partitions_def = events_partitions_def(pipeline, config.project)
    key = dg.AssetKey([pipeline.name, EVENTS_TABLE])
    specs = [dg.AssetCheckSpec(name, asset=key, partitions_def=partitions_def, description=_DESCRIPTIONS[name])
             for name in (ROW_COUNT, NO_DUPLICATES, SCHEMA)]

    @dg.multi_asset_check(name=f"{pipeline.name}_mp_master_event_checks", specs=specs, can_subset=True,
                          required_resource_keys={io_manager_key(pipeline)},
                          description=f"Check {pipeline.name}'s partitions in {pipeline.destination.describe()}.")
    def _checks(context: dg.AssetCheckExecutionContext):
        selected = sorted(k.name for k in context.selected_asset_check_keys)
        keys = list(context.partition_keys)
        windows = windows_for_keys(partitions_def, keys, pipeline.frequency)
        instance = context.instance
        materializations = _latest_by_partition(instance, key, keys)
        removed = _gdpr_removed(instance, key, {k: r.storage_id for k, r in materializations.items()})
        destination = open_destination(context, pipeline)
        try:
            for window in windows:
                record = materializations.get(window.partition_key)
                read_back = reads_back(pipeline.checks, context.run.run_id, window.partition_key)
                for name, passed, severity, description, metadata in _evaluate_window(
                        destination, window, record, removed.get(window.partition_key, 0), selected, read_back):
                    context.op_execution_context.log_event(dg.AssetCheckEvaluation(
                        asset_key=key, check_name=name, passed=passed, metadata=metadata, severity=severity,
                        description=description, partition=window.partition_key,
                        target_materialization_data=_target(record),
                    ))
        finally:
            destination.close()
        # Every result was recorded above, on its partition. An AssetCheckResult would also tell
        # Dagster that its check ran, by an empty Output of the check's op output; without one,
        # Dagster logs "did not yield or return expected outputs", which reads as skipped checks.
        # So each selected check says it ran, the way an AssetCheckResult does.
        for output_name in sorted(context.op_execution_context.selected_output_names):
            yield dg.Output(None, output_name=output_name)

    return _checks


def _evaluate_window(destination: Destination, window: PartitionWindow, record: dg.EventLogRecord | None,
                     gdpr_removed: int, selected: list[str], read_back: bool = False):
    """(check name, passed, severity, description, metadata) for each selected check of one window."""
    try:
        readback = destination.check_event_window(window, read_back)
    except NotImplementedError as exc:
        # A destination whose read-back is not written yet: say so on the partition, as a warning.
        for name in selected:
            yield name, False, dg.AssetCheckSeverity.WARN, str(exc), {}
        return
    location = {"location": readback.location, **_method(readback)}
    for name in selected:
        if name == ROW_COUNT:
            exported = record.asset_materialization.metadata.get("dagster/partition_row_count") if record else None
            if exported is None:
                yield (name, False, dg.AssetCheckSeverity.ERROR,
                       f"partition {window.partition_key} has no export record to compare with",
                       {**location, "destination_rows": readback.rows})
                continue
            expected = int(exported.value) - gdpr_removed
            passed = readback.rows == expected and not readback.problems
            description = None if passed else (
                f"{readback.rows} rows in the destination, {expected} expected"
                + (f"; {'; '.join(readback.problems)}" if readback.problems else ""))
            yield name, passed, dg.AssetCheckSeverity.ERROR, description, {
                **location, "destination_rows": readback.rows, "source_rows": int(exported.value),
                "gdpr_rows_removed": gdpr_removed, "problems": dg.MetadataValue.json(readback.problems)}
        elif name == NO_DUPLICATES:
            passed = readback.duplicate_keys == 0
            yield name, passed, dg.AssetCheckSeverity.ERROR, None if passed else (
                f"{readback.duplicate_keys} dedup keys stored more than once ({readback.duplicate_rows} extra rows)"), {
                **location, "duplicate_keys": readback.duplicate_keys, "duplicate_rows": readback.duplicate_rows}
        elif name == SCHEMA:
            passed, metadata = _schema_result(readback.columns, EVENT_COLUMNS)
            yield name, passed, dg.AssetCheckSeverity.ERROR, None if passed else "columns differ from mp_master_event's", {
                **location, **metadata}


def table_checks(pipeline: PipelineConfig, table: str) -> dg.AssetChecksDefinition:
    key = dg.AssetKey([pipeline.name, table])
    specs = [dg.AssetCheckSpec(name, asset=key, description=_DESCRIPTIONS[name])
             for name in (TABLE_ROW_COUNT, UNIQUE_IDS, SCHEMA)]

    @dg.multi_asset_check(name=f"{pipeline.name}_{table}_checks", specs=specs, can_subset=True,
                          required_resource_keys={io_manager_key(pipeline)},
                          description=f"Check {pipeline.name}'s {table} in {pipeline.destination.describe()}.")
    def _checks(context: dg.AssetCheckExecutionContext):
        selected = sorted(k.name for k in context.selected_asset_check_keys)
        instance = context.instance
        latest = instance.fetch_materializations(key, limit=1).records
        record = latest[0] if latest else None
        removed = _gdpr_removed(instance, key, {None: record.storage_id} if record else {}).get(None, 0)
        destination = open_destination(context, pipeline)
        try:
            readback = destination.check_table(table, reads_back(pipeline.checks, context.run.run_id, None))
        except NotImplementedError as exc:
            for name in selected:
                yield dg.AssetCheckResult(check_name=name, passed=False, severity=dg.AssetCheckSeverity.WARN,
                                          description=str(exc))
            return
        finally:
            destination.close()
        location = {"location": readback.location, **_method(readback)}
        for name in selected:
            if name == TABLE_ROW_COUNT:
                exported = record.asset_materialization.metadata.get("dagster/row_count") if record else None
                expected = None if exported is None else int(exported.value) - removed
                passed = expected is not None and readback.rows == expected and not readback.problems
                yield dg.AssetCheckResult(
                    check_name=name, passed=passed,
                    description=None if passed else f"{readback.rows} rows in the destination, {expected} expected"
                    + (f"; {'; '.join(readback.problems)}" if readback.problems else ""),
                    metadata={**location, "destination_rows": readback.rows, "gdpr_rows_removed": removed,
                              "exported_rows": int(exported.value) if exported is not None else -1,
                              "problems": dg.MetadataValue.json(readback.problems)})
            elif name == UNIQUE_IDS:
                passed = readback.duplicate_ids == 0
                yield dg.AssetCheckResult(
                    check_name=name, passed=passed,
                    description=None if passed else f"{readback.duplicate_ids} distinct_id values appear more than once",
                    metadata={**location, "duplicate_distinct_ids": readback.duplicate_ids})
            elif name == SCHEMA:
                passed, metadata = _schema_result(readback.columns, columns(table))
                yield dg.AssetCheckResult(check_name=name, passed=passed, metadata={**location, **metadata},
                                          description=None if passed else f"columns differ from {table}'s")

    return _checks


def pipeline_checks(config: PipelinesFile) -> list[dg.AssetChecksDefinition]:
    checks = []
    with warnings.catch_warnings():
        # Partitioned asset checks are a preview feature of Dagster 1.13; they are what puts a
        # check's result on each partition, so we use them knowingly.
        warnings.filterwarnings("ignore", category=dg.PreviewWarning)
        for pipeline in config.pipelines:
            if pipeline.data_source == "events":
                checks.append(events_checks(pipeline, config))
            else:
                table = PEOPLE_TABLE if pipeline.data_source == "people" else IDENTITY_TABLE
                checks.append(table_checks(pipeline, table))
    return checks
