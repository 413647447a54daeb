"""Dagster IO managers: hand a staged export to its destination and record where it went.

The assets stage data (staging.py); the IO manager of the pipeline's destination loads it. One
base class does the Dagster side (windows, metadata, cleanup); each destination only says how
to build its `Destination` from config. Staged files are removed once the load is done, whether
it succeeded or not.
"""

from __future__ import annotations

import tempfile
from abc import abstractmethod
from pathlib import Path

import dagster as dg

from mixpanel_assets.destinations.base import Destination, WriteResult
from mixpanel_assets.partitions import PartitionWindow
from mixpanel_assets.staging import StagedEvents, StagedTable

MAX_URIS_IN_METADATA = 20


class MixpanelIOManager(dg.ConfigurableIOManager):
    pipeline: str
    project_id: int
    workers: int = 2

    @abstractmethod
    def destination(self, log) -> Destination: ...

    def handle_output(self, context: dg.OutputContext, obj) -> None:
        if obj is None:
            return
        destination = self.destination(context.log)
        work_dir = Path(tempfile.mkdtemp(prefix="mp-parts-"))
        try:
            if isinstance(obj, StagedEvents):
                results = self._write_events(context, destination, obj, work_dir)
            elif isinstance(obj, StagedTable):
                results = [destination.write_table(obj, work_dir)]
            else:
                raise TypeError(f"{type(self).__name__} got {type(obj).__name__}; expected staged Mixpanel data")
        finally:
            obj.cleanup()
            destination.close()
            import shutil

            shutil.rmtree(work_dir, ignore_errors=True)
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

    def _write_events(self, context, destination: Destination, staged: StagedEvents, work_dir: Path) -> list[WriteResult]:
        results = []
        for window in staged.windows:
            info = window.info
            if not isinstance(info, PartitionWindow):
                raise TypeError("staged window without its partition window")
            result = destination.write_event_window(window, info, work_dir)
            context.log.info(
                f"{self.pipeline}: partition {info.partition_key}: {result.rows} rows -> {result.location}"
            )
            results.append(result)
        return results

    def load_input(self, context: dg.InputContext):
        raise NotImplementedError(
            f"{type(self).__name__} stores Mixpanel exports for other tools to read; read them from the destination "
            "(folders, tables) instead of as a Dagster input"
        )


class LocalFolderIOManager(MixpanelIOManager):
    """Mixpanel's bucket layout in a local folder."""

    path: str
    prefix: str = ""
    format: str = "json"
    compression: str = "gzip"
    max_file_mb: int = 256

    def destination(self, log) -> Destination:
        from mixpanel_assets.destinations.local import LocalBucket
        from mixpanel_assets.destinations.object_store import ObjectStoreDestination

        return ObjectStoreDestination(
            self.pipeline, self.project_id, LocalBucket(self.path), prefix=self.prefix, fmt=self.format,
            compression=self.compression, max_file_mb=self.max_file_mb, workers=self.workers, log=log,
        )


class DuckDBIOManager(MixpanelIOManager):
    """The three tables in an embedded DuckDB database."""

    path: str
    schema_name: str = "main"

    def destination(self, log) -> Destination:
        from mixpanel_assets.destinations.duckdb import DuckDBDestination

        return DuckDBDestination(self.pipeline, self.project_id, self.path, self.schema_name, self.workers, log)
