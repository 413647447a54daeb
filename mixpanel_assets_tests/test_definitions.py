"""The code location loads offline, without environment variables, and shows the expected shape."""

import subprocess
import sys
import textwrap
from pathlib import Path

import dagster as dg

from mixpanel_assets_tests.helpers import definitions

REPO = Path(__file__).resolve().parents[1]


def test_definitions_load_with_no_network_and_an_empty_environment(tmp_path):
    script = textwrap.dedent("""
        import os, socket, sys
        def refuse(*args, **kwargs):
            raise AssertionError("network access while loading definitions")
        socket.socket.connect = refuse
        socket.create_connection = refuse
        socket.getaddrinfo = refuse
        reads = []
        class Watched(dict):
            def __getitem__(self, key):
                reads.append(key); return dict.__getitem__(self, key)
            def get(self, key, default=None):
                reads.append(key); return dict.get(self, key, default)
        import dagster as dg  # dagster itself may read its own settings; watch only our code
        os.environ = Watched(os.environ)
        from mixpanel_assets.definitions import defs
        dg.Definitions.validate_loadable(defs)
        ours = [k for k in reads if k.startswith(("MIXPANEL", "AWS", "GOOGLE", "AZURE", "SNOWFLAKE"))]
        assert not ours, ours
        print("loaded", len(list(defs.resolve_asset_graph().get_all_asset_keys())))
    """)
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.startswith("loaded 8")


def test_credentials_stay_env_var_references_in_the_definitions(tmp_path):
    defs = definitions(tmp_path, {"id": 5, "source": {"type": "mixpanel", "credentials": {
        "username_env": "MY_MP_USER", "secret_env": "MY_MP_SECRET"}}}, [
        {"name": "ev", "data_source": "events", "from_date": "2026-11-01", "destination": {"type": "local", "path": "o"}}])
    resource = defs.resources["mixpanel"]
    assert resource.secret == dg.EnvVar("MY_MP_SECRET") and resource.username == dg.EnvVar("MY_MP_USER")


def test_lineage_reads_mixpanel_then_events_then_identity(tmp_path):
    defs = definitions(tmp_path, {"id": 5, "source": {"type": "demo"}}, [
        {"name": "ev", "data_source": "events", "frequency": "hourly", "from_date": "2026-11-01",
         "destination": {"type": "local", "path": "o"}},
        {"name": "ids", "data_source": "identity", "destination": {"type": "duckdb", "path": "w.db"}},
        {"name": "ppl", "data_source": "people", "destination": {"type": "duckdb", "path": "w.db"}},
    ])
    graph = defs.resolve_asset_graph()
    events, ids, ppl = dg.AssetKey(["ev", "mp_master_event"]), dg.AssetKey(["ids", "mp_identity_mappings_data"]), dg.AssetKey(["ppl", "mp_people_data"])
    assert graph.get(events).parent_keys == {dg.AssetKey(["mixpanel", "project_5", "events"])}
    assert graph.get(ids).parent_keys == {events}
    assert graph.get(ppl).parent_keys == {dg.AssetKey(["mixpanel", "project_5", "profiles"])}
    assert isinstance(graph.get(events).partitions_def, dg.HourlyPartitionsDefinition)
    assert graph.get(ids).partitions_def is None
    assert {s.name for s in defs.schedules} == {"ev_schedule", "ids_schedule", "ppl_schedule"}
    assert defs.resolve_schedule_def("ev_schedule").cron_schedule == "30 * * * *"


def test_step_retries_come_from_pipelines_yaml(tmp_path):
    pipelines = [{"name": "ev", "data_source": "events", "from_date": "2026-11-01", "destination": {"type": "local", "path": "o"}}]
    default = definitions(tmp_path, {"id": 5, "source": {"type": "demo"}}, pipelines)
    policy = default.resolve_assets_def(dg.AssetKey(["ev", "mp_master_event"])).op.retry_policy
    assert (policy.max_retries, policy.delay, policy.backoff) == (3, 60, dg.Backoff.EXPONENTIAL)
    none = definitions(tmp_path, {"id": 5, "source": {"type": "demo"}, "step_retries": {"max_retries": 0}}, pipelines)
    assert none.resolve_assets_def(dg.AssetKey(["ev", "mp_master_event"])).op.retry_policy is None


def test_each_source_kind_gets_its_own_resource_with_only_its_settings(tmp_path):
    from mixpanel_assets.mixpanel.resource import (
        DemoSourceResource,
        LocalFilesSourceResource,
        MixpanelApiSourceResource,
        MixpanelSourceResource,
    )

    pipelines = [{"name": "ev", "data_source": "events", "from_date": "2026-11-01", "destination": {"type": "local", "path": "o"}}]
    kinds = {
        "mixpanel": ({"type": "mixpanel", "timeout_seconds": 30}, MixpanelApiSourceResource),
        "local": ({"type": "local", "path": "exports"}, LocalFilesSourceResource),
        "demo": ({"type": "demo", "seed": 7}, DemoSourceResource),
    }
    for source, cls in kinds.values():
        resource = definitions(tmp_path, {"id": 5, "state": {"path": "st"}, "source": source}, pipelines).resources["mixpanel"]
        assert type(resource) is cls and isinstance(resource, MixpanelSourceResource)
        assert resource.state_path == str(tmp_path / "st")  # relative to pipelines.yaml
    fields = {kind: set(cls.model_fields) - set(MixpanelSourceResource.model_fields) for kind, (_, cls) in kinds.items()}
    assert {"username", "secret", "export_url"} <= fields["mixpanel"] and not fields["mixpanel"] & {"path", "seed"}
    assert fields["local"] == {"path", "profiles_path"} and fields["demo"] == {"seed", "events_per_hour", "users"}
    local = definitions(tmp_path, {"id": 5, "source": kinds["local"][0]}, pipelines).resources["mixpanel"]
    assert local.path == str(tmp_path / "exports")


def test_the_source_imports_nothing_from_the_layers_above_it():
    import ast

    above = ("mixpanel_assets.config", "mixpanel_assets.transform", "mixpanel_assets.staging",
             "mixpanel_assets.destinations", "mixpanel_assets.defs")
    found = []
    for path in sorted((REPO / "mixpanel_assets" / "mixpanel").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            modules = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            found += [f"{path.name}:{node.lineno}: {m}" for m in modules if m.startswith(above)]
    assert found == []
