"""GDPR / CCPA deletion: remove users from every destination of the project, with an audit record.

Mixpanel deletes a user's data in Mixpanel only; exported copies stay (MIXPANEL_SPEC.md 8), so
`gdpr_deletion_job` does it here:

1. Take the distinct_ids to delete (run config, or a file with one per line) and, by default,
   expand each to its whole identity cluster (the user id and every device merged into it, as
   resolved from the identity links of the exported events, identity.py): deleting a user must
   not leave their anonymous events behind.
2. Add the ids to the suppression register (state folder), so a sync or backfill re-export does
   not bring them back before Mixpanel itself has deleted them (staging drops them on export).
3. For every pipeline of pipelines.yaml: remove the users' events from every exported partition,
   their profiles and their identity mappings, through each destination's own safe protocol
   (object stores rewrite only the affected part files and swap them in like a write; warehouses
   delete in one transaction), and drop their identity links from the state folder.
4. Write the audit record (per pipeline, table and partition: rows removed) to
   `<state>/gdpr_audit/<time>-<run>.json` and as the step's metadata, and record each partition's
   removed rows as an observation of that partition, which the row-count checks take into account.

Logs and metadata carry counts only; the ids appear in the audit file and the register, which
are the proof that the request was honoured. Properties of the deleted users are never read into
logs, metadata or errors.
"""


import datetime as dt
import json
import os
import shutil
from collections.abc import Iterable
from pathlib import Path

import dagster as dg
import orjson
from isal import igzip

from mixpanel_assets.config import PipelineConfig, PipelinesFile, resolve_path
from mixpanel_assets.defs.checks import GDPR_REMOVED_KEY
from mixpanel_assets.defs.gdpr_register import add_to_register
from mixpanel_assets.defs.instance import SOURCE_RESOURCE_KEY, qualified
from mixpanel_assets.defs.partitions import events_partitions_def, windows_for_keys
from mixpanel_assets.defs.resources import state_store
from mixpanel_assets.destinations.base import Destination, Removal
from mixpanel_assets.destinations.io_managers import io_manager_key, open_destination
from mixpanel_assets.schema import EVENTS_TABLE, IDENTITY_TABLE, PEOPLE_TABLE
from mixpanel_assets.staging.scratch import scratch_dir
from mixpanel_assets.transform.link_store import StateStore

JOB_NAME = "gdpr_deletion_job"
OP_NAME = "gdpr_delete_users"
AUDIT_DIR = "gdpr_audit"
TABLES = {"people": PEOPLE_TABLE, "identity": IDENTITY_TABLE}


class GdprDeletionConfig(dg.Config):
    """Who to delete. Give `distinct_ids`, or `ids_file` (one distinct_id per line; relative paths
    are relative to pipelines.yaml), or both."""

    distinct_ids: list[str] = []
    ids_file: str | None = None
    expand_clusters: bool = True  # also delete every id merged with them (devices, aliases)
    dry_run: bool = False  # count what would be removed, change nothing
    # Events are looked for in the partitions this Dagster instance exported. True looks in every
    # partition of each pipeline's date range instead (one manifest read per partition on object
    # stores): for destinations written by an instance whose history is gone.
    scan_all_partitions: bool = False


def read_ids_file(path: Path) -> list[str]:
    """One distinct_id per line; blank lines and lines starting with '#' are skipped."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise dg.Failure(f"GDPR deletion: ids_file {path} does not exist", allow_retries=False) from None
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


# --- identity clusters ------------------------------------------------------------------------


def expand_clusters(distinct_ids: Iterable[str], state: StateStore, event_pipelines: list[str], system: str,
                    work_dir: Path) -> set[str]:
    """The ids plus every id in their identity clusters, from the stored identity links.

    Two passes over the resolved mapping (which can hold millions of rows, read from disk): the
    canonical id of each requested id, then every id that resolves to one of those.
    """
    from mixpanel_assets.transform.identity import resolve_link_files

    requested = set(distinct_ids)
    resolution = resolve_link_files(state.link_files(event_pipelines), system, work_dir)
    canonical = set(requested)
    for line in resolution.lines():
        row = orjson.loads(line)
        if row["distinct_id"] in requested:
            canonical.add(row["resolved_distinct_id"])
    cluster = set(canonical)
    for line in resolution.lines():
        row = orjson.loads(line)
        if row["resolved_distinct_id"] in canonical:
            cluster.add(row["distinct_id"])
    return cluster


def purge_links(state: StateStore, event_pipelines: list[str], distinct_ids: set[str]) -> int:
    """Drop every stored identity link that mentions one of the ids; returns how many.

    Otherwise the next identity export would map the deleted devices to the deleted user again.
    Files are replaced atomically, like StateStore writes them.
    """
    removed = 0
    for path in state.link_files(event_pipelines):
        with igzip.open(path, "rb") as f:
            lines = f.read().splitlines()
        kept = [line for line in lines if line and not _mentions(orjson.loads(line), distinct_ids)]
        if len(kept) == len([line for line in lines if line]):
            continue
        removed += len([line for line in lines if line]) - len(kept)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with igzip.open(tmp, "wb", compresslevel=1) as f:
            for line in kept:
                f.write(line + b"\n")
        os.replace(tmp, path)
    return removed


def _mentions(link: list, ids: set[str]) -> bool:
    _, a, b, _ = link
    return a in ids or b in ids


# --- the deletion ---------------------------------------------------------------------------


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _supports_deletion(destination: Destination, pipeline: PipelineConfig) -> bool:
    method = "delete_event_rows" if pipeline.data_source == "events" else "delete_table_rows"
    return getattr(type(destination), method) is not getattr(Destination, method)


def partitions_to_clean(config: PipelinesFile, instance: dg.DagsterInstance | None) -> dict[str, list[str]]:
    """Per events pipeline, the partitions to look in: those the instance exported, or (no
    instance) every partition of the pipeline's date range up to now."""
    keys = {}
    for pipeline in config.event_pipelines:
        partitions_def = events_partitions_def(pipeline, config.project)
        if instance is None:
            keys[pipeline.name] = list(partitions_def.get_partition_keys())
        else:
            exported = instance.get_materialized_partitions(dg.AssetKey([pipeline.name, EVENTS_TABLE]))
            keys[pipeline.name] = [k for k in exported if partitions_def.has_partition_key(k)]
    return keys


def delete_everywhere(config: PipelinesFile, destinations: dict[str, Destination], distinct_ids: set[str],
                      partitions: dict[str, list[str]], work_dir: Path, dry_run: bool, log) -> list[tuple[str, Removal]]:
    """Remove the ids' rows from every pipeline's destination; (pipeline, removal) per place touched."""
    unsupported = [f"{p.name} ({type(destinations[p.name]).__name__}, {destinations[p.name].describe()})"
                   for p in config.pipelines if not _supports_deletion(destinations[p.name], p)]
    if unsupported:
        # Refuse before touching anything: half a deletion is worse than a clear error.
        raise dg.Failure(
            "GDPR deletion: these destinations cannot delete rows yet (their destination type does not implement "
            f"it): {'; '.join(unsupported)}; nothing was deleted", allow_retries=False)
    frozen = frozenset(distinct_ids)
    removals: list[tuple[str, Removal]] = []
    for pipeline in config.pipelines:
        destination = destinations[pipeline.name]
        if pipeline.data_source == "events":
            partitions_def = events_partitions_def(pipeline, config.project)
            windows = windows_for_keys(partitions_def, partitions.get(pipeline.name, []), pipeline.frequency)
            found = destination.delete_event_rows(frozen, windows, work_dir / pipeline.name, dry_run) if windows else []
        else:
            found = [destination.delete_table_rows(TABLES[pipeline.data_source], frozen, work_dir / pipeline.name,
                                                   dry_run)]
        found = [r for r in found if r.rows]
        log.info(f"{pipeline.name}: {sum(r.rows for r in found)} rows {'found' if dry_run else 'removed'} "
                 f"in {len(found)} {'partitions' if pipeline.data_source == 'events' else 'tables'} of "
                 f"{destination.describe()}")
        removals.extend((pipeline.name, r) for r in found)
    return removals


def write_audit(state_root: str | Path, record: dict) -> Path:
    directory = Path(state_root) / AUDIT_DIR
    directory.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S%fZ")
    path = directory / f"{stamp}-{record['run_id'][:8]}.json"
    path.write_text(json.dumps(record, indent=1, sort_keys=True), encoding="utf-8")
    return path


def gdpr_job(pipelines_file: PipelinesFile, base_dir: Path, key_prefix: str | None = None) -> dg.JobDefinition:
    source_key, op_name = qualified(key_prefix, SOURCE_RESOURCE_KEY), qualified(key_prefix, OP_NAME)
    io_keys = {p.name: io_manager_key(p) for p in pipelines_file.pipelines}
    event_pipelines = [p.name for p in pipelines_file.event_pipelines]
    project = pipelines_file.project

    @dg.op(name=op_name, required_resource_keys={source_key, *io_keys.values()},
           description="Remove the given users (and their identity clusters) from every destination of the project.")
    def delete_users(context: dg.OpExecutionContext, config: GdprDeletionConfig):
        requested = list(config.distinct_ids)
        if config.ids_file:
            requested += read_ids_file(resolve_path(base_dir, config.ids_file))
        requested = sorted({i for i in requested if i})
        if not requested:
            raise dg.Failure("GDPR deletion: no distinct_ids given (set distinct_ids or ids_file)", allow_retries=False)
        mixpanel = getattr(context.resources, source_key)
        state = state_store(mixpanel)
        work_dir = scratch_dir("gdpr", mixpanel.staging_dir)
        destinations = {p.name: open_destination(context, p) for p in pipelines_file.pipelines}
        record = {"run_id": context.run_id, "started_at": _now(), "dry_run": config.dry_run,
                  "project_id": project.id, "requested_distinct_ids": requested}
        try:
            ids = (expand_clusters(requested, state, event_pipelines, project.identity_merge, work_dir / "identity")
                   if config.expand_clusters else set(requested))
            record["deleted_distinct_ids"] = sorted(ids)
            context.log.info(f"{len(requested)} distinct_ids requested, {len(ids)} with their identity clusters"
                             + (" (dry run: nothing is changed)" if config.dry_run else ""))
            if not config.dry_run:
                add_to_register(state.root, ids)
            partitions = partitions_to_clean(pipelines_file, None if config.scan_all_partitions else context.instance)
            removals = delete_everywhere(pipelines_file, destinations, ids, partitions, work_dir, config.dry_run,
                                         context.log)
            links = 0 if config.dry_run else purge_links(state, event_pipelines, ids)
        except BaseException as exc:
            record["error"] = f"{type(exc).__name__}: {exc}"
            write_audit(state.root, record)
            raise
        finally:
            for destination in destinations.values():
                destination.close()
            shutil.rmtree(work_dir, ignore_errors=True)
        record["removed"] = [{"pipeline": name, "table": r.table, "partition": r.partition_key, "rows": r.rows,
                              "location": r.location} for name, r in removals]
        record["identity_links_removed"] = links
        record["finished_at"] = _now()
        audit = write_audit(state.root, record)
        if not config.dry_run:
            for name, removal in removals:
                context.log_event(dg.AssetObservation(
                    asset_key=dg.AssetKey([name, removal.table]),
                    partition=removal.partition_key if removal.table == EVENTS_TABLE else None,
                    description="Rows of users removed by a GDPR deletion",
                    metadata={GDPR_REMOVED_KEY: removal.rows, "mixpanel/gdpr_audit": str(audit)},
                ))
        totals: dict[str, int] = {}
        for name, r in removals:
            totals[f"{name}/{r.table}"] = totals.get(f"{name}/{r.table}", 0) + r.rows
        return dg.Output(None, metadata={
            "dry_run": config.dry_run,
            "distinct_ids_requested": len(requested),
            "distinct_ids_deleted": len(ids),
            "rows_removed": dg.MetadataValue.json(totals),
            "partitions_touched": sum(1 for _, r in removals if r.partition_key is not None),
            "identity_links_removed": links,
            "audit_record": dg.MetadataValue.path(str(audit)),
        })

    @dg.job(name=qualified(key_prefix, JOB_NAME), tags={"mixpanel/project": str(project.id), "mixpanel/gdpr": "true"},
            description=(f"GDPR/CCPA deletion for Mixpanel project {project.id}: remove users and their identity "
                         "clusters from every pipeline's destination, with an audit record. Launch it with run "
                         f"config: ops: {{{op_name}: {{config: {{distinct_ids: [...]}}}}}}."))
    def _job():
        delete_users()

    return _job
