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
A failure before step 2 leaves the previous parts and manifest untouched. The whole swap runs under
the folder's lease (lease.py), so two runs of one partition never interleave their steps.

Between steps 1 and 2 one listing of the folder (`Bucket.stat_files`) proves every new part is
there with the size and the store checksum its local bytes predict; the manifest records both our
MD5 and the store's checksum per part, which is what lets the asset checks prove a folder without
downloading it (at_rest.py).
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from pathlib import Path

from mixpanel_assets.destinations.base import (
    EVENTS_TABLE,
    Destination,
    DestinationError,
    PartsFormat,
    WriteResult,
    utc_now_iso,
)
from mixpanel_assets.destinations.objects.at_rest import StoredFile, verify_uploads
from mixpanel_assets.destinations.objects.lease import (
    LEASE_TTL_S,
    LEASE_WAIT_S,
    FolderLease,
    LeaseLost,
    is_lease_key,
)
from mixpanel_assets.schema import columns
from mixpanel_assets.staging.parts import PartFile, file_md5
from mixpanel_assets.windows import PartitionWindow

MANIFEST = "manifest.json"
COMPLETE = "complete"


class Bucket(ABC):
    """The few blob operations the export needs; one small adapter per store."""

    @abstractmethod
    def uri(self, key: str) -> str: ...

    @abstractmethod
    def upload_file(self, key: str, path: Path, md5: str | None = None) -> None:
        """Upload a local file; large files go in parts (multipart/blocks/resumable). `md5` is the
        file's hex MD5 when the caller knows it (stores that keep no MD5 of a block upload get it)."""

    @abstractmethod
    def stat_files(self, folder: str) -> dict[str, StoredFile]:
        """Size and store checksum of every object directly inside `folder`, by key, from ONE
        listing of the folder (no object is read, except on the local store, whose files are hashed)."""

    def expected_checksum(self, path: Path, md5: str) -> str | None:
        """The checksum `stat_files` will list once the local file at `path` (hex MD5 `md5`) is
        uploaded by `upload_file`; None when the store's checksum does not follow from the bytes
        (then only the size is compared at write time). Called before the upload."""
        return None

    @abstractmethod
    def put_bytes(self, key: str, data: bytes) -> None: ...

    @abstractmethod
    def get_bytes(self, key: str) -> bytes | None:
        """The object's content, or None when it does not exist."""

    def create_if_absent(self, key: str, data: bytes) -> bool:
        """Write `data` only if `key` does not exist, deciding atomically on the store (the leases'
        primitive); False when it exists. Every store overrides this with its conditional write; this
        read-then-write fallback (for wrappers in tests) is not atomic."""
        if self.get_bytes(key) is not None:
            return False
        self.put_bytes(key, data)
        return True

    def download_file(self, key: str, path: Path) -> bool:
        """Stream an object into a local file (parts can be hundreds of MB: never whole in memory).

        Returns False when the object does not exist. Stores override this with their streaming
        download; this fallback, through get_bytes, is only for small objects.
        """
        data = self.get_bytes(key)
        if data is None:
            return False
        path.write_bytes(data)
        return True

    @abstractmethod
    def list_files(self, folder: str) -> list[str]:
        """Keys of the objects directly inside `folder` (which ends with '/'), not deeper."""

    @abstractmethod
    def delete(self, keys: list[str]) -> None: ...

    def describe(self) -> str:
        return self.uri("")


class ObjectStoreDestination(Destination):
    def __init__(self, pipeline: str, project_id: int, bucket: Bucket, *, prefix: str = "", fmt: str = "json",
                 compression: str = "gzip", max_file_mb: int = 256, log=None):
        super().__init__(pipeline, project_id, log)
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.fmt = fmt
        self.compression = compression
        self.max_bytes = max_file_mb << 20
        self.lease_ttl, self.lease_wait = LEASE_TTL_S, LEASE_WAIT_S

    @classmethod
    def from_config(cls, config, context, bucket: Bucket) -> ObjectStoreDestination:
        """From an ObjectStoreConfig (configs.py) and the run's DestinationContext."""
        return cls(context.pipeline, context.project_id, bucket, prefix=config.prefix, fmt=config.format,
                   compression=config.effective_compression, max_file_mb=config.max_file_mb, log=context.log)

    def describe(self) -> str:
        return self.bucket.describe()

    @property
    def parts_format(self) -> PartsFormat:
        return PartsFormat(self.fmt, self.compression, self.max_bytes)

    def table_folder(self, table: str) -> str:
        parts = [p for p in (self.prefix, str(self.project_id), table) if p]
        return "/".join(parts) + "/"

    def window_folder(self, window: PartitionWindow) -> str:
        return self.table_folder(EVENTS_TABLE) + "/".join(window.folder_parts()) + "/"

    def write_event_window(self, parts: list[PartFile], window: PartitionWindow, fingerprint: str) -> WriteResult:
        # Parts come from staging, which removed every row whose dedup key it had already kept
        # (staging/dedup.py), so the writer can state the count of duplicate keys it wrote.
        manifest = {
            "partition_key": window.partition_key,
            "window_start": window.start.isoformat(),
            "window_end": window.end.isoformat(),
            "fingerprint": fingerprint,
            "duplicate_keys": 0,
        }
        return self._replace_folder(self.window_folder(window), parts, EVENTS_TABLE, manifest,
                                    f"partition {window.partition_key}")

    def write_table(self, parts: list[PartFile], table: str, digest: str,
                    duplicate_ids: int | None = None) -> WriteResult:
        # Recorded only when staging counted them: an unknown count makes the checks read back.
        extra = {} if duplicate_ids is None else {"duplicate_ids": duplicate_ids}
        return self._replace_folder(self.table_folder(table), parts, table, extra, table)

    def lease(self, folder: str, what: str) -> FolderLease:
        """The folder's single-writer lease (lease.py), named after this run."""
        return FolderLease(self.bucket, folder, pipeline=self.pipeline, what=what, holder=self.run_id,
                           ttl=self.lease_ttl, wait=self.lease_wait)

    def current_rows(self, window: PartitionWindow | None = None, table: str = EVENTS_TABLE) -> int | None:
        """The rows readers see now, from the manifest (None when the folder has none)."""
        folder = self.window_folder(window) if window is not None else self.table_folder(table)
        manifest = self.read_manifest(folder)
        return None if manifest is None or manifest.get("rows") is None else int(manifest["rows"])

    def _replace_folder(self, folder: str, parts: list[PartFile], table: str, extra: dict, what: str) -> WriteResult:
        try:
            with self.lease(folder, what) as lease:
                return self._swap(folder, parts, table, extra, lease)
        except DestinationError:
            raise
        except Exception as exc:
            raise DestinationError(
                f"pipeline {self.pipeline!r}: writing {what} to {self.bucket.uri(folder)} failed: "
                f"{type(exc).__name__}: {exc}; the previous data there is unchanged"
            ) from exc

    def _swap(self, folder: str, parts: list[PartFile], table: str, extra: dict, lease: FolderLease) -> WriteResult:
        # `complete` goes first and comes back last: a folder that has it holds exactly the
        # manifest's parts, so readers that glob part-* files can check it. If an upload fails,
        # the new parts are removed again and the folder is put back as it was.
        was_complete = self.bucket.get_bytes(folder + COMPLETE) is not None
        previous = self.read_manifest(folder) or {}
        old_keys = {folder + p["name"] for p in previous.get("parts", [])}
        if was_complete:
            self.bucket.delete([folder + COMPLETE])
        new_keys = []
        manifest = {
            "table": table,
            "project_id": self.project_id,
            "pipeline": self.pipeline,
            "format": self.fmt,
            "compression": self.compression,
            "columns": [list(c) for c in columns(table)],
            "rows": sum(p.rows for p in parts),
            "parts": [],
            "exported_at": utc_now_iso(),
            **extra,
        }
        try:
            md5s, expected = {}, {}
            for part in parts:
                key = folder + part.name
                self._upload_part(key, part, md5s, expected)
                new_keys.append(key)
            manifest["parts"] = verify_uploads(self.bucket, folder, parts, md5s, expected, self.pipeline)
            lease.confirm()
            self.bucket.put_bytes(folder + MANIFEST, json.dumps(manifest, indent=1).encode())
        except LeaseLost:
            raise  # the folder is the other run's now: its parts may share names with ours
        except Exception:
            self._undo_uploads(folder, [k for k in new_keys if k not in old_keys], was_complete)
            raise
        keep = set(new_keys) | {folder + MANIFEST, folder + COMPLETE}
        stale = [k for k in self.bucket.list_files(folder) if k not in keep and not is_lease_key(k)]
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

    def _upload_part(self, key: str, part: PartFile, md5s: dict[str, str], expected: dict[str, str | None]) -> None:
        """Upload one part, noting its MD5 and the checksum its store should list for it (asked before
        the upload: the local store moves the file), for verify_uploads."""
        md5s[part.name] = md5 = part.md5 or file_md5(part.path)
        expected[part.name] = self.bucket.expected_checksum(part.path, md5)
        self.bucket.upload_file(key, part.path, md5=md5)

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

    # --- reading back (asset checks) and deleting users (GDPR), through the Bucket operations ---

    def read_event_window(self, window: PartitionWindow):
        return self._read_back(self.window_folder(window), EVENTS_TABLE)

    def read_table(self, table: str):
        return self._read_back(self.table_folder(table), table)

    def check_event_window(self, window: PartitionWindow, read_back: bool = False):
        return self._check(self.window_folder(window), EVENTS_TABLE, read_back)

    def check_table(self, table: str, read_back: bool = False):
        return self._check(self.table_folder(table), table, read_back)

    def _check(self, folder: str, table: str, read_back: bool):
        """The manifest and one listing (at_rest.py) unless a read-back is asked for or the folder's
        manifest cannot prove it (written before checksums): then every part is read back."""
        from mixpanel_assets.destinations.objects.at_rest import fallback_reason, prove_folder

        note = ""
        if not read_back:
            manifest = self.read_manifest(folder)
            note = fallback_reason(manifest, table) or ""
            if not note:
                return prove_folder(self.bucket, folder, table, manifest)
            note += ": read back instead"
        readback = self._read_back(folder, table)
        readback.note = note
        return readback

    def _read_back(self, folder: str, table: str):
        from mixpanel_assets.destinations.objects.read_back import read_back_folder

        return read_back_folder(self.bucket, folder, table, self.read_manifest(folder))

    def _download(self, key: str, directory: Path) -> Path | None:
        local = directory / key.rsplit("/", 1)[-1]
        return local if self.bucket.download_file(key, local) else None

    def delete_event_rows(self, distinct_ids, windows, work_dir, dry_run=False):
        from mixpanel_assets.destinations.base import Removal

        removals = []
        for window in windows:
            folder = self.window_folder(window)
            rows = self._delete_in_folder(folder, EVENTS_TABLE, distinct_ids, Path(work_dir), dry_run,
                                          f"partition {window.partition_key}")
            if rows:
                removals.append(Removal(EVENTS_TABLE, window.partition_key, rows, self.bucket.uri(folder)))
        return removals

    def delete_table_rows(self, table, distinct_ids, work_dir, dry_run=False):
        from mixpanel_assets.destinations.base import Removal

        folder = self.table_folder(table)
        rows = self._delete_in_folder(folder, table, distinct_ids, Path(work_dir), dry_run, table)
        return Removal(table, None, rows, self.bucket.uri(folder))

    def _delete_in_folder(self, folder: str, table: str, distinct_ids: frozenset[str], work_dir: Path,
                          dry_run: bool, what: str) -> int:
        """Rewrite only the parts holding the users' rows, then swap them in like a write:
        new parts uploaded, manifest switched, old parts deleted, `complete` rewritten."""
        with self.lease(folder, what):
            return self._rewrite_folder(folder, table, distinct_ids, work_dir, dry_run, what)

    def _rewrite_folder(self, folder: str, table: str, distinct_ids: frozenset[str], work_dir: Path,
                        dry_run: bool, what: str) -> int:
        from mixpanel_assets.destinations.objects.part_rows import part_matches, rewrite_part

        manifest = self.read_manifest(folder)
        if manifest is None:
            names = [k.rsplit("/", 1)[-1] for k in self.bucket.list_files(folder)]
            entries = [{"name": n, "rows": None, "bytes": None} for n in names if n.startswith("part-")]
            if not entries:
                return 0
            manifest = {"table": table, "project_id": self.project_id, "pipeline": self.pipeline, "parts": entries}
        work_dir.mkdir(parents=True, exist_ok=True)
        kept, replaced, uploads, removed = [], [], [], 0
        try:
            for entry in manifest.get("parts", []):
                key = folder + entry["name"]
                local = self._download(key, work_dir)
                if local is None:
                    kept.append(entry)
                    continue
                try:
                    matches = part_matches(local, table, distinct_ids)
                    if not matches or dry_run:
                        removed += matches
                        kept.append(entry)
                        continue
                    part, rows = rewrite_part(local, table, distinct_ids, work_dir)
                finally:
                    local.unlink(missing_ok=True)
                removed += rows
                replaced.append(key)
                if part is not None:
                    uploads.append((folder + part.name, part))
                    kept.append({"name": part.name, "rows": part.rows, "bytes": part.size})
            if not removed or dry_run:
                return removed
            md5s, expected = {}, {}
            for key, part in uploads:
                self._upload_part(key, part, md5s, expected)
            written = [part for _, part in uploads]
            verified = {e["name"]: e for e in verify_uploads(self.bucket, folder, written, md5s, expected, self.pipeline)}
            manifest["parts"] = kept = [verified.get(e["name"], e) for e in kept]
            if all(e.get("rows") is not None for e in kept):
                manifest["rows"] = sum(e["rows"] for e in kept)
            if manifest.get("duplicate_ids"):  # the repeated ids may be among the removed: count unknown now
                del manifest["duplicate_ids"]
            manifest.setdefault("gdpr_deletions", []).append({"deleted_at": utc_now_iso(), "rows_removed": removed})
            self.bucket.put_bytes(folder + MANIFEST, json.dumps(manifest, indent=1).encode())
            self.bucket.delete(replaced)
            self.bucket.put_bytes(folder + COMPLETE, b"")
            return removed
        except Exception as exc:
            raise DestinationError(
                f"pipeline {self.pipeline!r}: removing deleted users' rows from {what} at {self.bucket.uri(folder)} "
                f"failed: {type(exc).__name__}: {exc}; until {MANIFEST} is rewritten the folder keeps its previous parts"
            ) from exc
        finally:
            for _, part in uploads:
                part.path.unlink(missing_ok=True)
