"""Start bqemulator (BigQuery REST + gRPC on 127.0.0.1) offline, for the BigQuery destination tests.

Runs in its own virtualenv (.venv-bq, `make setup-test`): bqemulator pins a sqlglot that fakesnow
cannot use. Patches, all to what the emulator does, never to our code:
- skip the DuckDB 'spatial' extension download (it needs the internet; GEOGRAPHY, unused here,
  becomes unavailable),
- read gzip-compressed newline-delimited JSON uploads, as BigQuery does: the emulator stores an
  upload as `<id>.bin` and DuckDB infers compression from the file name only,
- ingestion-time partitions, which bqemulator does not keep (it stores no partition per row and
  reads `_PARTITIONTIME` as CURRENT_TIMESTAMP(); a query job into `table$YYYYMMDD` reports success
  and writes nothing). Here a row's partition is *simulated* as the date of its `time` column in
  the timezone BQEMU_PARTITION_TIMEZONE (the test project's): `_PARTITIONTIME` / `_PARTITIONDATE`
  read as that date; a query job with WRITE_TRUNCATE into `table$YYYYMMDD` deletes the rows of
  that simulated partition and appends the query's rows; `INSERT (_PARTITIONTIME, ...)` drops the
  written partition value. This holds for tables whose rows sit in the partition of their local
  date, which is what the exporter writes; which partition a job really names is checked on the
  requests the client sends (test_bigquery_partitions.py), not here,
- `CREATE TABLE ... PARTITION BY _PARTITIONDATE` records DAY partitioning without a field, as
  BigQuery does (bqemulator records none), and its JSON columns stay JSON (bqemulator reads the
  schema back from DuckDB, where JSON becomes STRING).

usage: python bqemu_server.py REST_PORT GRPC_PORT
"""

import dataclasses
import os
import re
import sys

import sqlglot
from bqemulator.api.routes import jobs
from bqemulator.catalog import ddl_sync
from bqemulator.catalog.ddl_sync import TimePartitioning
from bqemulator.catalog.models import TableSchema
from bqemulator.jobs import executor
from bqemulator.scripting import interpreter
from bqemulator.sql import translator
from bqemulator.storage import engine
from sqlglot import exp

engine.DuckDBEngine._load_spatial = lambda self: None


def _load_json(path, target_ref, ctx):
    with open(path, "rb") as upload:
        gzipped = upload.read(2) == b"\x1f\x8b"
    ctx.engine.execute(f"COPY {target_ref} FROM ? (FORMAT JSON{', COMPRESSION gzip' if gzipped else ''})", [path])


executor._LOAD_FORMAT_HANDLERS["NEWLINE_DELIMITED_JSON"] = _load_json
executor._LOAD_FORMAT_HANDLERS["JSON"] = _load_json

PARTITION_TZ = os.environ.get("BQEMU_PARTITION_TIMEZONE", "UTC").replace("'", "")
_PSEUDO = re.compile(r"((?:`[^`]+`|\b\w+)\.)?\b(_PARTITIONTIME|_PARTITIONDATE)\b", re.IGNORECASE)


def _without_written_partition(sql: str) -> str:
    """`INSERT INTO t (_PARTITIONTIME, a, ...) SELECT x, a, ...`: drop the column and its value."""
    if not re.search(r"\(\s*_PARTITIONTIME\s*,", sql, re.IGNORECASE):
        return sql
    statements = []
    for tree in sqlglot.parse(sql, read="bigquery"):
        if isinstance(tree, exp.Insert) and isinstance(tree.this, exp.Schema):
            names = [c.name.upper() for c in tree.this.expressions]
            if "_PARTITIONTIME" in names:
                i = names.index("_PARTITIONTIME")
                tree.this.expressions.pop(i)
                select = tree.expression
                if isinstance(select, exp.Select):
                    select.expressions.pop(i)
                elif isinstance(select, exp.Values):
                    for row in select.expressions:
                        row.expressions.pop(i)
        statements.append(tree.sql(dialect="bigquery"))
    return ";\n".join(statements)


def _partition_pseudo_columns(sql: str) -> str:
    sql = _without_written_partition(sql)

    def simulated(match: re.Match) -> str:
        date = f"DATE({match.group(1) or ''}time, '{PARTITION_TZ}')"
        return date if match.group(2).upper() == "_PARTITIONDATE" else f"TIMESTAMP({date})"

    return _PSEUDO.sub(simulated, sql)


translator.rewrite_partition_pseudo_columns = _partition_pseudo_columns
_DECORATED = re.compile(r"^(?P<table>[A-Za-z0-9_]+)\$(?P<day>\d{8})$")
_handle_query_job = jobs._handle_query_job


async def _decorated_query_job(project_id, job_id, config, **kwargs):
    """A query job writing `table$YYYYMMDD` with WRITE_TRUNCATE becomes a script replacing the
    simulated partition: the query's rows are computed first (they may read the partition)."""
    query = config.get("query", {})
    destination = query.get("destinationTable") or {}
    match = _DECORATED.match(destination.get("tableId", ""))
    if match and query.get("writeDisposition") == "WRITE_TRUNCATE":
        project = destination.get("projectId") or project_id
        base = f"`{project}.{destination['datasetId']}.{match['table']}`"
        held = f"`{project}.{destination['datasetId']}._bqemu_partition_{job_id.replace('-', '_')}`"
        day = f"{match['day'][:4]}-{match['day'][4:6]}-{match['day'][6:]}"
        script = (f"CREATE TABLE {held} AS {query['query']};\n"
                  f"DELETE FROM {base} WHERE _PARTITIONDATE = DATE '{day}';\n"
                  f"INSERT INTO {base} SELECT * FROM {held};\n"
                  f"DROP TABLE {held};")
        query = {k: v for k, v in query.items()
                 if k not in ("destinationTable", "writeDisposition", "createDisposition")}
        config = {**config, "query": {**query, "query": script}}
    return await _handle_query_job(project_id, job_id, config, **kwargs)


jobs._handle_query_job = _decorated_query_job
_extract_ddl_metadata = ddl_sync._extract_ddl_metadata
_INGESTION_DDL = re.compile(r"PARTITION\s+BY\s+(?:DATE\s*\(\s*)?_PARTITION(?:DATE|TIME)\b", re.IGNORECASE)


def _ddl_metadata(bq_sql):
    """`CREATE TABLE ... PARTITION BY _PARTITIONDATE` makes an ingestion-time partitioned table, as
    in BigQuery: DAY partitioning without a field (bqemulator records no partitioning)."""
    extras = _extract_ddl_metadata(bq_sql)
    if extras.time_partitioning is None and _INGESTION_DDL.search(bq_sql):
        return dataclasses.replace(extras, time_partitioning=TimePartitioning(type="DAY", field=None))
    return extras


ddl_sync._extract_ddl_metadata = _ddl_metadata
_sync_created_table = ddl_sync.sync_created_table


def _sync_json_columns(bq_sql, project_id, ctx):
    """A JSON column declared by `CREATE TABLE` stays JSON in the table's schema, as in BigQuery
    (bqemulator reads the schema back from DuckDB, where it becomes STRING)."""
    _sync_created_table(bq_sql, project_id, ctx)
    target = ddl_sync._detect_plain_create_table(bq_sql)
    if target is None:
        return
    declared = {c.name.lower() for c in sqlglot.parse_one(bq_sql, read="bigquery").find_all(exp.ColumnDef)
                if c.args.get("kind") is not None and c.args["kind"].this == exp.DataType.Type.JSON}
    meta = ctx.catalog.get_table(*ddl_sync._split_target(target, project_id)) if declared else None
    if meta is None:
        return
    fields = tuple(f.model_copy(update={"type": "JSON"}) if f.name.lower() in declared else f
                   for f in meta.schema_.fields)
    ctx.catalog.update_table(meta.model_copy(update={"schema_": TableSchema(fields=fields)}))


executor.sync_created_table = interpreter.sync_created_table = _sync_json_columns

from bqemulator.cli import main  # after the patches, so the server it starts uses them

sys.argv = ["bqemulator", "start", "--rest-host", "127.0.0.1", "--rest-port", sys.argv[1], "--grpc-host", "127.0.0.1",
            "--grpc-port", sys.argv[2], "--ephemeral", "--project", "test-project", "--log-level", "warning"]
main()
