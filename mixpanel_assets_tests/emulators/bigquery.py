"""bqemulator, a local server speaking BigQuery's REST API, for the BigQuery destination tests.

It lives in its own virtualenv (`.venv-bq`, made by `make setup-test`), since its sqlglot pin
conflicts with fakesnow's, and is started through bqemu_server.py beside this file (offline
start-up, gzip uploads). Tests talk to it with the real google-cloud-bigquery client.

    def test_something(bigquery_emulator):
        client = bigquery_emulator.client()
        dataset = bigquery_emulator.new_dataset()     # a dataset no other test uses

What bqemulator 1.4.0 cannot do (../shared/EMULATORS.md): multipart uploads
(`load_table_from_file(size=...)`, load_table_from_json), query parameters inside multi-statement
scripts, `__PARTITIONS_SUMMARY__`, loads and copies into a partition decorator (`table$YYYYMMDD`);
it keeps no `num_rows` on tables. The destination uses none of them. Nor does it keep
ingestion-time partitions: the destination writes a day through a query job into the decorator,
which bqemu_server.py makes the emulator apply to a *simulated* partition (the date of `time` in
PARTITION_TIMEZONE); the decorator each job names is checked on the requests
(recording_proxy.py, test_bigquery_partitions.py).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from mixpanel_assets_tests.emulators.servers import REPO, ServerProcess, _spawn, free_port

BQ_PYTHON = REPO / ".venv-bq" / "bin" / "python"
WRAPPER = Path(__file__).with_name("bqemu_server.py")
PROJECT = "test-project"  # the project bqemulator serves
# The timezone of every BigQuery test project (warehouse_cases.TZ): the emulator simulates a row's
# ingestion-time partition as the date of its `time` there (bqemu_server.py says why and how).
PARTITION_TIMEZONE = "America/Los_Angeles"


@dataclass
class BigQueryEmulator:
    server: ServerProcess

    @property
    def endpoint(self) -> str:
        return self.server.base_url

    def client(self):
        from google.api_core.client_options import ClientOptions
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import bigquery

        return bigquery.Client(project=PROJECT, credentials=AnonymousCredentials(),
                               client_options=ClientOptions(api_endpoint=self.endpoint))

    def new_dataset(self, base: str = "mixpanel") -> str:
        name = f"{base}_{uuid.uuid4().hex[:8]}"
        client = self.client()
        client.create_dataset(name, timeout=30)
        client.close()
        return name

    def stop(self) -> None:
        self.server.stop()


def start_bigquery_emulator() -> BigQueryEmulator:
    if not BQ_PYTHON.exists():
        raise RuntimeError(f"{BQ_PYTHON} is missing: run `make setup-test` (it creates .venv-bq with bqemulator)")
    rest, grpc = free_port(), free_port()
    # BQEMU_ENABLE_FORMAT_EXTENSIONS=false: no attempt to download DuckDB's avro extension.
    server = _spawn("bqemulator", [str(BQ_PYTHON), str(WRAPPER), str(rest), str(grpc)], rest,
                    env={"BQEMU_ENABLE_FORMAT_EXTENSIONS": "false", "BQEMU_PARTITION_TIMEZONE": PARTITION_TIMEZONE})
    return BigQueryEmulator(server)


@pytest.fixture(scope="session")
def bigquery_emulator():
    emulator = start_bigquery_emulator()
    yield emulator
    emulator.stop()
