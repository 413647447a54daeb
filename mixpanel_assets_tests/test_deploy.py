"""The deployment files agree with each other and with the package, and hold no secret.

Neither Docker nor a Kubernetes cluster is available to the suite, so the image and the chart are
not built or installed here; these checks catch the drift that breaks a deployment quietly: a
module or port renamed in one place only, a concurrency rule that differs between the instance
config and the Helm values, a plain postgresql:// scheme, a password written into a file.
"""

from __future__ import annotations

import re
import tomllib

import yaml

from mixpanel_assets_tests.dagster_stack import REPO

DEPLOY = REPO / "deploy"


def load(path):
    return yaml.safe_load(path.read_text())


def test_the_image_serves_the_code_location_named_in_pyproject_on_the_port_helm_expects():
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    tool = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["dagster"]
    (cmd,) = re.findall(r"^CMD (\[.*\])$", dockerfile, flags=re.M)
    command = yaml.safe_load(cmd)
    assert command[:3] == ["dagster", "code-server", "start"]
    assert command[command.index("-m") + 1] == tool["module_name"]
    assert command[command.index("--location-name") + 1] == tool["code_location_name"]
    (deployment,) = load(DEPLOY / "helm" / "values.yaml")["dagster-user-deployments"]["deployments"]
    assert command[command.index("-p") + 1] == str(deployment["port"])
    assert f"EXPOSE {deployment['port']}" in dockerfile
    assert deployment["dagsterApiGrpcArgs"] == ["--module-name", tool["module_name"]]
    assert 'pip install -e ".[k8s]"' in dockerfile
    assert 'python -c "import mixpanel_assets.staging.block_worker"' in dockerfile  # the parser's wheels installed
    assert "gcc" not in dockerfile  # no C of our own: nothing to compile
    assert "dagster-k8s" in " ".join(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]["k8s"])


def test_helm_values_and_the_production_instance_apply_the_same_rules():
    values = load(DEPLOY / "helm" / "values.yaml")
    instance = load(DEPLOY / "dagster.production.yaml")
    local = load(REPO / "dagster.yaml")
    pools, runs = values["concurrency"]["pools"], values["concurrency"]["runs"]
    for config in (instance, local):
        assert config["concurrency"]["pools"]["default_limit"] == pools["defaultLimit"] == 1
        assert config["concurrency"]["pools"]["granularity"] == pools["granularity"]
        assert config["concurrency"]["runs"]["tag_concurrency_limits"] == runs["tagConcurrencyLimits"]
        assert config["run_retries"]["retry_on_asset_or_op_failure"] is values["dagsterDaemon"]["runRetries"][
            "retryOnAssetOrOpFailure"] is False
    assert instance["run_retries"]["max_retries"] == values["dagsterDaemon"]["runRetries"]["maxRetries"]
    assert instance["storage"]["postgres"]["postgres_db"]["scheme"] == values["postgresql"]["postgresqlScheme"] == (
        "postgresql+psycopg2")
    assert values["runLauncher"]["type"] == "K8sRunLauncher"
    assert values["dagsterWebserver"]["service"]["type"] == "ClusterIP"


def test_the_production_instance_is_valid_dagster_config_with_every_value_from_the_environment(tmp_path):
    from dagster._core.instance.config import dagster_instance_config

    (tmp_path / "dagster.yaml").write_text((DEPLOY / "dagster.production.yaml").read_text())
    config, _ = dagster_instance_config(str(tmp_path))  # raises on any key Dagster does not know
    postgres = config["storage"]["postgres"]["postgres_db"]
    assert {k: v for k, v in postgres.items() if k != "scheme"} == {
        "username": {"env": "DAGSTER_PG_USERNAME"}, "password": {"env": "DAGSTER_PG_PASSWORD"},
        "hostname": {"env": "DAGSTER_PG_HOST"}, "db_name": {"env": "DAGSTER_PG_DB"}, "port": {"env": "DAGSTER_PG_PORT"}}


def _secret_like_values(node, path=""):
    if isinstance(node, dict):
        for key, value in node.items():
            named = re.search(r"password|secret|token|access_key", str(key), re.I) and not str(key).lower().endswith("name")
            if named and isinstance(value, (str, int)) and not isinstance(value, bool) and value != "":
                yield f"{path}.{key}"
            yield from _secret_like_values(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, item in enumerate(node):
            yield from _secret_like_values(item, f"{path}[{i}]")


def test_no_deployment_file_holds_a_secret_value():
    for path in (DEPLOY / "helm" / "values.yaml", DEPLOY / "dagster.production.yaml", REPO / "dagster.yaml"):
        assert list(_secret_like_values(load(path))) == [], path
    assert not re.search(r"^\s*(ENV|ARG)\s+\S*(SECRET|PASSWORD|TOKEN)", (DEPLOY / "Dockerfile").read_text(), re.M | re.I)
