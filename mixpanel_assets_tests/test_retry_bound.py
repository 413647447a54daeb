"""What a persistently failing partition costs in Export API queries, computed from the constants
and proven against the fake Mixpanel through real Dagster runs (docs/operations-retries.md).

The bound: one read of one query (a daily partition, an hourly partition, a day of hours, a sync
probe) that fails every time costs exactly N = DEFAULT_MAX_RETRIES + 1 = 7 queries per run: the
retry layer's attempts (mixpanel/retry.py), with no step retry on top (defs/assets.py
`source_failures_to_dagster` fails the step with allow_retries=False) and no run retry either
(dagster.yaml retries only runs whose process died: `retry_on_asset_or_op_failure: false`). If
the run's process itself dies every time, dagster.yaml's run retries make it at most
(1 + run_retries.max_retries) * N = 21 queries.
"""

from pathlib import Path

import dagster as dg
import pytest
import yaml

from mixpanel_assets.mixpanel.retry import DEFAULT_MAX_RETRIES, max_queries_of_failing_read
from mixpanel_assets_tests.fake_mixpanel import SECRET, USERNAME, http_error
from mixpanel_assets_tests.helpers import definitions, events_pipeline, run_partition

REPO = Path(__file__).resolve().parents[1]
USER_ENV = "BOUND_MIXPANEL_USERNAME"
SECRET_ENV = "BOUND_MIXPANEL_SECRET"
DAY = "2024-11-22"

QUERIES_PER_FAILING_RUN = max_queries_of_failing_read(DEFAULT_MAX_RETRIES)  # 7


def run_retries() -> dict:
    return yaml.safe_load((REPO / "dagster.yaml").read_text())["run_retries"]


def queries_per_failing_partition() -> int:
    """Per partition, counting the run retries dagster.yaml allows for runs whose process died."""
    return (1 + run_retries()["max_retries"]) * QUERIES_PER_FAILING_RUN


@pytest.fixture
def unavailable(fake_mixpanel, monkeypatch):
    """A fake whose every Export request answers 503 (Retry-After: 0, so the test does not sleep
    through the backoff; the number of attempts does not depend on the wait)."""
    monkeypatch.setenv(USER_ENV, USERNAME)
    monkeypatch.setenv(SECRET_ENV, SECRET)
    fake_mixpanel.queue_fault(http_error(503, headers={"Retry-After": "0"}), times=10 * QUERIES_PER_FAILING_RUN)
    return fake_mixpanel


def project(fake) -> dict:
    return {"id": fake.project_id, "state": {"path": "state"}, "export_workers": 1,
            "source": fake.source_config(username_env=USER_ENV, secret_env=SECRET_ENV)}


def the_failure(instance, result) -> dg.DagsterEvent:
    events = [e.dagster_event for e in instance.all_logs(result.run_id) if e.dagster_event]
    assert not [e for e in events if e.event_type_value == "STEP_UP_FOR_RETRY"]  # no step retry multiplies it
    (failure,) = [e for e in events if e.event_type_value == "STEP_FAILURE"]
    return failure


def test_the_bound_is_seven_queries_a_run_and_dagster_yaml_does_not_rerun_failed_steps():
    assert QUERIES_PER_FAILING_RUN == 7
    assert run_retries()["retry_on_asset_or_op_failure"] is False  # else every failed run would cost N again
    assert queries_per_failing_partition() == 21


def test_a_partition_whose_every_request_fails_with_503_costs_exactly_n_queries(tmp_path, unavailable, instance):
    """N = DEFAULT_MAX_RETRIES + 1 = 7 Export API queries, then the step fails for good, saying so."""
    pipeline = events_pipeline("daily_db", "daily", {"type": "duckdb", "path": "wh.duckdb"})
    defs = definitions(tmp_path, project(unavailable), [pipeline])
    result = run_partition(defs, "daily_db_job", instance, DAY, raise_on_error=False)
    assert not result.success
    assert [r.status for r in unavailable.export_requests()] == [503] * QUERIES_PER_FAILING_RUN
    failure = the_failure(instance, result)
    error = failure.step_failure_data.error
    assert error.cls_name == "Failure" and "HTTP 503" in error.message
    assert f"gave up after {QUERIES_PER_FAILING_RUN} attempts" in error.message
    metadata = failure.step_failure_data.user_failure_data.metadata
    assert metadata["mixpanel/attempts"].value == QUERIES_PER_FAILING_RUN
    assert metadata["mixpanel/http_status"].value == 503 and metadata["mixpanel/retry_later_helps"].value is True


def test_a_sync_probe_that_always_meets_503_costs_the_same_n_queries(tmp_path, unavailable, instance):
    pipeline = events_pipeline("daily_db", "daily", {"type": "duckdb", "path": "wh.duckdb"})
    defs = definitions(tmp_path, project(unavailable), [pipeline])
    result = defs.resolve_job_def("daily_db_sync_probe_job").execute_in_process(
        instance=instance, raise_on_error=False,
        run_config={"ops": {"daily_db_sync_probe": {"config": {"first_day": DAY, "last_day": "2024-11-23"}}}})
    assert not result.success
    assert len(unavailable.export_requests()) == QUERIES_PER_FAILING_RUN  # the probe's one query, 7 attempts
    assert "gave up after 7 attempts" in the_failure(instance, result).step_failure_data.error.message


def test_refused_credentials_cost_one_query_and_say_so_in_the_failure(tmp_path, fake_mixpanel, instance, monkeypatch):
    monkeypatch.setenv(USER_ENV, USERNAME)
    monkeypatch.setenv(SECRET_ENV, "not-the-secret-0b1d")
    pipeline = events_pipeline("daily_db", "daily", {"type": "duckdb", "path": "wh.duckdb"})
    result = run_partition(definitions(tmp_path, project(fake_mixpanel), [pipeline]), "daily_db_job", instance, DAY,
                           raise_on_error=False)
    assert len(fake_mixpanel.export_requests()) == 1
    failure = the_failure(instance, result)
    metadata = failure.step_failure_data.user_failure_data.metadata
    assert metadata["mixpanel/error"].value == "auth" and metadata["mixpanel/retry_later_helps"].value is False
    assert "not-the-secret-0b1d" not in repr(failure)
