"""`destination: {type: s3|gcs|azure}` in pipelines.yaml: validation, secrets as env var names,
and definitions that load without cloud SDKs, network or environment."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
import textwrap

import dagster as dg
import pytest

from mixpanel_assets.config import ConfigError, parse_pipelines
from mixpanel_assets.destinations.base import DestinationError, is_permanent
from mixpanel_assets.destinations.io_managers import DestinationIOManager
from mixpanel_assets.destinations.registry import parse_destination
from mixpanel_assets_tests.helpers import definitions

TODAY = dt.date(2026, 11, 22)
PROJECT = {"id": 42, "source": {"type": "demo"}}

S3 = {"type": "s3", "bucket": "acme-mixpanel", "region": "eu-west-1", "prefix": "raw/",
      "access_key_id_env": "ACME_AWS_KEY_ID", "secret_access_key_env": "ACME_AWS_SECRET",
      "server_side_encryption": "aws:kms", "kms_key_id": "alias/mixpanel"}
GCS = {"type": "gcs", "bucket": "acme-mixpanel", "project": "acme", "credentials_env": "ACME_GCS_KEY",
       "format": "parquet"}
AZURE = {"type": "azure", "container": "mixpanel", "account": "acmestore", "tenant_id_env": "ACME_TENANT",
         "client_id_env": "ACME_CLIENT", "client_secret_env": "ACME_CLIENT_SECRET", "compression": "zstd"}


def pipelines(*destinations) -> list[dict]:
    names = ["to_s3", "to_gcs", "to_azure"]
    return [{"name": names[i], "data_source": "people", "destination": d} for i, d in enumerate(destinations)]


def error_of(destination: dict) -> str:
    with pytest.raises(ConfigError) as info:
        parse_pipelines({"project": PROJECT, "pipelines": pipelines(destination)}, source="cfg.yaml")
    return str(info.value)


@pytest.mark.parametrize("destination, field, words", [
    ({**S3, "secret_access_key_env": "wJalrXUtnFEMI/K7MDENG+bPxRfiCY"}, "destination.secret_access_key_env",
     "not an environment variable name"),
    ({**S3, "secret_access_key_env": None}, "destination", "go together"),
    ({**S3, "server_side_encryption": "AES256"}, "destination", "kms_key_id needs server_side_encryption: aws:kms"),
    ({**S3, "bucket": "Acme_Bucket"}, "destination.bucket", "pattern"),
    ({**S3, "prefix": "a/../b"}, "destination.prefix", "'..'"),
    ({**GCS, "credentials_env": '{"type": "service_account"}'}, "destination.credentials_env",
     "not an environment variable name"),
    ({**AZURE, "account_key_env": "ACME_KEY"}, "destination", "one kind of credentials"),
    ({**AZURE, "client_secret_env": None}, "destination", "tenant_id_env, client_id_env and client_secret_env"),
    ({"type": "azure", "container": "mixpanel"}, "destination", "account"),
    ({**AZURE, "container": "Bad--Name"}, "destination.container", "pattern"),
])
def test_cloud_destination_mistakes_name_the_pipeline_and_the_field(destination, field, words):
    message = error_of(destination)
    assert f"pipeline 'to_s3', field {field}" in message and words in message, message


def test_credentials_stay_env_var_references_and_locations_are_bucket_uris(tmp_path):
    defs = definitions(tmp_path, PROJECT, pipelines(S3, GCS, AZURE), today=TODAY)
    managers = [defs.resources[f"{n}__io_manager"] for n in ("to_s3", "to_gcs", "to_azure")]
    assert all(type(m) is DestinationIOManager for m in managers)  # one IO manager for every destination
    s3, gcs, azure = (parse_destination(m.destination) for m in managers)
    # Secrets stay env var *names* in the resource config, read only when a run opens the destination.
    assert managers[0].destination["access_key_id_env"] == "ACME_AWS_KEY_ID"
    assert managers[0].destination["secret_access_key_env"] == "ACME_AWS_SECRET"
    assert (s3.server_side_encryption, s3.kms_key_id, s3.prefix) == ("aws:kms", "alias/mixpanel", "raw")
    assert "ACME_AWS_KEY_ID/ACME_AWS_SECRET" in s3.credentials_from
    assert managers[1].destination["credentials_env"] == "ACME_GCS_KEY"
    assert (gcs.parts_format.fmt, gcs.parts_format.compression) == ("parquet", "zstd")
    assert managers[2].destination["client_secret_env"] == "ACME_CLIENT_SECRET"
    assert azure.effective_account_url == "https://acmestore.blob.core.windows.net"
    assert azure.parts_format.compression == "zstd"
    tables = {str(spec.key.path[0]): spec.metadata["dagster/table_name"]
              for a in defs.assets if isinstance(a, dg.AssetsDefinition) for spec in a.specs}
    assert tables == {"to_s3": "s3://acme-mixpanel/raw/42/mp_people_data",
                      "to_gcs": "gs://acme-mixpanel/42/mp_people_data",
                      "to_azure": "az://mixpanel/42/mp_people_data"}


@pytest.mark.parametrize("name, variable, field", [("to_s3", "ACME_AWS_KEY_ID", "access_key_id_env"),
                                                   ("to_gcs", "ACME_GCS_KEY", "credentials_env"),
                                                   ("to_azure", "ACME_TENANT", "tenant_id_env")])
def test_an_unset_secret_env_var_fails_when_a_run_opens_the_destination_naming_it_without_retries(
        name, variable, field, tmp_path, monkeypatch):
    for unset in ("ACME_AWS_KEY_ID", "ACME_AWS_SECRET", "ACME_GCS_KEY", "ACME_TENANT", "ACME_CLIENT",
                  "ACME_CLIENT_SECRET"):
        monkeypatch.delenv(unset, raising=False)
    defs = definitions(tmp_path, PROJECT, pipelines(S3, GCS, AZURE), today=TODAY)
    with pytest.raises(DestinationError) as info:
        defs.resources[f"{name}__io_manager"].open()
    message = str(info.value)
    assert f"pipeline {name!r}" in message and variable in message and field in message and "not set" in message
    assert is_permanent(info.value)  # the IO manager fails the step at once: waiting sets no variable


def test_cloud_definitions_load_without_importing_cloud_sdks_or_reading_the_environment(tmp_path):
    config = tmp_path / "pipelines.yaml"
    import yaml

    config.write_text(yaml.safe_dump({"project": PROJECT, "pipelines": pipelines(S3, GCS, AZURE)}))
    script = textwrap.dedent(f"""
        import datetime, os, socket, sys
        def refuse(*args, **kwargs):
            raise AssertionError("network access while loading definitions")
        socket.socket.connect = refuse
        socket.create_connection = refuse
        reads = []
        class Watched(dict):
            def __getitem__(self, key):
                reads.append(key); return dict.__getitem__(self, key)
            def get(self, key, default=None):
                reads.append(key); return dict.get(self, key, default)
        import dagster as dg
        os.environ = Watched(os.environ)
        from mixpanel_assets.defs.build import build_definitions
        defs = build_definitions({str(config)!r}, today=datetime.date(2026, 11, 22))
        dg.Definitions.validate_loadable(defs)
        assert not [k for k in reads if k.startswith(("ACME", "AWS", "GOOGLE", "AZURE"))], reads
        heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("boto3", "botocore", "azure", "dagster_aws",
                       "dagster_gcp", "dagster_azure") or m.startswith("google.cloud"))
        assert not heavy, heavy[:10]
        print("loaded")
    """)
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120,
                            check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith("loaded")
