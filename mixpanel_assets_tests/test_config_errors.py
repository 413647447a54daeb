"""Configuration values that crashed later or passed silently: each is now a ConfigError, read as users read
it (pipelines.yaml through load_pipelines_file; defs.yaml through load_defs_yaml and through dg's component
loader), naming the file, the pipeline (for a pipeline's field) and the field, and nothing else: no second,
misleading "Tuple should have at least 1 item" about the whole list.
"""

from __future__ import annotations

import sys
import textwrap
import uuid
from pathlib import Path

import dagster as dg
import pytest

from mixpanel_assets.component import load_defs_yaml
from mixpanel_assets.config import ConfigError, load_pipelines_file, months_before, parse_pipelines
from mixpanel_assets.destinations.warehouses.redshift import external_schema_sql
from mixpanel_assets_tests.test_component import _write_project

PROJECT = """\
project:
  id: 42
  source: {type: demo}
"""
EVENTS = """\
pipelines:
  - name: ev
    data_source: events
    from_date: 2026-11-01
    destination: {type: local, path: out}
"""
REDSHIFT = """\
pipelines:
  - name: ev
    data_source: events
    from_date: 2026-11-01
    destination:
      type: redshift
      bucket: acme-mixpanel
      glue_database: mixpanel
      region: %s
      iam_role_arn: %s
"""


def _second(name: str, destination: str, frequency: str = "hourly") -> str:
    return f"""\
  - name: {name}
    data_source: events
    frequency: {frequency}
    from_date: 2026-11-01
    destination: {destination}
"""


def _with(text: str, after: str, line: str) -> str:
    """`text` with `line` inserted after the line that ends with `after` (same YAML block)."""
    head, sep, tail = text.partition(after + "\n")
    assert sep, after
    return head + sep + line + "\n" + tail


# (case, file text, the pipeline named (None: a project field), the field named, words of the reason)
CASES = [
    ("max_backfill_months_huge",
     _with(PROJECT, "source: {type: demo}", "  limits: {max_backfill_months: 100000}")
     + _with(EVENTS, "from_date: 2026-11-01", "    created: 2026-11-02"),
     None, "field project.limits.max_backfill_months", "less than or equal to 1200"),
    ("to_date_year_9999", _with(PROJECT + EVENTS, "from_date: 2026-11-01", "    to_date: 9999-12-31"),
     "ev", "field to_date", "outside 2008-01-01..2099-12-31"),
    ("from_date_year_1_with_limits_off",
     _with(PROJECT, "source: {type: demo}", "  limits: {enforce_mixpanel_limits: false}")
     + EVENTS.replace("2026-11-01", "0001-01-01"),
     "ev", "field from_date", "outside 2008-01-01..2099-12-31"),
    ("created_before_mixpanel", _with(PROJECT + EVENTS, "from_date: 2026-11-01", "    created: 1970-01-01"),
     "ev", "field created", "outside 2008-01-01"),
    ("sync_max_age_days_huge",
     _with(PROJECT + EVENTS, "from_date: 2026-11-01", "    sync_window: {max_age_days: 1000000}"),
     "ev", "field sync_window.max_age_days", "less than or equal to 36600"),
    ("sync_probe_interval_infinite",
     _with(PROJECT + EVENTS, "from_date: 2026-11-01", "    sync_window: {probe_interval_hours: .inf}"),
     "ev", "field sync_window.probe_interval_hours", "finite number"),
    ("project_id_true", PROJECT.replace("id: 42", "id: true") + EVENTS,
     None, "field project.id", "valid integer, not true"),
    ("project_id_float", PROJECT.replace("id: 42", "id: 42.0") + EVENTS,
     None, "field project.id", "valid integer, not 42.0"),
    ("project_id_quoted", PROJECT.replace("id: 42", "id: '42'") + EVENTS,
     None, "field project.id", "valid integer, not a string (write it without quotes)"),
    ("sync_one_is_not_a_bool", _with(PROJECT + EVENTS, "from_date: 2026-11-01", "    sync: 1"),
     "ev", "field sync", "valid boolean, not 1"),
    ("demo_events_per_hour_true", PROJECT.replace("{type: demo}", "{type: demo, events_per_hour: true}") + EVENTS,
     None, "field project.source.events_per_hour", "valid integer"),
    ("timeout_infinite",
     PROJECT.replace("{type: demo}", "{type: mixpanel, timeout_seconds: .inf}") + EVENTS,
     None, "field project.source.timeout_seconds", "finite number"),
    ("export_url_ftp",
     PROJECT.replace("{type: demo}", "{type: mixpanel, export_url: 'ftp://data.mixpanel.com'}") + EVENTS,
     None, "field project.source.export_url",
     "not an https:// URL such as https://data-eu.mixpanel.com (it starts with ftp://)"),
    ("export_url_plain_http_to_a_remote_host",
     PROJECT.replace("{type: demo}", "{type: mixpanel, export_url: 'http://data.mixpanel.com'}") + EVENTS,
     None, "field project.source.export_url", "unencrypted"),
    ("engage_url_with_credentials",
     PROJECT.replace("{type: demo}", "{type: mixpanel, engage_url: 'https://u:p@mixpanel.com'}") + EVENTS,
     None, "field project.source.engage_url", "without credentials"),
    ("duplicate_key_in_a_destination",
     PROJECT + EVENTS.replace("destination: {type: local, path: out}",
                              "destination:\n      type: local\n      path: out\n      path: other"),
     "ev", "field destination.path", "'path' is given twice in one mapping, on lines 10 and 11"),
    ("duplicate_key_in_a_pipeline", _with(PROJECT + EVENTS, "from_date: 2026-11-01", "    from_date: 2026-10-01"),
     "ev", "field from_date", "'from_date' is given twice in one mapping, on lines 7 and 8"),
    ("duplicate_key_in_the_project", _with(PROJECT + EVENTS, "id: 42", "  id: 43"),
     None, "field project.id", "'id' is given twice"),
    ("same_folder_spelt_two_ways", PROJECT + EVENTS + _second("ev_hourly", "{type: local, path: ./out/}"),
     "'ev' and 'ev_hourly'", "field destination", "both export events to local folder"),
    ("one_table_folder_inside_the_other",
     PROJECT + EVENTS + _second("ev_hourly", "{type: local, path: out/42/mp_master_event/old}"),
     "'ev' and 'ev_hourly'", "field destination", "one table folder inside the other"),
    ("same_s3_prefix_spelt_two_ways",
     PROJECT + EVENTS.replace("{type: local, path: out}", "{type: s3, bucket: acme-mp, prefix: raw/}")
     + _second("ev_hourly", "{type: s3, bucket: acme-mp, prefix: ./raw//}"),
     "'ev' and 'ev_hourly'", "field destination", "both export events to S3 bucket acme-mp"),
    ("same_duckdb_spelt_two_ways",
     PROJECT + EVENTS.replace("{type: local, path: out}", "{type: duckdb, path: w.duckdb, schema: Main}")
     + _second("ev_hourly", "{type: duckdb, path: ./w.duckdb, schema: main}"),
     "'ev' and 'ev_hourly'", "field destination", "both export events to DuckDB"),
    ("redshift_role_arn_with_a_quote",
     PROJECT + REDSHIFT % ("us-east-1", "\"arn:aws:iam::123456789012:role/x';DROP SCHEMA s;--\""),
     "ev", "field destination.iam_role_arn", "not an IAM role ARN"),
    ("redshift_region_with_a_quote",
     PROJECT + REDSHIFT % ("\"us-east-1' IAM_ROLE 'x\"", "arn:aws:iam::123456789012:role/spectrum"),
     "ev", "field destination.region", "not an AWS region"),
    ("bad_value_in_one_pipeline", PROJECT + EVENTS.replace("data_source: events", "data_source: events\n    "
                                                           "frequency: weekly"),
     "ev", "field frequency", "'hourly' or 'daily'"),
    ("misspelt_key_gets_a_suggestion", _with(PROJECT + EVENTS, "from_date: 2026-11-01", "    frequncy: hourly"),
     "ev", "field frequncy", "unknown field; did you mean 'frequency'?"),
    ("misspelt_destination_key_gets_a_suggestion",
     PROJECT + EVENTS.replace("{type: local, path: out}", "{type: s3, bucket: acme-mp, prefx: raw}"),
     "ev", "field destination.prefx", "did you mean 'prefix'?"),
    ("empty_where", _with(PROJECT + EVENTS, "from_date: 2026-11-01", "    where: ''"),
     "ev", "field where", "is empty; give a value or leave the field out"),
    ("path_with_edge_spaces", PROJECT + EVENTS.replace("path: out}", "path: ' out'}"),
     "ev", "field destination.path", "starts or ends with spaces"),
    ("blank_event_name", _with(PROJECT + EVENTS, "from_date: 2026-11-01", "    events: ['  ']"),
     "ev", "field events", "non-empty event names"),
    ("huge_part_files_per_run",
     _with(PROJECT + EVENTS, "from_date: 2026-11-01", "    backfill_partitions_per_run: 2.0"),
     "ev", "field backfill_partitions_per_run", "valid integer"),
]
IDS = [case[0] for case in CASES]


def _assert_names_it(message: str, path: Path, pipeline: str | None, field: str, reason: str) -> None:
    assert str(path) in message, message
    if pipeline is not None:
        assert f"pipeline {pipeline}" in message or f"pipelines {pipeline}" in message, message
    assert field in message, message
    assert reason in message, message
    assert "Tuple should have" not in message, message
    assert "unreachable" not in message and "Overflow" not in message, message


def _pipeline(pipeline: str | None) -> str | None:
    return pipeline if pipeline is None or pipeline.startswith("'") else repr(pipeline)


def _defs_yaml(text: str) -> str:
    return "type: mixpanel_assets.MixpanelPipelines\nattributes:\n" + textwrap.indent(text, "  ")


@pytest.mark.parametrize(("case", "text", "pipeline", "field", "reason"), CASES, ids=IDS)
def test_a_pipelines_yaml_mistake_is_a_config_error_naming_file_pipeline_and_field(
        tmp_path, case, text, pipeline, field, reason):
    path = tmp_path / "pipelines.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_pipelines_file(path)
    _assert_names_it(str(info.value), path, _pipeline(pipeline), field, reason)


@pytest.mark.parametrize(("case", "text", "pipeline", "field", "reason"), CASES, ids=IDS)
def test_a_defs_yaml_mistake_is_a_config_error_naming_file_pipeline_and_field(
        tmp_path, case, text, pipeline, field, reason):
    path = tmp_path / "defs.yaml"
    path.write_text(_defs_yaml(text), encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_defs_yaml(path)
    # The defs.yaml has two more lines at the top and its blocks one level deeper.
    reason = _shift_lines(reason, 2)
    _assert_names_it(str(info.value), path, _pipeline(pipeline), field, reason)


DG_CASES = [c for c in CASES if c[0] in {
    "duplicate_key_in_a_destination", "to_date_year_9999", "sync_max_age_days_huge", "project_id_true",
    "export_url_plain_http_to_a_remote_host", "same_folder_spelt_two_ways", "redshift_role_arn_with_a_quote",
    "bad_value_in_one_pipeline", "misspelt_key_gets_a_suggestion"}]


@pytest.mark.parametrize(("case", "text", "pipeline", "field", "reason"), DG_CASES, ids=[c[0] for c in DG_CASES])
def test_dg_loading_a_defs_yaml_raises_the_same_config_error(tmp_path, monkeypatch, case, text, pipeline, field,
                                                              reason):
    """dg reads defs.yaml with its own YAML reader (which keeps the last of two equal keys): the
    component checks the file itself, and resolves folders against the project root."""
    module = f"cfg_{uuid.uuid4().hex[:8]}"
    _write_project(tmp_path, module, {"inst": _defs_yaml(text)})
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(Exception) as info:
        dg.load_from_defs_folder(path_within_project=tmp_path)
    errors = []
    error: BaseException | None = info.value
    while error is not None:
        errors.append(error)
        error = error.__cause__ or error.__context__
    config_errors = [e for e in errors if isinstance(e, ConfigError)]
    assert config_errors, [type(e).__name__ for e in errors]
    path = tmp_path / module / "defs" / "inst" / "defs.yaml"
    _assert_names_it(str(config_errors[0]), path, _pipeline(pipeline), field, _shift_lines(reason, 2))
    for module_name in [m for m in sys.modules if m.startswith(module)]:
        monkeypatch.delitem(sys.modules, module_name)


def _shift_lines(reason: str, by: int) -> str:
    import re

    return re.sub(r"lines (\d+) and (\d+)", lambda m: f"lines {int(m[1]) + by} and {int(m[2]) + by}", reason)


# --- what stays accepted ---------------------------------------------------------------------------

@pytest.mark.parametrize("url", ["https://data-eu.mixpanel.com", "http://127.0.0.1:8123", "http://localhost:9/x",
                                 "http://[::1]:8080", "https://proxy.internal:8443/mixpanel"])
def test_https_anywhere_and_plain_http_only_to_this_machine(url):
    raw = {"project": {"id": 42, "source": {"type": "mixpanel", "export_url": url, "engage_url": url}},
           "pipelines": [{"name": "p", "data_source": "people", "destination": {"type": "local", "path": "out"}}]}
    assert parse_pipelines(raw).project.source.export_url == url


def test_folders_side_by_side_in_one_bucket_do_not_overlap(tmp_path):
    """Prefixes `hourly` and `daily`, or the bucket root and `backup`: distinct table folders."""
    text = (PROJECT + EVENTS.replace("{type: local, path: out}", "{type: s3, bucket: acme-mp}")
            + _second("ev_hourly", "{type: s3, bucket: acme-mp, prefix: backup}")
            + _second("ev_local", "{type: local, path: out}", frequency="daily")
            .replace("from_date: 2026-11-01", "from_date: 2026-11-01\n    to_date: 2026-11-05")
            + _second("ev_local_copy", "{type: local, path: out/copy}", frequency="daily")
            .replace("from_date: 2026-11-01", "from_date: 2026-11-01\n    to_date: 2026-11-05"))
    path = tmp_path / "pipelines.yaml"
    path.write_text(text, encoding="utf-8")
    assert [p.name for p in load_pipelines_file(path).pipelines] == ["ev", "ev_hourly", "ev_local", "ev_local_copy"]


def test_the_same_folder_through_a_symlink_overlaps(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    path = tmp_path / "pipelines.yaml"
    path.write_text(PROJECT + EVENTS.replace("path: out", "path: real")
                    + _second("ev_hourly", "{type: local, path: link}"), encoding="utf-8")
    with pytest.raises(ConfigError, match="'ev' and 'ev_hourly', field destination: both export events"):
        load_pipelines_file(path)


def test_redshift_ddl_quotes_its_literals():
    """The model refuses quotes in the role and the region; the DDL quotes them anyway."""
    sql = external_schema_sql("mp", "mixpanel", "us-east-1", "arn:aws:iam::123456789012:role/o'brien")
    assert "IAM_ROLE 'arn:aws:iam::123456789012:role/o''brien';" in sql
    assert "REGION 'us-east-1'" in sql and "DATABASE 'mixpanel'" in sql


def test_months_before_never_asserts_unreachable():
    import datetime as dt

    assert months_before(dt.date(2026, 11, 30), 100_000) == dt.date.min
    assert months_before(dt.date(2026, 3, 31), 1) == dt.date(2026, 2, 28)
