"""What every destination does, whatever it is: replace one events window, or one whole table.

Both operations are all-or-nothing from a reader's point of view: a failure leaves the previous
version of the window (or table) in place, and a rerun never leaves two copies.
"""

from __future__ import annotations

import datetime as dt
import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path

from mixpanel_assets.partitions import PartitionWindow
from mixpanel_assets.staging import StagedTable, StagedWindow

EVENTS_TABLE = "mp_master_event"
PEOPLE_TABLE = "mp_people_data"
IDENTITY_TABLE = "mp_identity_mappings_data"
TABLES = (EVENTS_TABLE, PEOPLE_TABLE, IDENTITY_TABLE)


class DestinationError(RuntimeError):
    """A destination refused a write; the message names the pipeline, the place and the partition."""


@dataclass
class WriteResult:
    location: str  # folder URI or fully qualified table
    rows: int
    bytes: int = 0
    uris: list[str] = field(default_factory=list)
    removed: int = 0  # stale files or rows replaced


class Destination(ABC):
    """One configured destination of one pipeline."""

    def __init__(self, pipeline: str, project_id: int, log: logging.Logger | None = None):
        self.pipeline = pipeline
        self.project_id = project_id
        self.log = log or logging.getLogger(__name__)

    @abstractmethod
    def describe(self) -> str: ...

    @abstractmethod
    def write_event_window(self, staged: StagedWindow, window: PartitionWindow, work_dir: Path) -> WriteResult:
        """Replace exactly `window`'s events with the staged rows."""

    @abstractmethod
    def write_table(self, staged: StagedTable, work_dir: Path) -> WriteResult:
        """Replace a whole table (mp_people_data or mp_identity_mappings_data)."""

    def close(self) -> None:
        pass


def utc_now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
