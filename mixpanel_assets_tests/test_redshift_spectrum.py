"""Redshift Spectrum end to end on moto (S3 + Glue + Redshift Data API): Dagster runs -> S3 files ->
Glue tables and mp_date partitions -> the external schema statement.

moto runs no queries, so the natural queries are answered by reading what Spectrum would read: the
Glue tables' and partitions' locations, every file below them except `_`/`.`-prefixed ones, with
the columns Glue declares. That checks the catalog and the files together; Redshift's SQL itself
is not run here.
"""

from __future__ import annotations

import collections
import gzip
import re
import uuid

import dagster as dg
import orjson
import pytest

from mixpanel_assets.destinations.warehouses.redshift import external_schema_sql
from mixpanel_assets_tests.emulators.fixtures import unique_name
from mixpanel_assets_tests.emulators.servers import MOTO_KEY_ID, MOTO_REGION, MOTO_SECRET
from mixpanel_assets_tests.helpers import definitions, epoch, event_line, run_partition
from mixpanel_assets_tests.warehouse_cases import (
    DAY,
    DAY_UTC,
    HOUR,
    HOUR_UTC,
    PROFILES,
    PROJECT_ID,
    TZ,
    expected_cities,
    expected_unique_users,
    kept_events,
    pipelines,
    project,
    source_lines,
    write_source,
)

pytestmark = pytest.mark.emulator

KEY_ENV, SECRET_ENV = "MP_TEST_AWS_KEY_ID", "MP_TEST_AWS_SECRET"
ROLE = "arn:aws:iam::123456789012:role/mixpanel-spectrum"
WORKGROUP = "mixpanel-wg"


def redshift(moto, bucket, glue_database, **extra):
    return {"type": "redshift", "bucket": bucket, "region": MOTO_REGION, "endpoint_url": moto.endpoint_url,
            "access_key_id_env": KEY_ENV, "secret_access_key_env": SECRET_ENV, "glue_database": glue_database,
            "iam_role_arn": ROLE, "workgroup": WORKGROUP, "statement_timeout_seconds": 0.2, **extra}


@pytest.fixture(scope="module")
def aws_keys():
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(KEY_ENV, MOTO_KEY_ID)
        patch.setenv(SECRET_ENV, MOTO_SECRET)
        yield


class Export:
    def __init__(self, moto, tmp, generated_day, glue_databases=None):
        self.s3, self.glue, self.data_api = moto.client("s3"), moto.client("glue"), moto.client("redshift-data")
        self.bucket = unique_name("spectrum")
        self.s3.create_bucket(Bucket=self.bucket)
        self.daily, self.hourly = (glue_databases or [f"mp_{uuid.uuid4().hex[:8]}" for _ in range(2)])
        for name in {self.daily, self.hourly} - set(glue_databases or ()):
            self.glue.create_database(DatabaseInput={"Name": name})
        self.source = write_source(tmp / "mixpanel_files", generated_day)
        self.lines = source_lines(generated_day)
        daily = redshift(moto, self.bucket, self.daily, prefix="daily")
        hourly = redshift(moto, self.bucket, self.hourly, prefix="hourly")
        self.defs = definitions(tmp, project(self.source), pipelines(daily, hourly, daily, "rs"))

    def keys(self, prefix: str) -> list[str]:
        pages = self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        return sorted(o["Key"] for page in pages for o in page.get("Contents", ()))

    def spectrum_rows(self, database: str, table: str) -> list[dict]:
        """What Spectrum reads: each location's files, recursively, minus `_`/`.`-prefixed names; the
        declared columns only, the partition value added as a column."""
        spec = self.glue.get_table(DatabaseName=database, Name=table)["Table"]
        columns = [c["Name"] for c in spec["StorageDescriptor"]["Columns"]]
        keys = [k["Name"] for k in spec.get("PartitionKeys", [])]
        if keys:
            partitions = self.glue.get_partitions(DatabaseName=database, TableName=table)["Partitions"]
            places = [(p["StorageDescriptor"]["Location"], dict(zip(keys, p["Values"]))) for p in partitions]
        else:
            places = [(spec["StorageDescriptor"]["Location"], {})]
        rows = []
        for location, values in places:
            bucket, _, prefix = location.removeprefix("s3://").partition("/")
            assert bucket == self.bucket
            for key in self.keys(prefix):
                if re.search(r"(^|/)[_.]", key[len(prefix):]):
                    continue
                body = self.s3.get_object(Bucket=bucket, Key=key)["Body"].read()
                text = gzip.decompress(body) if key.endswith(".gz") else body
                for line in text.splitlines():
                    row = orjson.loads(line)
                    rows.append({**{c: _as_declared(row.get(c)) for c in columns}, **values})
        return rows


def _as_declared(value):
    """Glue declares `properties` as string: the JSON SerDe hands an object over as its JSON text."""
    return orjson.dumps(value).decode() if isinstance(value, (dict, list)) else value


@pytest.fixture(scope="module")
def exported(moto_server, generated_day, tmp_path_factory, aws_keys):
    export = Export(moto_server, tmp_path_factory.mktemp("rs"), generated_day)
    with dg.instance_for_test() as instance:
        export.results = {
            "daily": run_partition(export.defs, "rs_daily_job", instance, DAY),
            "hourly": run_partition(export.defs, "rs_hourly_job", instance, HOUR),
            "people": run_partition(export.defs, "rs_people_job", instance),
            "identity": run_partition(export.defs, "rs_identity_job", instance),
        }
        export.logs = {name: [e.message for e in instance.all_logs(result.run_id)]
                       for name, result in export.results.items()}
    yield export


def test_a_daily_partition_is_an_mp_date_partition_at_its_day_folder(exported):
    folder = f"daily/{PROJECT_ID}/mp_master_event/2024/11/22/"
    names = [k.removeprefix(folder) for k in exported.keys(folder)]
    assert "_manifest.json" in names and "_complete" in names
    assert "manifest.json" not in names and "complete" not in names  # Spectrum would read them as rows
    assert all(re.fullmatch(r"part-[0-9a-f]{10}-\d{5}\.json\.gz", n) for n in names if not n.startswith("_"))
    (partition,) = exported.glue.get_partitions(DatabaseName=exported.daily, TableName="mp_master_event")["Partitions"]
    assert partition["Values"] == [DAY]
    assert partition["StorageDescriptor"]["Location"] == f"s3://{exported.bucket}/{folder}"
    rows = exported.spectrum_rows(exported.daily, "mp_master_event")
    assert len(rows) == len(kept_events(exported.lines, DAY_UTC))
    assert {r["mp_date"] for r in rows} == {DAY}


def test_an_hourly_partition_registers_the_day_folder_that_holds_its_hour(exported):
    (partition,) = exported.glue.get_partitions(DatabaseName=exported.hourly, TableName="mp_master_event")["Partitions"]
    day = f"hourly/{PROJECT_ID}/mp_master_event/2024/11/22/"
    assert partition["Values"] == [DAY] and partition["StorageDescriptor"]["Location"] == f"s3://{exported.bucket}/{day}"
    assert {k.removeprefix(day).split("/")[0] for k in exported.keys(day)} == {"05"}  # 05:00 in Los Angeles
    assert len(exported.spectrum_rows(exported.hourly, "mp_master_event")) == len(kept_events(exported.lines, HOUR_UTC))


def test_the_glue_tables_declare_mixpanels_columns_over_json_lines(exported):
    table = exported.glue.get_table(DatabaseName=exported.daily, Name="mp_master_event")["Table"]
    sd = table["StorageDescriptor"]
    assert [(c["Name"], c["Type"]) for c in sd["Columns"]] == [
        ("device_id", "string"), ("distinct_id", "string"), ("event_name", "string"), ("insert_id", "string"),
        ("properties", "string"), ("time", "double"), ("user_id", "string")]
    assert [(k["Name"], k["Type"]) for k in table["PartitionKeys"]] == [("mp_date", "string")]
    assert TZ in table["PartitionKeys"][0]["Comment"] and table["Parameters"]["mp_date.timezone"] == TZ
    assert sd["SerdeInfo"]["SerializationLibrary"] == "org.openx.data.jsonserde.JsonSerDe"
    assert table["TableType"] == "EXTERNAL_TABLE" and table["Parameters"]["classification"] == "json"
    people = exported.glue.get_table(DatabaseName=exported.daily, Name="mp_people_data")["Table"]
    identity = exported.glue.get_table(DatabaseName=exported.daily, Name="mp_identity_mappings_data")["Table"]
    assert people["StorageDescriptor"]["Location"] == f"s3://{exported.bucket}/daily/{PROJECT_ID}/mp_people_data/"
    assert [c["Name"] for c in identity["StorageDescriptor"]["Columns"]] == ["distinct_id", "resolved_distinct_id"]
    assert not people.get("PartitionKeys")


def test_people_and_identity_tables_read_the_exported_rows(exported):
    people = exported.spectrum_rows(exported.daily, "mp_people_data")
    assert len(people) == PROFILES
    assert orjson.loads(next(p for p in people if p["distinct_id"] == "u7")["properties"])["$email"] == "u7@example.com"
    mappings = exported.spectrum_rows(exported.daily, "mp_identity_mappings_data")
    assert mappings and len({m["distinct_id"] for m in mappings}) == len(mappings)


def test_the_asset_checks_read_back_every_export_and_pass(exported):
    read_back = {"row_count_matches_source", "no_duplicate_dedup_keys", "schema_matches_mixpanel",
                 "row_count_matches_export", "distinct_id_unique"}
    evaluations = [e for result in exported.results.values() for e in result.get_asset_check_evaluations()
                   if e.check_name in read_back]
    assert {e.check_name for e in evaluations} == read_back
    assert [(e.asset_key.to_user_string(), e.check_name, e.description) for e in evaluations if not e.passed] == []
    # Spectrum's data is its S3 files: proved from their manifests and listings, like the s3 destination.
    assert {e.metadata["method"].value for e in evaluations} == {"manifest"}

def test_the_natural_queries_have_the_expected_answers_over_the_catalog(exported):
    kept = kept_events(exported.lines, DAY_UTC)
    events = exported.spectrum_rows(exported.daily, "mp_master_event")
    # SELECT mp_date, COUNT(*) FROM mp_json_export.mp_master_event GROUP BY mp_date
    assert collections.Counter(r["mp_date"] for r in events) == {DAY: len(kept)}
    # COUNT(DISTINCT COALESCE(m.resolved_distinct_id, e.distinct_id)) ... LEFT JOIN mp_identity_mappings_data m
    mapping = {m["distinct_id"]: m["resolved_distinct_id"]
               for m in exported.spectrum_rows(exported.daily, "mp_identity_mappings_data")}
    assert len({mapping.get(r["distinct_id"], r["distinct_id"]) for r in events}) == expected_unique_users(kept, mapping)
    # json_extract_path_text(properties, '$city')
    cities = collections.Counter(orjson.loads(r["properties"]).get("$city") for r in events)
    assert dict(cities) == expected_cities(kept)


def test_the_external_schema_statement_is_logged_and_sent_to_the_redshift_workgroup(exported):
    sql = external_schema_sql("mp_json_export", exported.daily, MOTO_REGION, ROLE)
    assert sql.startswith("CREATE EXTERNAL SCHEMA IF NOT EXISTS mp_json_export\nFROM DATA CATALOG DATABASE")
    assert any(sql in message for message in exported.logs["daily"])
    (waiting,) = [m for m in exported.logs["daily"] if "still" in m and "statement" in m]
    statement = re.search(r"statement ([0-9a-f-]{36})", waiting).group(1)
    described = exported.data_api.describe_statement(Id=statement)
    assert described["QueryString"] == sql and described["Database"] == "dev"


def test_rerunning_a_partition_replaces_its_files_and_keeps_one_glue_partition(
        moto_server, generated_day, tmp_path, instance, aws_keys):
    export = Export(moto_server, tmp_path, generated_day)
    run_partition(export.defs, "rs_daily_job", instance, DAY)
    folder = f"daily/{PROJECT_ID}/mp_master_event/2024/11/22/"
    before = export.keys(folder)
    late = event_line("Late Event", epoch("2024-11-22T13:30:00"), "late_user", "late-1", **{"$city": "Lviv"})
    (export.source / "2024-11-22-late.jsonl").write_bytes(late + b"\n")
    run_partition(export.defs, "rs_daily_job", instance, DAY)
    after = export.keys(folder)
    assert len(after) == len(before) and after != before  # new parts replaced the old ones
    partitions = export.glue.get_partitions(DatabaseName=export.daily, TableName="mp_master_event")["Partitions"]
    assert [p["Values"] for p in partitions] == [[DAY]]
    rows = export.spectrum_rows(export.daily, "mp_master_event")
    assert len(rows) == len(kept_events(export.lines, DAY_UTC)) + 1
    assert [r["distinct_id"] for r in rows if r["event_name"] == "Late Event"] == ["late_user"]


def test_a_missing_glue_database_fails_at_once_naming_it_and_writes_nothing(
        moto_server, generated_day, tmp_path, instance, aws_keys):
    export = Export(moto_server, tmp_path, generated_day, glue_databases=["no_such_db", "no_such_db_either"])
    result = run_partition(export.defs, "rs_daily_job", instance, DAY, raise_on_error=False)
    assert not result.success
    (failure,) = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    message = failure.step_failure_data.error.message
    assert "pipeline 'rs_daily'" in message and "Glue database 'no_such_db' does not exist" in message
    assert failure.step_failure_data.user_failure_data is not None  # dg.Failure: no step retries
    assert export.keys("daily/") == []
