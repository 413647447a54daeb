"""Mixpanel's older auth, the project secret (Basic username, empty password, no `project_id`),
as a documented, deprecated option: Mixpanel accepts it until 2027-03-03 and many setups still
use it. Proven through real Dagster runs against the fake Mixpanel, which checks the auth as
Mixpanel does (fake_mixpanel.py `_authorised_project`)."""

import dagster as dg
import pytest

from mixpanel_assets.config import ConfigError, load_pipelines_file
from mixpanel_assets_tests.fake_mixpanel import PROJECT_SECRET_USER
from mixpanel_assets_tests.helpers import definitions, epoch, event_line, events_pipeline, run_partition, write_config

SECRET_ENV = "OLD_MIXPANEL_API_SECRET"
DAY = "2024-11-22"


def project(fake, credentials: dict) -> dict:
    source = {**fake.source_config(), "credentials": credentials}
    return {"id": fake.project_id, "state": {"path": "state"}, "export_workers": 1, "source": source}


def warnings_of(instance: dg.DagsterInstance, run_id: str) -> list[str]:
    return [e.user_message for e in instance.all_logs(run_id) if e.level == 30]  # logging.WARNING


def test_a_project_secret_reads_the_project_without_project_id_and_the_run_warns_until_when(
        tmp_path, fake_mixpanel, monkeypatch, instance):
    monkeypatch.setenv(SECRET_ENV, fake_mixpanel.project_secret_of())
    fake_mixpanel.add_events([event_line("Signed Up", epoch(f"{DAY}T10:00:00") + i, f"u{i}", f"i{i}")
                              for i in range(50)])
    pipeline = events_pipeline("daily_db", "daily", {"type": "duckdb", "path": "wh.duckdb"})
    defs = definitions(tmp_path, project(fake_mixpanel, {"project_secret_env": SECRET_ENV}), [pipeline])

    result = run_partition(defs, "daily_db_job", instance, DAY)

    assert result.success
    (request,) = fake_mixpanel.export_requests()
    assert request.status == 200 and request.user == PROJECT_SECRET_USER
    assert "project_id" not in request.params  # the secret names its project
    materialization = result.asset_materializations_for_node("daily_db__mp_master_event")[0]
    assert materialization.metadata["dagster/partition_row_count"].value == 50
    (warning,) = [w for w in warnings_of(instance, result.run_id) if "project secret" in w]
    assert "2027-03-03" in warning and SECRET_ENV in warning and "service account" in warning
    assert fake_mixpanel.project_secret_of() not in warning


def test_a_wrong_project_secret_fails_naming_its_env_var_and_never_the_value(
        tmp_path, fake_mixpanel, monkeypatch, instance):
    monkeypatch.setenv(SECRET_ENV, "not-the-projects-secret-1234")
    pipeline = events_pipeline("daily_db", "daily", {"type": "duckdb", "path": "wh.duckdb"})
    defs = definitions(tmp_path, project(fake_mixpanel, {"project_secret_env": SECRET_ENV}), [pipeline])

    result = run_partition(defs, "daily_db_job", instance, DAY, raise_on_error=False)

    assert not result.success
    assert [r.status for r in fake_mixpanel.export_requests()] == [401]  # refused once, not retried
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    message = failure.step_failure_data.error.message
    assert SECRET_ENV in message and "not-the-projects-secret-1234" not in message


def test_a_project_secret_beside_service_account_names_is_a_config_error(tmp_path, fake_mixpanel):
    credentials = {"project_secret_env": SECRET_ENV, "username_env": "MIXPANEL_SERVICE_ACCOUNT_USERNAME"}
    path = write_config(tmp_path, project(fake_mixpanel, credentials),
                        [events_pipeline("daily_db", "daily", {"type": "duckdb", "path": "wh.duckdb"})])

    with pytest.raises(ConfigError) as error:
        load_pipelines_file(path)
    assert "project_secret_env and username_env" in str(error.value) and "pipelines.yaml" in str(error.value)
