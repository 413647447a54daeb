"""Scratch folders for a run's staged data, and the sweep of the ones killed runs left behind.

A run killed outright (the OOM killer, a drained node, `kill -9`) cannot remove its staging
folder, and a day's staged data is gigabytes: without a sweep, repeated crashes fill the disk
long before anyone notices. So each folder's name says which host and process made it (and when
that process started, so a reused pid is not taken for the owner), and making a new folder first
removes the folders whose process is gone on this host. Folders made on other hosts (a shared
volume) and by live processes are never touched.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

_NAME = re.compile(r"^mp-[a-z_]+~(?P<host>[A-Za-z0-9_]+)~(?P<pid>\d+)~(?P<started>\d+)~")


def scratch_dir(kind: str, root: str | Path | None = None) -> Path:
    """A new folder `mp-<kind>~<host>~<pid>~<start>~<random>` under `root` (the system's temp
    folder by default), after sweeping the folders abandoned there by dead processes."""
    base = Path(root) if root is not None else Path(tempfile.gettempdir())
    sweep_abandoned(base)
    owner = f"{_host()}~{os.getpid()}~{_start_time(os.getpid()) or 0}"
    return Path(tempfile.mkdtemp(prefix=f"mp-{kind}~{owner}~", dir=base))


@contextmanager
def scratch_folder(kind: str, root: str | Path | None = None) -> Iterator[Path]:
    """`scratch_dir` for the length of a `with` block, removed when it ends."""
    folder = scratch_dir(kind, root)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def sweep_abandoned(root: Path) -> list[Path]:
    """Remove this host's scratch folders under `root` whose process has ended; return them."""
    removed = []
    host = _host()
    try:
        entries = list(os.scandir(root))
    except OSError:
        return removed
    for entry in entries:
        match = _NAME.match(entry.name)
        if match is None or match["host"] != host or not entry.is_dir(follow_symlinks=False):
            continue
        if _alive(int(match["pid"]), int(match["started"])):
            continue
        shutil.rmtree(entry.path, ignore_errors=True)
        removed.append(Path(entry.path))
    return removed


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9]", "_", socket.gethostname()) or "host"


def _start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (Linux), None where /proc is absent."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: count fields after its last ')'.
    return int(stat[stat.rindex(b")") + 2:].split()[19])


def _alive(pid: int, started: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's live process
    current = _start_time(pid)
    return current is None or started == 0 or current == started
