"""Object-store destinations (local folder, S3, GCS, Azure Blob) laid out exactly like Mixpanel's bucket.

    <root>/[<prefix>/]<project_id>/mp_master_event/YYYY/MM/DD/      daily windows
    <root>/[<prefix>/]<project_id>/mp_master_event/YYYY/MM/DD/HH/   hourly windows
    <root>/[<prefix>/]<project_id>/mp_people_data/
    <root>/[<prefix>/]<project_id>/mp_identity_mappings_data/

Replacing a folder follows one protocol on every store, so readers never lose data:
1. upload the new part files (names derive from content, so they differ from the old ones
   unless the content is the same),
2. write `manifest.json` listing exactly the new parts (readers that honour it switch here),
3. delete the folder's stale parts,
4. write the empty `complete` marker (as Mixpanel's raw pipelines did).
A failure before step 2 leaves the previous parts and manifest untouched.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from pathlib import Path

from mixpanel_assets.destinations.base import (
    EVENTS_TABLE,
    Destination,
    DestinationError,
    WriteResult,
    utc_now_iso,
)
from mixpanel_assets.parts import PartFile
from mixpanel_assets.partitions import PartitionWindow
from mixpanel_assets.staging import StagedRows, StagedTable, StagedWindow

MANIFEST = "manifest.json"
COMPLETE = "complete"


class Bucket(ABC):
    """The few blob operations the export needs; one small adapter per store."""

    @abstractmethod
    def uri(self, key: str) -> str: ...

    @abstractmethod
    def upload_file(self, key: str, path: Path) -> None:
        """Upload a local file; large files go in parts (multipart/blocks/resumable)."""

    @abstractmethod
    def put_bytes(self, key: str, data: bytes) -> None: ...

    @abstractmethod
    def get_bytes(self, key: str) -> bytes | None:
        """The object's content, or None when it does not exist."""

    @abstractmethod
    def list_files(self, folder: str) -> list[str]:
        """Keys of the objects directly inside `folder` (which ends with '/'), not deeper."""

    @abstractmethod
    def delete(self, keys: list[str]) -> None: ...

    def describe(self) -> str:
        return self.uri("")


class ObjectStoreDestination(Destination):
    def __init__(self, pipeline: str, project_id: int, bucket: Bucket, *, prefix: str = "", fmt: str = "json",
                 compression: str = "gzip", max_file_mb: int = 256, workers: int = 1, log=None):
        super().__init__(pipeline, project_id, log)
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.fmt = fmt
        self.compression = compression
        self.max_bytes = max_file_mb << 20
        self.workers = workers

    def describe(self) -> str:
        return self.bucket.describe()

    def table_folder(self, table: str) -> str:
        parts = [p for p in (self.prefix, str(self.project_id), table) if p]
        return "/".join(parts) + "/"

    def window_folder(self, window: PartitionWindow) -> str:
        return self.table_folder(EVENTS_TABLE) + "/".join(window.folder_parts()) + "/"

    def write_event_window(self, staged: StagedWindow, window: PartitionWindow, work_dir: Path) -> WriteResult:
        manifest = {
            "partition_key": window.partition_key,
            "window_start": window.start.isoformat(),
            "window_end": window.end.isoformat(),
            "fingerprint": staged.fingerprint.token(),
        }
        return self._replace_folder(self.window_folder(window), staged, EVENTS_TABLE, work_dir, manifest,
                                    f"partition {window.partition_key}")

    def write_table(self, staged: StagedTable, work_dir: Path) -> WriteResult:
        return self._replace_folder(self.table_folder(staged.table), staged, staged.table, work_dir, {}, staged.table)

    def _replace_folder(self, folder: str, staged: StagedRows, table: str, work_dir: Path, extra: dict,
                        what: str) -> WriteResult:
        parts = staged.write_parts(work_dir, fmt=self.fmt, compression=self.compression, max_bytes=self.max_bytes,
                                   workers=self.workers, table=table)
        try:
            return self._swap(folder, parts, table, extra)
        except DestinationError:
            raise
        except Exception as exc:
            raise DestinationError(
                f"pipeline {self.pipeline!r}: writing {what} to {self.bucket.uri(folder)} failed: "
                f"{type(exc).__name__}: {exc}; the previous data there is unchanged"
            ) from exc
        finally:
            for part in parts:
                part.path.unlink(missing_ok=True)

    def _swap(self, folder: str, parts: list[PartFile], table: str, extra: dict) -> WriteResult:
        # `complete` goes first and comes back last: a folder that has it holds exactly the
        # manifest's parts, so readers that glob part-* files can check it. If an upload fails,
        # the new parts are removed again and the folder is put back as it was.
        was_complete = self.bucket.get_bytes(folder + COMPLETE) is not None
        previous = self.read_manifest(folder) or {}
        old_keys = {folder + p["name"] for p in previous.get("parts", [])}
        if was_complete:
            self.bucket.delete([folder + COMPLETE])
        new_keys = []
        try:
            for part in parts:
                key = folder + part.name
                self.bucket.upload_file(key, part.path)
                new_keys.append(key)
        except Exception:
            self._undo_uploads(folder, [k for k in new_keys if k not in old_keys], was_complete)
            raise
        manifest = {
            "table": table,
            "project_id": self.project_id,
            "pipeline": self.pipeline,
            "format": self.fmt,
            "compression": self.compression,
            "rows": sum(p.rows for p in parts),
            "parts": [{"name": p.name, "rows": p.rows, "bytes": p.size} for p in parts],
            "exported_at": utc_now_iso(),
            **extra,
        }
        self.bucket.put_bytes(folder + MANIFEST, json.dumps(manifest, indent=1).encode())
        keep = set(new_keys) | {folder + MANIFEST, folder + COMPLETE}
        stale = [k for k in self.bucket.list_files(folder) if k not in keep]
        if stale:
            self.bucket.delete(stale)
        self.bucket.put_bytes(folder + COMPLETE, b"")
        return WriteResult(
            location=self.bucket.uri(folder),
            rows=manifest["rows"],
            bytes=sum(p.size for p in parts),
            uris=[self.bucket.uri(k) for k in new_keys],
            removed=len(stale),
        )

    def _undo_uploads(self, folder: str, keys: list[str], restore_complete: bool) -> None:
        """Best effort only: the upload error that brought us here is the one to report."""
        try:
            if keys:
                self.bucket.delete(keys)
            if restore_complete:
                self.bucket.put_bytes(folder + COMPLETE, b"")
        except Exception as exc:  # noqa: BLE001
            self.log.warning(f"could not remove the parts uploaded to {self.bucket.uri(folder)} before the failure: {exc}")

    def read_manifest(self, folder: str) -> dict | None:
        data = self.bucket.get_bytes(folder + MANIFEST)
        return json.loads(data) if data is not None else None
