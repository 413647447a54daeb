"""`type: local`: Mixpanel's bucket layout in a folder on a filesystem path (the embedded default)."""

from __future__ import annotations

import errno
import os
import shutil
import threading
from pathlib import Path
from typing import Literal

from mixpanel_assets.destinations.configs import ObjectStoreConfig, Text, path_segments, resolve_under
from mixpanel_assets.destinations.objects.at_rest import StoredFile
from mixpanel_assets.destinations.objects.store import Bucket, ObjectStoreDestination
from mixpanel_assets.staging.parts import file_md5


class LocalDestinationConfig(ObjectStoreConfig):
    """A folder laid out exactly like Mixpanel's bucket."""

    type: Literal["local"]
    path: Text

    def location_key(self) -> tuple:
        return ("local",)

    def folder(self) -> tuple[str, ...]:
        return path_segments(self.path) + super().folder()

    def describe(self) -> str:
        return f"local folder {self.path}"

    def resolved(self, base_dir: Path) -> LocalDestinationConfig:
        return self.model_copy(update={"path": resolve_under(base_dir, self.path)})


def open_destination(config: LocalDestinationConfig, context) -> ObjectStoreDestination:
    return ObjectStoreDestination.from_config(config, context, LocalBucket(config.path))


def table_location(config: LocalDestinationConfig, project_id: int, table: str) -> str:
    return "/".join(p for p in (config.path, config.prefix, str(project_id), table) if p)


class DestinationFull(OSError):
    """The destination's filesystem is full (or over quota): waiting does not free it, so the IO
    manager fails the step without retries (base.is_permanent)."""

    permanent = True


def _full(exc: OSError, target: Path, needed: int) -> OSError:
    if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
        return exc
    try:
        free = f"{shutil.disk_usage(target.parent).free:,} bytes are free"
    except OSError:
        free = "free space unknown"
    error = DestinationFull(
        f"no space left on the device holding {target.parent} ({os.strerror(exc.errno)}): writing {target.name} "
        f"needs {needed:,} bytes and {free}; nothing was left behind. Free space there (or move `path`), then rerun")
    error.errno = exc.errno
    return error


class LocalBucket(Bucket):
    """Files are written under a temporary name and renamed, so no reader sees half a file; a write
    that fails (a full disk) removes its temporary file and names the path and the space needed."""

    def __init__(self, root: str | Path):
        self.root = Path(root).absolute()

    def _path(self, key: str) -> Path:
        return self.root / key

    def uri(self, key: str) -> str:
        return self._path(key).as_uri() if key else self.root.as_uri()

    def describe(self) -> str:
        return f"local folder {self.root}"

    def _tmp(self, key: str) -> tuple[Path, Path]:
        target = self._path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        return target, target.with_name(f".{target.name}.{os.getpid()}.{threading.get_ident()}.tmp")

    def upload_file(self, key: str, path: Path, md5: str | None = None) -> None:
        target, tmp = self._tmp(key)
        try:
            try:
                os.replace(path, tmp)  # the part is a staging file: move it when on the same filesystem
            except OSError:
                shutil.copyfile(path, tmp)
            os.replace(tmp, target)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise _full(exc, target, path.stat().st_size if path.exists() else 0) from exc

    def put_bytes(self, key: str, data: bytes) -> None:
        target, tmp = self._tmp(key)
        try:
            tmp.write_bytes(data)
            os.replace(tmp, target)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise _full(exc, target, len(data)) from exc

    def create_if_absent(self, key: str, data: bytes) -> bool:
        """link(2) of a complete temporary file: atomic, and fails if the name exists (also on NFS)."""
        target, tmp = self._tmp(key)
        try:
            tmp.write_bytes(data)
            os.link(tmp, target)
            return True
        except FileExistsError:
            return False
        except OSError as exc:
            raise _full(exc, target, len(data)) from exc
        finally:
            tmp.unlink(missing_ok=True)

    def get_bytes(self, key: str) -> bytes | None:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            return None

    def download_file(self, key: str, path: Path) -> bool:
        try:
            shutil.copyfile(self._path(key), path)
        except FileNotFoundError:
            return False
        return True

    def list_files(self, folder: str) -> list[str]:
        directory = self._path(folder)
        if not directory.is_dir():
            return []
        return sorted(folder + p.name for p in directory.iterdir() if p.is_file() and not p.name.startswith("."))

    def stat_files(self, folder: str) -> dict[str, StoredFile]:
        """A filesystem keeps no checksum: the file is the store, so its MD5 is hashed from it (one
        sequential read per part, no copy), which is what proves the bytes at rest."""
        stats = {}
        for key in self.list_files(folder):
            path = self._path(key)
            try:
                stats[key] = StoredFile(path.stat().st_size, file_md5(path), "md5")
            except FileNotFoundError:
                continue  # removed since the listing: as if not listed
        return stats

    def expected_checksum(self, path: Path, md5: str) -> str | None:
        return md5

    def delete(self, keys: list[str]) -> None:
        for key in keys:
            self._path(key).unlink(missing_ok=True)
