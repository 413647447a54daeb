"""BigQuery: reading back (asset checks) and deleting users (GDPR), the half of the destination
that is not the export path; BigQueryDestination (bigquery.py) mixes it in. It uses the building
blocks of that class (_run, _row, _count, _load, _create_table, ...)."""

from __future__ import annotations

import re
import uuid
from pathlib import Path

from mixpanel_assets.destinations.base import EVENTS_TABLE, DestinationError
from mixpanel_assets.schema import BIGQUERY, DEDUP_KEY, INSERT_ID, USER_COLUMNS
from mixpanel_assets.windows import PartitionWindow

_LOGICAL = {declared: logical for logical, declared in BIGQUERY.items()}
_IDS_SCHEMA = (("distinct_id", "STRING"),)  # the ids a GDPR deletion removes


def _str(value: str | None) -> str:
    """A string literal for SQL we compose from our own values (names, keys, fingerprints)."""
    if value is None:
        return "NULL"
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:500] if text else type(exc).__name__


class BigQueryAdmin:
    # --- reading back (asset checks) -----------------------------------------------------------

    def read_event_window(self, window: PartitionWindow):
        """The window as readers see it; rows whose ingestion-time partition is not the local date of
        their `time` (written under another timezone setting, or by hand) are reported as a problem."""
        from google.api_core.exceptions import NotFound

        from mixpanel_assets.destinations.base import EventWindowReadback

        location = self.location(EVENTS_TABLE)
        try:
            schema = self.client.get_table(self.ref(EVENTS_TABLE)).schema
        except NotFound:
            return EventWindowReadback(location, 0, 0, 0, [], [f"no table {self.ref(EVENTS_TABLE)}"])
        table, where = self.sql_ref(EVENTS_TABLE), self._in_window(window)
        counts = self._row(f"SELECT COUNT(*) AS n, COUNTIF(DATE(_PARTITIONTIME) != DATE(time, {_str(self.timezone)})) "
                           f"AS misdated FROM {table} WHERE {where}")
        duplicates = self._row(
            f"SELECT COUNT(*) AS k, IFNULL(SUM(n - 1), 0) AS extra FROM (SELECT COUNT(*) AS n FROM {table} "
            f"WHERE {where} AND {INSERT_ID} IS NOT NULL GROUP BY {', '.join(DEDUP_KEY)} "
            "HAVING COUNT(*) > 1)")
        problems = [(f"{counts['misdated']} rows whose partition (_PARTITIONTIME) is not the {self.timezone} date "
                     "of their time")] if counts["misdated"] else []
        columns = [(f.name, _LOGICAL.get(f.field_type, f.field_type)) for f in schema]
        return EventWindowReadback(location, int(counts["n"]), int(duplicates["k"]), int(duplicates["extra"]),
                                   columns, problems)

    def read_table(self, table: str):
        """mp_people_data / mp_identity_mappings_data through their view, as readers query them."""
        from google.api_core.exceptions import NotFound

        from mixpanel_assets.destinations.base import TableReadback

        view = self.sql_ref(f"{table}_view")
        location = self.location(f"{table}_view")
        try:
            schema = self.client.query(f"SELECT * FROM {view} LIMIT 0", timeout=120).result(timeout=self.job_timeout).schema
        except NotFound:
            return TableReadback(location, 0, 0, [], [f"no view {self.ref(table + '_view')}"])
        rows = self._count(f"SELECT COUNT(*) FROM {view}")
        duplicates = self._count(f"SELECT COUNT(*) FROM (SELECT distinct_id FROM {view} GROUP BY distinct_id "
                                 "HAVING COUNT(*) > 1)")
        columns = [(f.name, _LOGICAL.get(f.field_type, f.field_type)) for f in schema]
        return TableReadback(location, rows, duplicates, columns)

    # --- deleting users (GDPR) -----------------------------------------------------------------
    # The distinct_ids are user data. Rather than composing them into SQL text (bqemulator takes no
    # query parameters inside scripts), they are loaded from a file into a table of their own,
    # which expires like a staging table, and joined on: nothing to escape, no query-length limit
    # for thousands of ids, and the ids never appear in the project's query history.

    def delete_event_rows(self, distinct_ids, windows, work_dir, dry_run=False):
        """One grouped count attributes the users' rows to the windows (window_counts.py), then one
        transaction deletes them from all the windows at once: each window is all-or-nothing, and it
        is one DML job instead of one per partition (BigQuery takes seconds per DML job and limits
        their rate per table, and an hourly pipeline has thousands of partitions)."""
        import dataclasses

        from mixpanel_assets.destinations.warehouses.window_counts import bucket_seconds, removals_by_window

        if not windows or not distinct_ids or not self._exists(EVENTS_TABLE):
            return []
        table = self.sql_ref(EVENTS_TABLE)
        span = dataclasses.replace(windows[0], end=windows[-1].end)
        bucket = bucket_seconds(windows)
        ids = None
        try:
            ids = self._load_ids(distinct_ids, Path(work_dir))
            match = f"distinct_id IN (SELECT distinct_id FROM {self.sql_ref(ids)}) AND {self._in_window(span)}"
            counts = self._rows(f"SELECT DIV(UNIX_SECONDS(time), {bucket}) AS b, COUNT(*) AS n FROM {table} "
                                f"WHERE {match} GROUP BY b")
            removals = removals_by_window(windows, counts, bucket, self.location(EVENTS_TABLE))
            if removals and not dry_run:
                self._run(self._delete_sql(table, match, sum(r.rows for r in removals)), "delete the rows")
        except Exception as exc:
            raise self._delete_failed(f"the events of {len(windows)} partitions of {self.ref(EVENTS_TABLE)}",
                                      exc) from exc
        finally:
            self._drop_quietly(ids)
        return removals

    def delete_table_rows(self, table, distinct_ids, work_dir, dry_run=False):
        """Deletes in place from the table the view points at now, rather than copying the other
        rows into a new table and swapping the view as an export does: one DML job instead of a
        copy of every profile, the export log still names the table readers see, and an export
        swapping the view meanwhile is never undone (ours would bring back its predecessor)."""
        from mixpanel_assets.destinations.base import Removal

        current = ids = None
        try:
            current = self._view_target(table) if distinct_ids else None
            if current is None:
                return Removal(table, None, 0, self.location(f"{table}_view"))
            target = self.sql_ref(current)
            ids = self._load_ids(distinct_ids, Path(work_dir))
            among = f"(SELECT distinct_id FROM {self.sql_ref(ids)})"
            match = "(" + " OR ".join(f"{column} IN {among}" for column in USER_COLUMNS[table]) + ")"
            rows = self._count(f"SELECT COUNT(*) FROM {target} WHERE {match}")
            if rows and not dry_run:
                self._run(self._delete_sql(target, match, rows), "delete the rows")
        except Exception as exc:
            raise self._delete_failed(f"{self.ref(current) if current else table} (behind {table}_view)", exc) from exc
        finally:
            self._drop_quietly(ids)
        return Removal(table, None, rows, self.location(current))

    def _exists(self, table: str) -> bool:
        from google.api_core.exceptions import NotFound

        try:
            self.client.get_table(self.ref(table))
        except NotFound:
            return False
        return True

    def _view_target(self, table: str) -> str | None:
        """The suffixed table `<table>_view` reads, None without a view (nothing exported yet).
        INFORMATION_SCHEMA rather than Table.view_query, which bqemulator leaves empty."""
        from google.api_core.exceptions import NotFound

        view = f"{table}_view"
        try:
            found = self._rows(f"SELECT view_definition FROM `{self.project}.{self.dataset}.INFORMATION_SCHEMA.VIEWS` "
                               f"WHERE table_name = {_str(view)}")
        except NotFound:
            return None
        if not found:
            return None
        names = {m["name"] for m in re.finditer(rf"\b(?P<name>{table}_\d{{8}}T\d{{6}}_[0-9a-f]{{6}})\b", found[0][0])}
        if len(names) != 1:
            raise DestinationError(f"{self.ref(view)} does not read one {table}_<time> table written by this "
                                   "exporter (was it changed by hand?)")
        return names.pop()

    def _load_ids(self, distinct_ids, work_dir: Path) -> str:
        """An expiring table holding the ids, loaded from a JSON-lines file; its name."""
        import orjson

        name = f"_mp_gdpr_ids_{uuid.uuid4().hex[:12]}"
        work_dir.mkdir(parents=True, exist_ok=True)
        path = work_dir / f"{name}.json"
        path.write_bytes(b"".join(orjson.dumps({"distinct_id": i}) + b"\n" for i in sorted(distinct_ids)))
        try:
            self._create_table(name, _IDS_SCHEMA, expires=True)
            self._load(path, name, _IDS_SCHEMA)
            loaded = self._count(f"SELECT COUNT(*) FROM {self.sql_ref(name)}")
            if loaded != len(distinct_ids):
                raise DestinationError(f"{name} holds {loaded} distinct_ids after loading, expected {len(distinct_ids)}")
        except BaseException:
            self._drop_quietly(name)
            raise
        finally:
            path.unlink(missing_ok=True)
        return name

    @staticmethod
    def _delete_sql(target: str, match: str, expected: int) -> str:
        """Delete in a transaction that fails (and so rolls back) unless exactly the counted rows
        match when it starts and none are left at its end. ERROR() in a SELECT, not ASSERT, which
        bqemulator does not parse."""
        left = f"(SELECT COUNT(*) FROM {target} WHERE {match})"
        return ("BEGIN TRANSACTION;\n"
                f"SELECT IF({left} != {int(expected)}, ERROR('the rows to delete changed after they were counted "
                "(an export wrote them meanwhile?)'), 0);\n"
                f"DELETE FROM {target} WHERE {match};\n"
                f"SELECT IF({left} != 0, ERROR('rows of the deleted users were left after the DELETE'), 0);\n"
                "COMMIT TRANSACTION;")

    def _delete_failed(self, what: str, exc: Exception) -> DestinationError:
        return DestinationError(
            f"pipeline {self.pipeline!r}: removing deleted users' rows from {what} failed: {type(exc).__name__}: "
            f"{_first_line(exc)}; it is one transaction, so those rows are all still there (rerun the deletion)"
        )
