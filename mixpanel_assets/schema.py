"""Mixpanel's three tables, once: their columns in order, logical types, keys, and per-dialect types.

Every place that declares or reads these tables (the row writers, the Parquet parts, each
warehouse's DDL and load schema, the Glue catalog, the asset checks, GDPR deletion) takes them
from here, so a column cannot be added or retyped in one destination and forgotten in another.

Logical types are Mixpanel's (MIXPANEL_SPEC.md 1.1): STRING, JSON (the whole properties object),
TIMESTAMP (UTC). A dialect maps them to what it declares; should a destination ever need to store
more than Mixpanel's columns, the addition is listed here, in ADDED_COLUMNS, rather than appended
by hand in the destination (none does: BigQuery's events table is ingestion-time partitioned, as
Mixpanel's is, so it needs no partitioning column).

The lowest layer: imports nothing of ours, and nothing heavy at import (worker processes import
it); pyarrow is imported only by `parquet_schema`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pyarrow as pa

EVENTS_TABLE = "mp_master_event"
PEOPLE_TABLE = "mp_people_data"
IDENTITY_TABLE = "mp_identity_mappings_data"
TABLES = (EVENTS_TABLE, PEOPLE_TABLE, IDENTITY_TABLE)

STRING = "STRING"
JSON = "JSON"
TIMESTAMP = "TIMESTAMP"
LOGICAL_TYPES = (STRING, JSON, TIMESTAMP)

Columns = tuple[tuple[str, str], ...]  # (name, type) in table order

EVENT_COLUMNS: Columns = (
    ("device_id", STRING),
    ("distinct_id", STRING),
    ("event_name", STRING),
    ("insert_id", STRING),
    ("properties", JSON),
    ("time", TIMESTAMP),
    ("user_id", STRING),
)
PEOPLE_COLUMNS: Columns = (("distinct_id", STRING), ("properties", JSON))
IDENTITY_COLUMNS: Columns = (("distinct_id", STRING), ("resolved_distinct_id", STRING))
COLUMNS: Mapping[str, Columns] = {EVENTS_TABLE: EVENT_COLUMNS, PEOPLE_TABLE: PEOPLE_COLUMNS,
                                  IDENTITY_TABLE: IDENTITY_COLUMNS}

# Mixpanel's dedup key: rows agreeing on all four are one event, except that rows without
# INSERT_ID are never duplicates (Mixpanel gives each its own id at ingestion).
INSERT_ID = "insert_id"
DEDUP_KEY = ("event_name", "distinct_id", "time", INSERT_ID)
# The columns naming a user, per table: what a GDPR deletion matches the deleted ids against.
USER_COLUMNS: Mapping[str, tuple[str, ...]] = {
    EVENTS_TABLE: ("distinct_id",),
    PEOPLE_TABLE: ("distinct_id",),
    IDENTITY_TABLE: ("distinct_id", "resolved_distinct_id"),
}

# Logical type -> the type each dialect declares. Glue (read by Redshift Spectrum through the
# JSON SerDe) sees the JSON-lines part files as they are: properties as JSON text, time as the
# epoch seconds the files hold.
DUCKDB: Mapping[str, str] = {STRING: "VARCHAR", JSON: "JSON", TIMESTAMP: "TIMESTAMP"}
BIGQUERY: Mapping[str, str] = {STRING: "STRING", JSON: "JSON", TIMESTAMP: "TIMESTAMP"}
SNOWFLAKE: Mapping[str, str] = {STRING: "STRING", JSON: "VARIANT", TIMESTAMP: "TIMESTAMP_NTZ"}
GLUE: Mapping[str, str] = {STRING: "string", JSON: "string", TIMESTAMP: "double"}
DIALECTS: Mapping[str, Mapping[str, str]] = {"duckdb": DUCKDB, "bigquery": BIGQUERY, "snowflake": SNOWFLAKE,
                                             "glue": GLUE}

# Columns a dialect stores after Mixpanel's, per table, already in that dialect's types. Empty:
# BigQuery's `mp_date` (earlier versions partitioned on it) went when mp_master_event became
# ingestion-time partitioned like Mixpanel's (bigquery.py; the migration is in docs/destinations.md).
ADDED_COLUMNS: Mapping[str, Mapping[str, Columns]] = {}

# Parquet field metadata, per column: what a reader of the file is told.
PARQUET_METADATA: Mapping[str, Mapping[str, str]] = {
    "properties": {"mixpanel": "the full properties object as JSON text"},
}


def names(table: str) -> tuple[str, ...]:
    """The table's column names, in order."""
    return tuple(name for name, _ in columns(table))


def columns(table: str) -> Columns:
    try:
        return COLUMNS[table]
    except KeyError:
        raise ValueError(f"no table {table!r}; Mixpanel's tables are {', '.join(TABLES)}") from None


def typed(table: str, types: Mapping[str, str], added: Columns = ()) -> Columns:
    """The table's (name, declared type) under a dialect's type map, then any `added` columns."""
    return tuple((name, types[kind]) for name, kind in columns(table)) + tuple(added)


def dialect_columns(dialect: str, table: str) -> Columns:
    """What `dialect` declares for `table`: Mixpanel's columns in its types, plus its additions."""
    return typed(table, DIALECTS[dialect], ADDED_COLUMNS.get(dialect, {}).get(table, ()))


def parquet_json_type() -> pa.DataType:
    """Parquet's JSON logical type where pyarrow has the arrow.json extension (>= 19), else a string."""
    import pyarrow as pa

    return pa.json_() if hasattr(pa, "json_") else pa.string()


def parquet_types() -> dict[str, pa.DataType]:
    """The Parquet type map (pyarrow types, so built on call rather than at import)."""
    import pyarrow as pa

    return {STRING: pa.string(), JSON: parquet_json_type(), TIMESTAMP: pa.timestamp("us", tz="UTC")}


def parquet_schema(table: str) -> pa.Schema:
    """The Arrow schema of the table's Parquet part files."""
    import pyarrow as pa

    if table not in COLUMNS:
        raise ValueError(f"no Parquet schema for table {table!r}")
    types = parquet_types()
    return pa.schema([pa.field(name, types[kind], metadata=PARQUET_METADATA.get(name)) for name, kind in COLUMNS[table]])
