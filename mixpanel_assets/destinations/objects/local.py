"""`type: local`: Mixpanel's bucket layout in a folder on a filesystem path (the embedded default)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Literal

from mixpanel_assets.destinations.configs import ObjectStoreConfig, Text, path_segments, resolve_under
from mixpanel_assets.destinations.objects.store import Bucket, ObjectStoreDestination


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


class LocalBucket(Bucket):
    """Files are written under a temporary name and renamed, so no reader sees half a file."""

    def __init__(self, root: str | Path):
        self.root = Path(root).absolute()

    def _path(self, key: str) -> Path:
        return self.root / key

    def uri(self, key: str) -> str:
        return self._path(key).as_uri() if key else self.root.as_uri()

    def describe(self) -> str:
        return f"local folder {self.root}"

    def upload_file(self, key: str, path: Path) -> None:
        target = self._path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        try:
            os.replace(path, tmp)  # the part is a staging file: move it when on the same filesystem
        except OSError:
            shutil.copyfile(path, tmp)
        os.replace(tmp, target)

    def put_bytes(self, key: str, data: bytes) -> None:
        target = self._path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, target)

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

    def delete(self, keys: list[str]) -> None:
        for key in keys:
            self._path(key).unlink(missing_ok=True)
