"""Secrets reach the exports only through environment variables, and leave no trace anywhere.

A service-account secret is planted in the env var that pipelines.yaml names; exports run as in
production (`dagster job execute`: a run worker, the multiprocess executor, compute logs captured
on disk) against the fake Mixpanel over HTTP, one of them retried after a 429 and one refused with
401 because its secret is wrong. Then everything is searched for both secrets (and for the Basic
auth header they would make): the event log, run tags and config, materialization metadata, every
file the instance, the destinations and the state wrote, the command output and error text, the
definitions snapshot, and Python's log records.
"""

from __future__ import annotations

import base64
import os
import subprocess
import uuid
from pathlib import Path

import dagster as dg
import pytest

from mixpanel_assets.config import ConfigError
from mixpanel_assets.defs.build import build_definitions
from mixpanel_assets_tests.dagster_stack import BIN, REPO
from mixpanel_assets_tests.fake_mixpanel import USERNAME, FakeMixpanel, rate_limited
from mixpanel_assets_tests.helpers import TODAY, epoch, event_line, write_config

SECRET_OK = f"planted-{uuid.uuid4().hex}-accepted"
SECRET_WRONG = f"planted-{uuid.uuid4().hex}-refused"
DAY = "2024-11-22"


def forms_of(secret: str) -> list[bytes]:
    """The secret itself and the Basic auth header value it would travel in."""
    return [secret.encode(), base64.b64encode(f"{USERNAME}:{secret}".encode())]


def config(tmp_path: Path, fake: FakeMixpanel, secret_env: str, name: str) -> Path:
    project = {"id": fake.project_id, "state": {"path": "state"},
               "source": fake.source_config(username_env="MP_SA_USERNAME", secret_env=secret_env)}
    ranged = {"data_source": "events", "from_date": "2024-11-20", "to_date": "2024-11-30", "created": "2024-11-20"}
    return write_config(tmp_path, project, [
        {"name": "events_db", **ranged, "destination": {"type": "duckdb", "path": "wh.duckdb"}},
        {"name": "events_files", **ranged, "destination": {"type": "local", "path": "bucket"}},
        {"name": "people_files", "data_source": "people", "destination": {"type": "local", "path": "bucket"}},
    ], name=name)


def execute(tmp_path: Path, config_path: Path, job: str, partition: str | None = None) -> subprocess.CompletedProcess:
    """`dagster job execute`, as an operator would run it, in the suite's DAGSTER_HOME."""
    module = tmp_path / f"location_{config_path.stem}.py"
    module.write_text(f"from mixpanel_assets.defs.build import build_definitions\ndefs = build_definitions({str(config_path)!r})\n")
    command = [str(BIN / "dagster"), "job", "execute", "-f", str(module), "-a", "defs", "-j", job]
    if partition:
        command += ["--tags", f'{{"dagster/partition": "{partition}"}}']
    return subprocess.run(command, cwd=REPO, capture_output=True, timeout=600, env=os.environ.copy())


@pytest.fixture
def planted(tmp_path, monkeypatch):
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text((REPO / "dagster.yaml").read_text())
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.setenv("MP_SA_USERNAME", USERNAME)
    monkeypatch.setenv("MP_SA_SECRET", SECRET_OK)
    monkeypatch.setenv("MP_SA_SECRET_WRONG", SECRET_WRONG)
    with FakeMixpanel(secret=SECRET_OK) as fake:
        fake.add_events([event_line("Purchase", epoch(f"{DAY}T10:00:00") + i, f"user_{i % 7}", f"ins-{i}",
                                    **{"$city": "Berlin", "amount": i}) for i in range(300)])
        fake.add_profiles([{"$distinct_id": f"user_{i}", "$properties": {"$email": f"user_{i}@example.com"}}
                           for i in range(7)])
        yield fake, home


def test_a_planted_secret_appears_in_no_log_tag_metadata_file_error_or_snapshot(tmp_path, planted, caplog):
    fake, home = planted
    caplog.set_level("DEBUG")
    good, bad = config(tmp_path, fake, "MP_SA_SECRET", "good.yaml"), config(tmp_path, fake, "MP_SA_SECRET_WRONG", "bad.yaml")

    fake.queue_fault(rate_limited(retry_after=0))  # the client logs a retry warning about this query
    outputs = [execute(tmp_path, good, "events_db_job", DAY), execute(tmp_path, good, "events_files_job", DAY),
               execute(tmp_path, good, "people_files_job")]
    assert all(o.returncode == 0 for o in outputs), outputs[-1].stderr.decode()[-3000:]
    refused = execute(tmp_path, bad, "events_db_job", DAY)
    assert refused.returncode != 0
    outputs.append(refused)
    assert b"HTTP 401" in refused.stdout + refused.stderr  # the failure is clear, just without the secret

    haystacks: dict[str, bytes] = {}
    with dg.DagsterInstance.get() as instance:
        runs = instance.get_runs()
        assert sorted(r.status.value for r in runs) == ["FAILURE", "SUCCESS", "SUCCESS", "SUCCESS"]
        for run in runs:
            haystacks[f"run {run.run_id} (tags, config)"] = dg.serialize_value(run).encode()
            for record in instance.all_logs(run.run_id):
                haystacks[f"event log of {run.run_id}"] = haystacks.get(f"event log of {run.run_id}", b"") + (
                    dg.serialize_value(record).encode())
        failure = [r for r in instance.all_logs(runs[0].run_id, of_type=dg.DagsterEventType.STEP_FAILURE)]
        assert failure and "credentials were refused" in failure[0].dagster_event.event_specific_data.error.message
    compute_logs = [p for p in home.rglob("*") if p.is_file() and p.suffix in (".out", ".err", ".complete")]
    assert any(b"HTTP 429" in p.read_bytes() for p in compute_logs), "the retry warning is not in the compute logs"
    for path in tmp_path.rglob("*"):
        if path.is_file():
            haystacks[str(path)] = path.read_bytes()
    for i, output in enumerate(outputs):
        haystacks[f"output of command {i}"] = output.stdout + output.stderr
    from dagster._core.remote_representation.external_data import RepositorySnap

    for path in (good, bad):
        repository = build_definitions(path, today=TODAY).get_repository_def()
        haystacks[f"definitions snapshot of {path.name}"] = dg.serialize_value(RepositorySnap.from_def(repository)).encode()
    haystacks["python log records"] = "\n".join(r.getMessage() for r in caplog.records).encode()

    assert len(haystacks) > 20
    leaks = [where for where, data in haystacks.items() for secret in (SECRET_OK, SECRET_WRONG)
             for form in forms_of(secret) if form in data]
    assert leaks == []


def test_a_secret_pasted_into_pipelines_yaml_is_refused_without_repeating_it(tmp_path):
    project = {"id": 1, "source": {"type": "mixpanel", "credentials": {"secret_env": SECRET_OK}}}
    path = write_config(tmp_path, project, [{"name": "e", "data_source": "events", "from_date": "2026-11-01",
                                             "created": "2026-11-01", "destination": {"type": "local", "path": "x"}}])
    with pytest.raises(ConfigError) as caught:
        build_definitions(path, today=TODAY)
    assert "field project.source.credentials.secret_env" in str(caught.value)
    assert SECRET_OK not in str(caught.value)


def test_the_ui_binds_to_127_0_0_1_unless_told_otherwise():
    dry_run = subprocess.run(["make", "-n", "-s", "ui"], cwd=REPO, capture_output=True, text=True, timeout=60,
                             env={**os.environ, "MAKEFLAGS": ""})
    (command,) = [line for line in dry_run.stdout.splitlines() if " dev " in line]
    assert "-h 127.0.0.1" in command
    exposed = subprocess.run(["make", "-n", "-s", "ui", "HOST=0.0.0.0"], cwd=REPO, capture_output=True, text=True,
                             timeout=60).stdout
    assert "-h 0.0.0.0" in exposed  # only when asked for explicitly


def test_definitions_load_without_reading_the_secret(tmp_path, monkeypatch):
    monkeypatch.delenv("MP_SA_SECRET", raising=False)
    with FakeMixpanel() as fake:
        defs = build_definitions(config(tmp_path, fake, "MP_SA_SECRET", "pipelines.yaml"), today=TODAY)
    dg.Definitions.validate_loadable(defs)  # resolves no EnvVar: the secret is read when a run starts
