"""fakesnow in server mode: Snowflake's HTTP protocol over DuckDB, for the Snowflake destination tests.

Started from this venv through fakesnow_server.py beside this file (the `$word` patch). Tests use
the real snowflake-connector-python and dagster-snowflake's SnowflakeResource against it.

    def test_something(snowflake_emulator):
        schema = snowflake_emulator.new_schema()         # MIXPANEL.<unique>: no test shares one
        conn = snowflake_emulator.connect(schema)

What fakesnow 0.12.1 cannot do (../shared/EMULATORS.md): COPY of JSON except into a single-VARIANT
table, COPY with FILES=/PATTERN=, DROP STAGE, real clustering (CLUSTER BY is accepted and
ignored), MATCH_BY_COLUMN_NAME for JSON; an error inside COPY comes back as HTTP 500, which the
connector retries until its network timeout.
"""

from __future__ import annotations

import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from mixpanel_assets_tests.emulators.servers import ServerProcess, _spawn, free_port

WRAPPER = Path(__file__).with_name("fakesnow_server.py")
DATABASE = "MIXPANEL"
ACCOUNT, USER, PASSWORD = "fakesnow", "fake", "snow"  # fakesnow accepts any
NETWORK_TIMEOUT_S = 5  # bounds the connector's retries of fakesnow's HTTP 500s


@dataclass
class SnowflakeEmulator:
    server: ServerProcess

    @property
    def port(self) -> int:
        return self.server.port

    def connect(self, schema: str | None = None):
        import snowflake.connector

        return snowflake.connector.connect(
            user=USER, password=PASSWORD, account=ACCOUNT, host="127.0.0.1", port=self.port, protocol="http",
            database=DATABASE, schema=schema, network_timeout=NETWORK_TIMEOUT_S, login_timeout=NETWORK_TIMEOUT_S,
            session_parameters={"CLIENT_OUT_OF_BAND_TELEMETRY_ENABLED": False},
        )

    def new_schema(self) -> str:
        """A schema of its own, created as a user would before pointing the exporter at it."""
        name = f"S_{uuid.uuid4().hex[:10].upper()}"
        conn = self.connect()
        try:
            conn.cursor().execute(f"CREATE DATABASE IF NOT EXISTS {DATABASE}")
            conn.cursor().execute(f"CREATE SCHEMA IF NOT EXISTS {DATABASE}.{name}")
        finally:
            conn.close()
        return name

    def stop(self) -> None:
        self.server.stop()


def start_snowflake_emulator() -> SnowflakeEmulator:
    port = free_port()
    return SnowflakeEmulator(_spawn("fakesnow", [sys.executable, str(WRAPPER), str(port)], port))


@pytest.fixture(scope="session")
def snowflake_emulator():
    emulator = start_snowflake_emulator()
    yield emulator
    emulator.stop()
