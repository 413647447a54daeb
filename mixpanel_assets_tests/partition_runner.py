"""Run one partition of a pipeline in a separate process, optionally freezing it inside the destination write.

    python -m mixpanel_assets_tests.partition_runner PIPELINES_YAML JOB PARTITION DAGSTER_HOME [PAUSE_AT MARKER]

Used by test_faults.py to SIGKILL a real run at a chosen point of the write, as an out-of-memory
kill or a lost node would. The pause is the only thing added to the product's code path: at
PAUSE_AT the process writes MARKER and sleeps until it is killed. Pause points:

    before_manifest      object store: every new part uploaded, manifest.json not yet switched
    before_stale_delete  object store: manifest switched, the previous parts not yet deleted
    before_complete      object store: previous parts deleted, `complete` not yet written
    before_commit        DuckDB: DELETE + INSERT done inside the transaction, COMMIT not yet sent
"""

from __future__ import annotations

import sys
import time
from pathlib import Path


def _freeze(marker: Path) -> None:
    marker.write_text("paused")
    while True:
        time.sleep(3600)


def install_pause(point: str, marker: Path) -> None:
    from mixpanel_assets.destinations.objects.local import LocalBucket
    from mixpanel_assets.destinations.warehouses.duckdb import DuckDBDestination

    put_bytes, delete, log = LocalBucket.put_bytes, LocalBucket.delete, DuckDBDestination._log

    def paused_put_bytes(self, key, data):
        if (point == "before_manifest" and key.endswith("/manifest.json")) or (
            point == "before_complete" and key.endswith("/complete")
        ):
            _freeze(marker)
        return put_bytes(self, key, data)

    def paused_delete(self, keys):
        if point == "before_stale_delete" and any(k.rsplit("/", 1)[-1].startswith("part-") for k in keys):
            _freeze(marker)
        return delete(self, keys)

    def paused_log(self, *args, **kwargs):
        log(self, *args, **kwargs)
        if point == "before_commit":
            _freeze(marker)

    LocalBucket.put_bytes, LocalBucket.delete, DuckDBDestination._log = paused_put_bytes, paused_delete, paused_log


def main(argv: list[str]) -> int:
    config, job, partition, home = argv[:4]
    if len(argv) > 4:
        install_pause(argv[4], Path(argv[5]))
    import dagster as dg

    from mixpanel_assets.defs.build import build_definitions

    defs = build_definitions(config)
    with dg.DagsterInstance.local_temp(tempdir=home) as instance:
        result = defs.resolve_job_def(job).execute_in_process(partition_key=partition, instance=instance,
                                                              raise_on_error=False)
    return 0 if result.success else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
