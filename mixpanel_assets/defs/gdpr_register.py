"""The register of users deleted by GDPR deletions, which every later export leaves out.

Mixpanel takes days to weeks to delete a user itself, and until it has, its Export and Engage
APIs still return their data: a sync re-export, a backfill or the next people run would bring
back exactly what `gdpr_deletion_job` removed. So the job records the deleted distinct_ids here,
in the project's state folder, and the exports drop their events (in the parse workers), their
profiles and their identity links. The file holds ids only, never properties; it is the standing
instruction not to export them again, so keep it with the state folder.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from collections.abc import Iterable
from pathlib import Path

REGISTER = "gdpr/deleted_distinct_ids.json"


def register_path(state_root: str | Path) -> Path:
    return Path(state_root) / REGISTER


def suppressed_distinct_ids(state_root: str | Path) -> frozenset[str]:
    """Every distinct_id deleted so far (empty when no deletion ever ran)."""
    try:
        data = json.loads(register_path(state_root).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return frozenset()
    return frozenset(data.get("distinct_ids", []))


def add_to_register(state_root: str | Path, distinct_ids: Iterable[str]) -> Path:
    """Add ids to the register, replacing the file atomically (a reader never sees half of it)."""
    path = register_path(state_root)
    path.parent.mkdir(parents=True, exist_ok=True)
    ids = sorted(suppressed_distinct_ids(state_root) | set(distinct_ids))
    updated = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"updated_at": updated, "distinct_ids": ids}, indent=1), encoding="utf-8")
    os.replace(tmp, path)
    return path


class ProfilesWithoutDeleted:
    """A source whose profiles leave out deleted users; everything else is the source's own."""

    def __init__(self, source, distinct_ids: frozenset[str]):
        self._source = source
        self._ids = distinct_ids
        self.suppressed = 0

    def __getattr__(self, name):
        return getattr(self._source, name)

    def profile_lines(self):
        import orjson

        self.suppressed = 0  # a read retried whole counts again from the start
        for line in self._source.profile_lines():
            if self._ids:
                try:
                    distinct_id = orjson.loads(line).get("$distinct_id")
                except (orjson.JSONDecodeError, AttributeError):
                    distinct_id = None  # malformed: export_people counts and reports it
                if distinct_id is not None and str(distinct_id) in self._ids:
                    self.suppressed += 1
                    yield b""  # skipped, but counted as a line so later bad lines keep their numbers
                    continue
            yield line
