"""pipelines.yaml validation: every mistake gets an error naming the file, the pipeline and the field."""

import pytest

from mixpanel_assets.config import ConfigError, load_pipelines_file, parse_pipelines

PROJECT = {"id": 42, "timezone": "Europe/Berlin", "source": {"type": "demo"}}


def events(name="ev", **overrides):
    pipeline = {"name": name, "data_source": "events", "from_date": "2026-11-01",
                "destination": {"type": "local", "path": "out"}}
    pipeline.update(overrides)
    return pipeline


def parse(pipelines, project=PROJECT):
    return parse_pipelines({"project": project, "pipelines": pipelines}, source="cfg.yaml")


def error_of(pipelines, project=PROJECT) -> str:
    with pytest.raises(ConfigError) as info:
        parse(pipelines, project)
    return str(info.value)


def test_a_minimal_events_pipeline_defaults_to_daily_with_sync():
    config = parse([events()])
    pipeline = config.pipeline("ev")
    assert pipeline.frequency == "daily"
    assert pipeline.sync is True
    assert pipeline.recurring is True
    assert config.project.residency == "US"


def test_unknown_field_names_file_pipeline_and_field():
    message = error_of([events(frequncy="hourly")])
    assert message.startswith("cfg.yaml: pipeline 'ev', field frequncy: unknown field")


def test_bad_frequency_value_is_named():
    message = error_of([events(frequency="weekly")])
    assert "pipeline 'ev', field frequency" in message and "hourly" in message


def test_events_pipeline_without_from_date():
    pipeline = events()
    del pipeline["from_date"]
    assert "pipeline 'ev'" in error_of([pipeline]) and "from_date is required" in error_of([pipeline])


def test_to_date_before_from_date():
    assert "to_date 2026-10-01 is before from_date 2026-11-01" in error_of([events(to_date="2026-10-01")])


def test_destination_field_errors_point_inside_the_destination():
    message = error_of([events(destination={"type": "local"})])
    assert "pipeline 'ev', field destination.path: required field is missing" in message


def test_unknown_destination_type():
    message = error_of([events(destination={"type": "ftp", "path": "x"})])
    assert "pipeline 'ev', field destination" in message


def test_unknown_timezone_is_rejected_at_project_level():
    message = error_of([events()], {**PROJECT, "timezone": "Mars/Olympus"})
    assert "cfg.yaml: field project.timezone: unknown timezone 'Mars/Olympus'" in message


def test_a_secret_pasted_where_an_env_var_name_belongs_is_refused_without_echoing_it_back_whole():
    project = {**PROJECT, "source": {"type": "mixpanel", "credentials": {"secret_env": "s3cr3t-value!"}}}
    message = error_of([events()], project)
    assert "field project.source.credentials.secret_env" in message
    assert "never the secret itself" in message


def test_pipeline_names_must_be_unique():
    message = error_of([events("a"), events("a", frequency="hourly", destination={"type": "duckdb", "path": "w.db"})])
    assert "pipeline 'a', field name: used by more than one pipeline" in message


def test_pipeline_name_must_be_a_valid_key_prefix():
    assert "pipeline 'Bad-Name', field name" in error_of([events("Bad-Name")])


def test_more_than_two_recurring_events_pipelines_is_mixpanels_limit():
    pipelines = [events("a"), events("b", frequency="hourly", destination={"type": "local", "path": "o2"}),
                 events("c", destination={"type": "duckdb", "path": "w.db"})]
    message = error_of(pipelines)
    assert "more than 2 recurring events pipelines" in message
    assert "enforce_mixpanel_limits: false" in message


def test_recurring_events_pipelines_need_different_frequencies():
    message = error_of([events("a"), events("b", destination={"type": "duckdb", "path": "w.db"})])
    assert "must have different frequencies" in message


def test_two_events_pipelines_may_not_write_one_destination_for_overlapping_dates():
    message = error_of([events("a"), events("b", frequency="hourly")])
    assert "pipelines 'a' and 'b', field destination" in message and "overlapping dates" in message


def test_non_overlapping_date_ranges_may_share_a_destination():
    parse([events("a", to_date="2026-11-05"), events("b", from_date="2026-11-06", frequency="hourly")])


def test_from_date_more_than_six_months_before_created_is_refused_unless_lifted():
    message = error_of([events(from_date="2026-01-01", created="2026-11-22")])
    assert "pipeline 'ev', field from_date: 2026-01-01 is more than 6 months before created 2026-11-22" in message
    assert "set project.limits.enforce_mixpanel_limits: false to lift it" in message
    lifted = {**PROJECT, "limits": {"enforce_mixpanel_limits": False}}
    parse([events(from_date="2026-01-01", created="2026-11-22")], lifted)


def test_the_backfill_limit_counts_from_the_created_date_so_a_config_stays_valid():
    parse([events(from_date="2026-01-01", created="2026-06-15")])


def test_without_created_an_old_from_date_loads_and_runs_enforce_the_limit():
    # Validation never reads the date: counted from today, this file would stop loading as time
    # passes. Runs exporting partitions beyond the limit fail instead (test_backfill_limit.py).
    parse([events(from_date="2020-01-01")])


def test_identity_pipeline_needs_an_events_pipeline():
    message = error_of([{"name": "ids", "data_source": "identity", "destination": {"type": "duckdb", "path": "w.db"}}])
    assert "add an events pipeline" in message


def test_where_is_only_for_events():
    message = error_of([events(), {"name": "p", "data_source": "people", "where": "x",
                                   "destination": {"type": "duckdb", "path": "w.db"}}])
    assert "pipeline 'p'" in message and "where applies only to events pipelines" in message


def test_yaml_syntax_error_names_the_file(tmp_path):
    path = tmp_path / "pipelines.yaml"
    path.write_text("project: [unclosed\n")
    with pytest.raises(ConfigError, match=r"pipelines.yaml: not valid YAML"):
        load_pipelines_file(path)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        load_pipelines_file(tmp_path / "nope.yaml")

