"""One Dagster IO manager for every destination: it has staging write the part files the
destination asks for, hands them over, and records where they went.

The destination's config travels as the validated `destination:` block (a plain dict, paths made
absolute, secrets as env var *names*), so loading definitions reads no environment and imports no
client SDK; a run opens the destination through the registry, which reads the secrets then. The
asset checks and the GDPR job reach a destination the same way (`open_destination`). Staged data
is removed once the load is done, whether it succeeded or not, and an error the destination marks
permanent (missing bucket or dataset, rejected credentials, unset env var) fails the step without
retries: it does not go away by waiting.

Before anything is replaced, the shrink guard (`check_shrink`) compares the new version's rows with
what the destination holds now: a window or table that would lose more than the pipeline's
`max_shrink` share of its rows (default half), or all of them, is refused, unless the pipeline
allows it or the run carries the tag `mixpanel_assets/allow_shrink: true`. GDPR deletions remove
rows through `Destination.delete_*`, which never pass through here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dagster as dg

from mixpanel_assets.destinations.base import (
    EVENTS_TABLE,
    Destination,
    DestinationContext,
    DestinationError,
    WriteResult,
    is_permanent,
)
from mixpanel_assets.destinations.registry import open_destination as open_configured
from mixpanel_assets.destinations.registry import parse_destination
from mixpanel_assets.staging.scratch import scratch_folder
from mixpanel_assets.staging.stage import StagedEvents, StagedTable
from mixpanel_assets.windows import PartitionWindow

MAX_URIS_IN_METADATA = 20
ALLOW_SHRINK_TAG = "mixpanel_assets/allow_shrink"
DEFAULT_MAX_SHRINK = 0.5
# A drop of this many rows or fewer never trips the guard (unless it empties the window): a
# 3-event hour that loses 2 to a deletion is normal, and a ratio of tiny numbers says little.
SMALL_DROP = 10


class ShrinkRefused(DestinationError):
    """The new version would remove too many rows; retrying cannot change that."""

    permanent = True


def check_shrink(destination: Destination, what: str, current: int | None, new: int, max_shrink: float,
                 allowed: bool) -> None:
    """The one shrink rule: refuse to replace `current` rows by `new` when more than `max_shrink`
    of them (and more than SMALL_DROP rows) would go, or when a non-empty window would become empty."""
    if allowed or not current or new >= current or max_shrink >= 1:
        return
    lost = current - new
    if new > 0 and (lost <= SMALL_DROP or lost / current <= max_shrink):
        return
    raise ShrinkRefused(
        f"pipeline {destination.pipeline!r}: refusing to replace {what} in {destination.describe()}: it holds "
        f"{current:,} rows and the new version has {new:,} ({lost / current:.0%} fewer; this pipeline's "
        f"max_shrink allows {max_shrink:.0%}). Nothing was changed. If the source really has fewer rows now, "
        f"rerun with the run tag {ALLOW_SHRINK_TAG}=true, or raise max_shrink for the pipeline (1 turns the "
        "guard off); see docs/operations.md, 'A run refused to shrink a window'")


class DestinationIOManager(dg.ConfigurableIOManager):
    """Stores a pipeline's staged Mixpanel export in its destination (any `type`)."""

    pipeline: str
    project_id: int
    workers: int = 2
    timezone: str = "UTC"  # the project's: partition dates and clustering keys use it
    destination: dict[str, Any]  # the `destination:` block; secrets only as env var names
    max_shrink: float = DEFAULT_MAX_SHRINK  # the pipeline's shrink guard (check_shrink)

    def open(self, log=None) -> Destination:
        """The destination, opened now: clients built, secrets read from their env vars."""
        context = DestinationContext(self.pipeline, self.project_id, self.timezone, log)
        return open_configured(parse_destination(self.destination), context)

    def handle_output(self, context: dg.OutputContext, obj) -> None:
        if obj is None:
            return
        if not isinstance(obj, (StagedEvents, StagedTable)):
            raise TypeError(f"{type(self).__name__} got {type(obj).__name__}; expected staged Mixpanel data")
        try:
            destination = self.open(context.log)
            destination.run_id = context.run_id
            guard = {"max_shrink": self.max_shrink, "allow_shrink": _allows_shrink(context)}
            try:
                with scratch_folder("parts") as work_dir:
                    if isinstance(obj, StagedEvents):
                        results = [self._write_window(context, destination, w, work_dir, guard) for w in obj.windows]
                    else:
                        results = [write_staged_table(destination, obj, work_dir, self.workers, **guard)]
            finally:
                destination.close()
        except Exception as exc:
            if is_permanent(exc):
                raise dg.Failure(description=str(exc), allow_retries=False) from exc
            raise
        finally:
            obj.cleanup()
        uris = [u for r in results for u in r.uris]
        context.add_output_metadata({
            "destination": destination.describe(),
            "rows_written": sum(r.rows for r in results),
            "bytes_written": sum(r.bytes for r in results),
            "locations": dg.MetadataValue.json(sorted({r.location for r in results})[:MAX_URIS_IN_METADATA]),
            "output_uris": dg.MetadataValue.json(uris[:MAX_URIS_IN_METADATA]),
            "output_files": len(uris),
            "replaced": sum(r.removed for r in results),
        })

    def _write_window(self, context, destination: Destination, staged, work_dir: Path, guard: dict) -> WriteResult:
        result = write_staged_window(destination, staged, work_dir, self.workers, **guard)
        context.log.info(f"{self.pipeline}: partition {window_of(staged).partition_key}: {result.rows} rows -> "
                         f"{result.location}")
        return result

    def load_input(self, context: dg.InputContext):
        raise NotImplementedError(
            f"{type(self).__name__} stores Mixpanel exports for other tools to read; read them from the destination "
            "(folders, tables) instead of as a Dagster input"
        )


def _allows_shrink(context) -> bool:
    try:
        tags = context.step_context.run_tags
    except Exception:  # noqa: BLE001 - an output context built outside a run has no run tags
        return False
    return str(tags.get(ALLOW_SHRINK_TAG, "")).strip().lower() in ("true", "1", "yes")


def window_of(staged) -> PartitionWindow:
    """The partition window a staged window belongs to, given to it when it was staged."""
    window = staged.partition
    if not isinstance(window, PartitionWindow):
        raise TypeError("staged window without its partition window")
    return window


def write_staged_window(destination: Destination, staged, work_dir: Path, workers: int = 1,
                        window: PartitionWindow | None = None, max_shrink: float = DEFAULT_MAX_SHRINK,
                        allow_shrink: bool = False) -> WriteResult:
    """Check the shrink guard, have staging write the window's parts in the destination's format,
    then hand them over."""
    window = window or window_of(staged)
    check_shrink(destination, f"partition {window.partition_key}", destination.current_rows(window),
                 staged.rows, max_shrink, allow_shrink)
    fmt = destination.parts_format
    parts = staged.write_parts(work_dir, fmt=fmt.fmt, compression=fmt.compression, max_bytes=fmt.max_bytes,
                               workers=workers, table=EVENTS_TABLE)
    try:
        return destination.write_event_window(parts, window, staged.fingerprint.token())
    finally:
        for part in parts:
            part.path.unlink(missing_ok=True)


def write_staged_table(destination: Destination, staged: StagedTable, work_dir: Path, workers: int = 1,
                       max_shrink: float = DEFAULT_MAX_SHRINK, allow_shrink: bool = False) -> WriteResult:
    check_shrink(destination, staged.table, destination.current_rows(table=staged.table), staged.rows, max_shrink,
                 allow_shrink)
    fmt = destination.parts_format
    parts = staged.write_parts(work_dir, fmt=fmt.fmt, compression=fmt.compression, max_bytes=fmt.max_bytes,
                               workers=workers, table=staged.table)
    try:
        return destination.write_table(parts, staged.table, staged.digest, staged.duplicate_ids)
    finally:
        for part in parts:
            part.path.unlink(missing_ok=True)


# --- the pipeline side: resource keys, building the IO manager, opening from an op or check ---
# `pipeline` and `project` are config.py's PipelineConfig / ProjectConfig (not imported: config.py
# sits above this layer).


def io_manager_key(pipeline) -> str:
    return f"{pipeline.name}__io_manager"


def build_io_manager(pipeline, project, base_dir: Path) -> DestinationIOManager:
    destination = pipeline.destination.resolved(base_dir)
    return DestinationIOManager(
        pipeline=pipeline.name, project_id=project.id, workers=project.export_workers, timezone=project.timezone,
        max_shrink=pipeline.max_shrink, destination=destination.model_dump(mode="json", by_alias=True, exclude_none=True),
    )


def open_destination(context, pipeline) -> Destination:
    """The pipeline's destination, opened by its IO manager resource (asset checks, GDPR deletion)."""
    destination = getattr(context.resources, io_manager_key(pipeline)).open(context.log)
    destination.run_id = getattr(context, "run_id", None)  # named to a second writer (GDPR rewrites)
    return destination
