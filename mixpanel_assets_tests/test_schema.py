"""schema.py is the one definition of Mixpanel's three tables: every dialect's type map covers
every column, the Parquet schema is what written part files hold, the warehouses declare what it
says, it stays the lowest layer, and no other module spells the column list out again."""

from __future__ import annotations

import ast
import io
import re
import subprocess
import sys
import tokenize
from pathlib import Path

import orjson
import pyarrow.parquet as pq
import pytest

from mixpanel_assets import schema
from mixpanel_assets.schema import (
    ADDED_COLUMNS,
    DIALECTS,
    EVENTS_TABLE,
    IDENTITY_TABLE,
    LOGICAL_TYPES,
    PEOPLE_TABLE,
    TABLES,
    dialect_columns,
    names,
    parquet_schema,
    parquet_types,
    typed,
)
from mixpanel_assets.staging.stage import stage_events, stage_table
from mixpanel_assets.transform.records import identity_row, profile_row
from mixpanel_assets.windows import Window
from mixpanel_assets_tests.helpers import epoch, event_line

PACKAGE = Path(schema.__file__).parent
DAY = Window(epoch("2024-11-22T00:00:00"), epoch("2024-11-23T00:00:00"))


@pytest.mark.parametrize("dialect", sorted(DIALECTS))
def test_every_dialect_types_every_column_of_every_table(dialect):
    types = DIALECTS[dialect]
    assert set(types) == set(LOGICAL_TYPES), f"{dialect} maps {sorted(types)}, not every logical type"
    for table in TABLES:
        declared = typed(table, types)
        assert [n for n, _ in declared] == list(names(table))
        assert all(isinstance(t, str) and t for _, t in declared), f"{dialect} leaves a column of {table} untyped"


def test_parquet_types_every_logical_type():
    assert set(parquet_types()) == set(LOGICAL_TYPES)
    for table in TABLES:
        assert parquet_schema(table).names == list(names(table))


def test_additions_come_after_mixpanels_columns_and_only_where_listed():
    for dialect in DIALECTS:
        for table in TABLES:
            added = ADDED_COLUMNS.get(dialect, {}).get(table, ())
            assert dialect_columns(dialect, table) == typed(table, DIALECTS[dialect]) + added
    # BigQuery's mp_date went when mp_master_event became ingestion-time partitioned (issue 15).
    assert ADDED_COLUMNS == {}
    assert dialect_columns("bigquery", EVENTS_TABLE) == typed(EVENTS_TABLE, DIALECTS["bigquery"])


def test_unknown_table_is_named_in_the_error():
    with pytest.raises(ValueError, match="mp_master_events"):
        names("mp_master_events")
    with pytest.raises(ValueError, match="mp_master_events"):
        parquet_schema("mp_master_events")


def _parquet_parts(tmp_path) -> dict[str, Path]:
    """One Parquet part per table, written by the staging path the exports use."""
    lines = [event_line("Sign Up", DAY.start + 1.5, "u1", "i-1", **{"$device_id": "d1", "$user_id": "u1"}),
             event_line("Page View", DAY.start + 60, "u2", None)]
    events = stage_events([b"\n".join(lines) + b"\n"], [DAY], ["2024-11-22"], staging_root=tmp_path)
    people = stage_table([profile_row(orjson.dumps({"$distinct_id": "u1", "$properties": {"$city": "Köln"}}))[1]],
                         PEOPLE_TABLE, staging_root=tmp_path)
    identity = stage_table([identity_row("$device:d1", "u1")], IDENTITY_TABLE, staging_root=tmp_path)
    try:
        (event_part,) = events.windows[0].write_parts(tmp_path / "out-e", fmt="parquet", compression="zstd")
        (people_part,) = people.write_parts(tmp_path / "out-p", fmt="parquet", compression="zstd", table=PEOPLE_TABLE)
        (identity_part,) = identity.write_parts(tmp_path / "out-i", fmt="parquet", compression="zstd",
                                                table=IDENTITY_TABLE)
    finally:
        events.cleanup()
        people.cleanup()
        identity.cleanup()
    return {EVENTS_TABLE: event_part.path, PEOPLE_TABLE: people_part.path, IDENTITY_TABLE: identity_part.path}


def test_parquet_schema_is_what_a_written_part_file_holds(tmp_path):
    parts = _parquet_parts(tmp_path)
    for table, path in parts.items():
        found = pq.read_schema(path)
        wanted = parquet_schema(table)
        assert found.equals(wanted, check_metadata=True), f"{table}: {found} != {wanted}"
        assert [f.metadata for f in found] == [f.metadata for f in wanted]
    events = pq.read_schema(parts[EVENTS_TABLE])
    assert str(events.field("time").type) == "timestamp[us, tz=UTC]"
    assert events.field("properties").metadata == {b"mixpanel": b"the full properties object as JSON text"}


def test_duckdb_declares_the_duckdb_type_map():
    import duckdb

    from mixpanel_assets.destinations.warehouses.duckdb import ensure_schema

    with duckdb.connect() as conn:
        ensure_schema(conn, "main")
        for table in TABLES:
            found = conn.execute("SELECT column_name, data_type FROM information_schema.columns "
                                 "WHERE table_name = ? ORDER BY ordinal_position", [table]).fetchall()
            assert tuple(found) == dialect_columns("duckdb", table)


def test_warehouse_schemas_are_the_type_maps():
    from mixpanel_assets.destinations.warehouses import bigquery, redshift, snowflake

    assert bigquery.EVENT_SCHEMA == dialect_columns("bigquery", EVENTS_TABLE)
    assert bigquery.TABLE_SCHEMAS == {t: dialect_columns("bigquery", t) for t in (PEOPLE_TABLE, IDENTITY_TABLE)}
    assert [n for n, _ in bigquery.EVENT_LOAD_SCHEMA] == list(names(EVENTS_TABLE))
    assert redshift.COLUMNS == {t: dialect_columns("glue", t) for t in TABLES}
    view = next(s for s in snowflake._DDL if s.startswith("CREATE VIEW IF NOT EXISTS {q}.MP_MASTER_EVENT AS"))
    assert re.findall(r" AS (\w+)(?:,| FROM)", view) == [n.upper() for n in names(EVENTS_TABLE)]
    for table in (PEOPLE_TABLE, IDENTITY_TABLE):
        declared = ", ".join(f"{n.upper()} {t}" for n, t in dialect_columns("snowflake", table))
        assert f"CREATE TABLE IF NOT EXISTS {{q}}.{table.upper()} ({declared})" in snowflake._DDL


def test_schema_is_the_lowest_layer_and_imports_no_pyarrow():
    imports = [n for n in ast.walk(ast.parse(Path(schema.__file__).read_text()))
               if isinstance(n, (ast.Import, ast.ImportFrom))]
    ours = [ast.unparse(n) for n in imports if "mixpanel_assets" in ast.unparse(n)]
    assert not ours, f"schema.py imports {ours}"
    probe = ("import sys, mixpanel_assets.schema; "
             "print(sorted(m for m in sys.modules if m.startswith(('mixpanel_assets', 'pyarrow'))))")
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True,
                            cwd=PACKAGE.parent).stdout.strip()
    assert loaded == "['mixpanel_assets', 'mixpanel_assets.schema']"


# --- the column list is spelled out once ------------------------------------------------------
# The column names that are ours alone: `distinct_id`, `time` and `properties` are also the keys of
# Mixpanel's own export lines, so a literal of them says nothing. `$device_id` and friends are
# Mixpanel's property names, not our columns.
_OUR_COLUMNS = re.compile(r"(?<![\w$])(device_id|event_name|insert_id|user_id|resolved_distinct_id)(?!\w)",
                          re.IGNORECASE)
_ALL = frozenset({"device_id", "event_name", "insert_id", "user_id", "resolved_distinct_id"})

# Module -> (the names it may spell out, why). Anything else names the columns through schema.py.
ALLOWED: dict[str, tuple[frozenset[str], str]] = {
    "schema.py": (_ALL, "the definition"),
    "transform/records.py": (_ALL, "builds the rows: byte templates of each table's JSON-lines row, in column order"),
    "transform/events.py": (_ALL, "builds each mp_master_event row from its line: one dict literal in column order, "
                                  "encoded by orjson in the workers' hot loop"),
    "staging/parquet_parts.py": (_ALL, "cuts each column out of a staged row into its Arrow array"),
    "transform/identity.py": (frozenset({"resolved_distinct_id", "user_id"}),
                              "the identity resolution SQL, which computes the mapping rows (user_id: a SQL alias)"),
    "defs/gdpr.py": (frozenset({"resolved_distinct_id"}),
                     "expands deleted users through the identity resolution's distinct_id -> resolved_distinct_id rows"),
    "defs/assets.py": (frozenset({"resolved_distinct_id"}), "the identity asset's description says what it maps"),
    "mixpanel/demo.py": (frozenset({"user_id"}), "the demo's generated users carry their own user_id, not a column"),
    **{f"destinations/warehouses/{w}.py": (frozenset({"resolved_distinct_id"}),
                                           "the resolved events view: COALESCE(resolved_distinct_id, distinct_id)")
       for w in ("duckdb", "bigquery", "snowflake")},
}


def _spelled_columns(path: Path) -> dict[str, list[int]]:
    """Column names inside string literals (f-string expressions and docstrings left out), with lines."""
    source = path.read_text()
    docstrings = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
                docstrings.add(first.lineno)
    found: dict[str, list[int]] = {}
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type != tokenize.STRING or token.start[0] in docstrings:
            continue
        text = token.string
        prefix = text[: len(text) - len(text.lstrip("rbfuRBFU"))]
        if "f" in prefix.lower():
            text = re.sub(r"\{[^{}]*\}", "", text.replace("{{", "").replace("}}", ""))
        for name in _OUR_COLUMNS.findall(text):
            found.setdefault(name.lower(), []).append(token.start[0])
    return found


def test_the_column_list_is_spelled_out_only_where_rows_are_built():
    unexpected = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        module = path.relative_to(PACKAGE).as_posix()
        allowed = ALLOWED.get(module, (frozenset(), ""))[0]
        extra = {name: lines for name, lines in _spelled_columns(path).items() if name not in allowed}
        if extra:
            unexpected[module] = extra
    assert not unexpected, f"column names spelled out instead of taken from schema.py: {unexpected}"
    missing = [m for m in ALLOWED if not (PACKAGE / m).exists()]
    assert not missing, f"allowed modules that no longer exist (drop them from ALLOWED): {missing}"


def test_the_scan_sees_column_lists(tmp_path):
    """The scan itself: a spelled-out list is found, f-string expressions and Mixpanel's names are not."""
    sample = tmp_path / "sample.py"
    sample.write_text('"""device_id"""\nCOLS = ("device_id", "INSERT_ID")\nX = f"{insert_id} $user_id"\n'
                      'Y = b\'{"event_name":\'  # user_id\n')
    assert _spelled_columns(sample) == {"device_id": [2], "insert_id": [2], "event_name": [4]}
