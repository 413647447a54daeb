"""Session-scoped pytest fixtures for the cloud-store emulators, registered for the whole suite
through `pytest_plugins` in mixpanel_assets_tests/conftest.py.

    def test_something(moto_server):          # S3, STS, IAM, KMS, Glue on one endpoint
        s3 = moto_server.client("s3")
        glue = moto_server.client("glue")
        ... moto_server.endpoint_url ...

    def test_other(gcs_server, azurite_server): ...

Each server starts on first use and stops at the end of the session. Servers are shared, so a
test should create uniquely named buckets (`unique_name("events")`) instead of resetting state
other tests may be using; `moto_server.reset()` exists for a test module that owns the server.
"""

from __future__ import annotations

import uuid

import pytest

from mixpanel_assets_tests.emulators.servers import start_azurite, start_gcs, start_moto


def unique_name(base: str) -> str:
    """A bucket/container name no other test uses (lower-case, 3-63 chars: valid on every store)."""
    return f"{base}-{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="session")
def moto_server():
    server = start_moto()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def gcs_server():
    server = start_gcs()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def azurite_server(tmp_path_factory):
    server = start_azurite(tmp_path_factory.mktemp("azurite"))
    yield server
    server.stop()
