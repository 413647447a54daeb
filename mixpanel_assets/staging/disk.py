"""Writing staged files, and the error that says which disk is full and by how much.

A bare `OSError: [Errno 28] No space left on device` names neither the folder to clean nor the
space the run needed; the staging folder may be on another disk than the destination. Every staged
write (rows per block, identity links, dedup-key buckets, part files) goes through here, in the
workers as in the coordinator, so the failure always reads the same and is picklable across the pool.
"""

from __future__ import annotations

import errno
import shutil
from pathlib import Path


class StagingDiskError(OSError):
    """A staged file could not be written (most often: the disk is full). The message names the
    file, the bytes being written and the bytes free there; the run removes its staging folder."""


def write_file(path: Path, data: bytes, append: bool = False) -> None:
    """Write (or append) `data` to `path`, its folder created; a failure raises StagingDiskError
    and leaves no partial file behind (a partial append is cut back)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if not append:
            path.write_bytes(data)
            return
        with open(path, "ab") as f:
            start = f.tell()
            try:
                f.write(data)
                f.flush()
            except OSError:
                f.truncate(start)
                raise
    except StagingDiskError:
        raise
    except OSError as exc:
        if not append:
            path.unlink(missing_ok=True)
        raise disk_error(exc, path, len(data)) from None


def disk_error(exc: OSError, path: Path, size: int) -> StagingDiskError:
    """The StagingDiskError for `exc`, raised while writing `size` bytes to `path`."""
    if isinstance(exc, StagingDiskError):
        return exc
    free = _free_bytes(path)
    reason = "no space left on the device" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else (exc.strerror or str(exc))
    where = f"{free:,} bytes free there" if free is not None else "free space unknown"
    return StagingDiskError(
        f"staging could not write {path}: {reason} ({size:,} bytes to write, {where}). The run stopped its "
        "workers and removed its staging folder; free space there, or point TMPDIR (where staging "
        "folders are made) at a larger disk, then run again"
    )


def _free_bytes(path: Path) -> int | None:
    for folder in (path, *path.parents):
        try:
            return shutil.disk_usage(folder).free
        except OSError:
            continue
    return None
