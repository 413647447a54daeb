"""What every destination does, whatever it is: replace one events window, or one whole table.

Both operations are all-or-nothing from a reader's point of view: a failure leaves the previous
version of the window (or table) in place, and a rerun never leaves two copies. A destination only
uploads or loads finished part files: it says which ones it wants (`parts_format`), and the IO
manager (io_managers.py) has staging write them, so no destination calls back into staging.
"""

from __future__ import annotations

import datetime as dt
import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path

from mixpanel_assets.schema import EVENTS_TABLE, IDENTITY_TABLE, PEOPLE_TABLE, TABLES  # noqa: F401 - re-exported
from mixpanel_assets.staging.parts import PartFile
from mixpanel_assets.windows import PartitionWindow


class DestinationError(RuntimeError):
    """A destination refused a write; the message names the pipeline, the place and the partition."""


def permanent(error: Exception) -> Exception:
    """Mark an error retrying cannot fix (missing dataset or bucket, rejected credentials, unset env
    var): the IO manager then fails the step at once instead of waiting out the retry policy."""
    error.permanent = True  # type: ignore[attr-defined]
    return error


def is_permanent(exc: BaseException) -> bool:
    """Marked permanent itself, or caused by an error that is (e.g. objects/cloud.BucketAccessError)."""
    return bool(getattr(exc, "permanent", False) or getattr(exc.__cause__, "permanent", False))


@dataclass(frozen=True)
class PartsFormat:
    """The part files a destination loads: format, compression, and uncompressed bytes per part."""

    fmt: str = "json"
    compression: str = "gzip"
    max_bytes: int = 256 << 20


@dataclass(frozen=True)
class DestinationContext:
    """What opening a destination needs besides its config: whose it is, and where to log."""

    pipeline: str
    project_id: int
    timezone: str = "UTC"  # the project's: partition dates and clustering keys use it
    log: logging.Logger | None = None


@dataclass
class WriteResult:
    location: str  # folder URI or fully qualified table
    rows: int
    bytes: int = 0
    uris: list[str] = field(default_factory=list)
    removed: int = 0  # stale files or rows replaced


@dataclass
class EventWindowReadback:
    """What a destination holds for one events window, read back for the asset checks (checks.py)."""

    location: str
    rows: int
    duplicate_keys: int  # dedup keys (schema.DEDUP_KEY) stored more than once
    duplicate_rows: int  # rows beyond the first copy of those keys
    columns: list[tuple[str, str]]  # (name, logical type: STRING | JSON | TIMESTAMP | what was found instead)
    problems: list[str] = field(default_factory=list)  # anything else a reader would trip over
    # How it was proved: "read_back" (rows read from the destination: parts re-parsed, or SQL over
    # the stored rows) or "manifest" (objects/at_rest.py: the writer's record and one listing).
    method: str = "read_back"
    note: str = ""  # why a cheaper method was not used, when it was asked for


@dataclass
class TableReadback:
    """What a destination holds for mp_people_data or mp_identity_mappings_data."""

    location: str
    rows: int
    duplicate_ids: int  # distinct_id values stored more than once
    columns: list[tuple[str, str]]
    problems: list[str] = field(default_factory=list)
    method: str = "read_back"  # as EventWindowReadback's
    note: str = ""


@dataclass
class Removal:
    """Rows of deleted users removed from one partition (events) or one table, for the GDPR audit."""

    table: str
    partition_key: str | None
    rows: int
    location: str


class Destination(ABC):
    """One configured destination of one pipeline."""

    # The Dagster run writing through this destination (set by the IO manager): a second writer of
    # the same window is told which run holds it.
    run_id: str | None = None

    def __init__(self, pipeline: str, project_id: int, log: logging.Logger | None = None):
        self.pipeline = pipeline
        self.project_id = project_id
        self.log = log or logging.getLogger(__name__)

    @abstractmethod
    def describe(self) -> str: ...

    @property
    def parts_format(self) -> PartsFormat:
        """The part files this destination loads; warehouses read gzip JSON lines."""
        return PartsFormat()

    @abstractmethod
    def write_event_window(self, parts: list[PartFile], window: PartitionWindow, fingerprint: str) -> WriteResult:
        """Replace exactly `window`'s events with the rows of `parts` (written in `parts_format`);
        `fingerprint` is the staged window's source fingerprint token, recorded with the export."""

    @abstractmethod
    def write_table(self, parts: list[PartFile], table: str, digest: str,
                    duplicate_ids: int | None = None) -> WriteResult:
        """Replace a whole table (mp_people_data or mp_identity_mappings_data) with the rows of `parts`;
        `duplicate_ids` is how many distinct_id values staging saw more than once (None: not counted),
        for destinations that record it beside the data (object stores' manifests)."""

    def current_rows(self, window: PartitionWindow | None = None, table: str = EVENTS_TABLE) -> int | None:
        """The rows readers see now in `window` (events) or in `table`, for the shrink guard
        (io_managers.check_shrink); None when unknown. Destinations override this with a cheap
        count (a manifest, one COUNT); this fallback reads back through read_event_window/read_table."""
        try:
            readback = self.read_event_window(window) if window is not None else self.read_table(table)
        except NotImplementedError:
            return None
        return None if readback.problems and not readback.rows else readback.rows

    # Reading back and deleting: used by the asset checks (checks.py) and the GDPR deletion job
    # (gdpr.py). Not abstract, so a destination can add them after its writer; until it does,
    # checks report it and the GDPR job refuses to run, naming the destination type.

    def read_event_window(self, window: PartitionWindow) -> EventWindowReadback:
        """Read back what readers of `window` see: its rows as stored (not the export's count),
        the dedup keys (schema.DEDUP_KEY) stored more than once (rows
        without insert_id are never duplicates, as in Mixpanel), the columns with their logical
        types (schema.EVENT_COLUMNS: STRING, JSON, TIMESTAMP), and any other problem found."""
        raise self.unsupported("read_event_window")

    def read_table(self, table: str) -> TableReadback:
        """Read back mp_people_data or mp_identity_mappings_data: rows, distinct_id values stored
        more than once, columns (schema.PEOPLE_COLUMNS / IDENTITY_COLUMNS) and problems."""
        raise self.unsupported("read_table")

    def check_event_window(self, window: PartitionWindow, read_back: bool = False) -> EventWindowReadback:
        """What the asset checks judge for `window`. Destinations that can prove it without reading
        the rows (object stores: their manifest and one listing) override this and do so unless
        `read_back`; a warehouse's read-back is already one pushed-down query, so it is the default."""
        return self.read_event_window(window)

    def check_table(self, table: str, read_back: bool = False) -> TableReadback:
        """check_event_window's counterpart for mp_people_data / mp_identity_mappings_data."""
        return self.read_table(table)

    def delete_event_rows(self, distinct_ids: frozenset[str], windows: list[PartitionWindow], work_dir: Path,
                          dry_run: bool = False) -> list[Removal]:
        """Remove every event whose distinct_id is in `distinct_ids` from the given windows (all of a
        pipeline's partitions, sorted and contiguous), each window all-or-nothing like a write, and
        return one Removal per window that had such rows (partition_key None for rows outside
        every window). `dry_run` counts without removing. Never logs the rows' properties."""
        raise self.unsupported("delete_event_rows")

    def delete_table_rows(self, table: str, distinct_ids: frozenset[str], work_dir: Path,
                          dry_run: bool = False) -> Removal:
        """Remove the rows of mp_people_data or mp_identity_mappings_data whose user columns
        (schema.USER_COLUMNS) hold an id in `distinct_ids`, atomically; `dry_run` counts."""
        raise self.unsupported("delete_table_rows")

    def unsupported(self, method: str) -> NotImplementedError:
        return NotImplementedError(
            f"pipeline {self.pipeline!r}: the {type(self).__name__} destination ({self.describe()}) does not "
            f"implement {method} yet, which asset checks and GDPR deletion need"
        )

    def close(self) -> None:
        pass


def utc_now_iso() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
