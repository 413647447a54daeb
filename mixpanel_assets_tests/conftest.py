import dagster as dg
import pytest

# moto_server, gcs_server, azurite_server: session-scoped emulators (see emulators/fixtures.py).
pytest_plugins = ["mixpanel_assets_tests.emulators.fixtures"]

@pytest.fixture
def instance():
    """A throwaway SQLite-backed Dagster instance, so tests can read the event log."""
    with dg.instance_for_test() as inst:
        yield inst


import subprocess
import sys
from pathlib import Path

SHARED_TOOLS = Path(__file__).resolve().parents[2] / "shared" / "tools"


@pytest.fixture(scope="session")
def generated_day(tmp_path_factory) -> Path:
    """20,000 realistic export lines of 2024-11-22 (UTC) from ../shared/tools/gen_mixpanel_export.py."""
    out = tmp_path_factory.mktemp("gen") / "2024-11-22.jsonl"
    subprocess.run(
        [sys.executable, str(SHARED_TOOLS / "gen_mixpanel_export.py"), "-n", "20000", "-o", str(out), "--seed", "7"],
        check=True, capture_output=True,
    )
    return out


@pytest.fixture(scope="session")
def fake_mixpanel_server():
    """One fake Mixpanel (Export + Engage APIs) on 127.0.0.1 for the session; see fake_mixpanel.py."""
    from mixpanel_assets_tests.fake_mixpanel import FakeMixpanel

    with FakeMixpanel() as server:
        yield server


@pytest.fixture
def fake_mixpanel(fake_mixpanel_server):
    """The session's fake Mixpanel, emptied: no data, faults, sessions or logged requests."""
    fake_mixpanel_server.reset()
    yield fake_mixpanel_server
    fake_mixpanel_server.reset()


# PostgreSQL + code server + webserver + daemon, shared by the browser and daemon-restart tests.
from mixpanel_assets_tests.dagster_stack import dagster_stack  # noqa: E402,F401
