"""Failures at S3, GCS and Azure Blob: the previous data survives, and errors say what to fix.

Servers are the local emulators; failures are the servers' own answers (a bucket that is not
there, a policy that denies, a key that does not sign), never exceptions we raise ourselves.
"""

from __future__ import annotations

import gzip
import json

import orjson
import pytest

from mixpanel_assets.destinations.base import DestinationError
from mixpanel_assets.destinations.io_managers import write_staged_window
from mixpanel_assets.destinations.objects.store import Bucket, ObjectStoreDestination
from mixpanel_assets.staging.stage import stage_events
from mixpanel_assets.windows import PartitionWindow, Window
from mixpanel_assets_tests.emulators.fixtures import unique_name
from mixpanel_assets_tests.emulators.servers import MOTO_REGION, start_moto
from mixpanel_assets_tests.emulators.stores import DelegatingBucket, store_for
from mixpanel_assets_tests.helpers import definitions, epoch, event_line, run_partition

PROJECT_ID = 99
START, END = epoch("2024-11-22T00:00:00"), epoch("2024-11-23T00:00:00")


@pytest.fixture(params=["s3", "gcs", "azure"])
def store(request, monkeypatch):
    store = store_for(request.param, request)
    for name, value in store.env.items():
        monkeypatch.setenv(name, value)
    return store


def day_lines(version: int, n: int = 3000) -> list[bytes]:
    return [event_line("Viewed", START + i * 20, f"u{i % 50}", f"v{version}-{i}", version=version, pad="x" * 200)
            for i in range(n)]


def window() -> PartitionWindow:
    import datetime as dt

    start = dt.datetime(2024, 11, 22, tzinfo=dt.timezone.utc)
    return PartitionWindow("2024-11-22", start, start + dt.timedelta(days=1), start, "daily")


class FailsMidWindow(DelegatingBucket):
    """The real adapter for the first `after` part uploads; later uploads go, through the same
    real client library and server, to a bucket that does not exist, which the server refuses."""

    def __init__(self, real: Bucket, vanished: Bucket, after: int):
        super().__init__(real)
        self.vanished, self.after, self.uploads = vanished, after, 0

    def upload_file(self, key, path, md5=None):
        self.uploads += 1
        (self.real if self.uploads <= self.after else self.vanished).upload_file(key, path, md5=md5)


def export(bucket: Bucket, lines: list[bytes], tmp_path):
    """One daily window through the object-store protocol, cut into several small parts."""
    staged = stage_events([b"\n".join(lines) + b"\n"], [Window(START, END)], ["2024-11-22"],
                          staging_root=tmp_path, block_bytes=64 << 10)
    try:
        destination = ObjectStoreDestination("faulty_pipeline", PROJECT_ID, bucket, max_file_mb=1)
        destination.max_bytes = 128 << 10  # several parts from a small window
        return write_staged_window(destination, staged.windows[0], tmp_path / "parts", window=window())
    finally:
        staged.cleanup()


def read_via_manifest(store, bucket: str, folder: str) -> list[dict]:
    manifest = json.loads(store.read(bucket, folder + "manifest.json"))
    rows = []
    for part in manifest["parts"]:
        rows.extend(orjson.loads(line) for line in gzip.decompress(store.read(bucket, folder + part["name"])).splitlines())
    assert len(rows) == manifest["rows"]
    return rows


def test_a_store_error_in_the_middle_of_a_windows_upload_leaves_the_previous_version_readable(store, tmp_path):
    bucket = unique_name("mp-fault")
    store.create_bucket(bucket)
    folder = f"{PROJECT_ID}/mp_master_event/2024/11/22/"
    first = export(store.adapter(bucket), day_lines(1), tmp_path)
    assert len(first.uris) >= 3
    before = {key: store.read(bucket, key) for key in store.keys(bucket)}

    failing = FailsMidWindow(store.adapter(bucket), store.adapter(unique_name("vanished")), after=1)
    with pytest.raises(DestinationError) as info:
        export(failing, day_lines(2), tmp_path)
    assert failing.uploads == 2  # one new part landed, the second was refused by the server
    message = str(info.value)
    assert "faulty_pipeline" in message and "partition 2024-11-22" in message and "previous data" in message

    # The previous version is intact: its manifest, its parts byte for byte, its complete marker.
    for key, data in before.items():
        assert store.read(bucket, key) == data
    rows = read_via_manifest(store, bucket, folder)
    assert len(rows) == 3000 and {r["properties"]["version"] for r in rows} == {1}

    # A rerun completes the replacement and leaves exactly one copy, the orphaned part included.
    second = export(store.adapter(bucket), day_lines(2), tmp_path)
    rows = read_via_manifest(store, bucket, folder)
    assert len(rows) == 3000 and {r["properties"]["version"] for r in rows} == {2}
    parts = sorted(k for k in store.keys(bucket, folder) if k.rsplit("/", 1)[1].startswith("part-"))
    assert parts == sorted(u.split("/", 3)[3] for u in second.uris)


def test_a_missing_bucket_fails_the_run_once_naming_the_pipeline_and_the_bucket(store, tmp_path, instance):
    source = tmp_path / "src"
    source.mkdir()
    (source / "2024-11-22.jsonl").write_bytes(b"\n".join(day_lines(1, 50)) + b"\n")
    bucket = unique_name("no-such")
    defs = definitions(tmp_path, {"id": PROJECT_ID, "state": {"path": "state"},
                                  "source": {"type": "local", "path": str(source)}}, [
        {"name": "to_nowhere", "data_source": "events", "from_date": "2024-11-20", "created": "2024-11-20",
         "destination": store.destination(bucket)}])
    result = run_partition(defs, "to_nowhere_job", instance, "2024-11-22", raise_on_error=False)
    assert not result.success
    (failure,) = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    message = failure.step_failure_data.error.to_string()
    assert "to_nowhere" in message and bucket in message and "does not exist" in message
    assert not [e for e in result.all_events if e.event_type_value == "STEP_UP_FOR_RETRY"]  # waiting will not help


# -- S3 with IAM authentication switched on: denied access and rejected keys, for real ----------------


@pytest.fixture(scope="module")
def iam_moto():
    """A moto server of this module's own that checks signatures and IAM policies after setup.

    Its first 7 requests (the setup below) are not authenticated; every later one is. `writer`
    may do all the export needs on bucket `guarded`, `reader` may only list and read it.
    """
    server = start_moto(initial_no_auth_actions=7)
    try:
        s3, iam = server.client("s3"), server.client("iam")
        s3.create_bucket(Bucket="guarded")
        keys = {}
        for name, actions in (("writer", ["s3:*"]), ("reader", ["s3:ListBucket", "s3:GetObject"])):
            iam.create_user(UserName=name)
            keys[name] = iam.create_access_key(UserName=name)["AccessKey"]
            iam.put_user_policy(UserName=name, PolicyName="export", PolicyDocument=json.dumps({
                "Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": actions,
                                                        "Resource": ["arn:aws:s3:::guarded", "arn:aws:s3:::guarded/*"]}]}))
        yield server, keys
    finally:
        server.stop()


def run_to_guarded(tmp_path, instance, monkeypatch, server, key_id: str, secret: str):
    monkeypatch.setenv("GUARDED_KEY_ID", key_id)
    monkeypatch.setenv("GUARDED_SECRET", secret)
    source = tmp_path / "src"
    source.mkdir()
    (source / "2024-11-22.jsonl").write_bytes(b"\n".join(day_lines(1, 50)) + b"\n")
    defs = definitions(tmp_path, {"id": PROJECT_ID, "state": {"path": "state"},
                                  "source": {"type": "local", "path": str(source)}}, [
        {"name": "guarded_export", "data_source": "events", "from_date": "2024-11-20", "created": "2024-11-20",
         "destination": {"type": "s3", "bucket": "guarded", "region": MOTO_REGION, "endpoint_url": server.endpoint_url,
                         "access_key_id_env": "GUARDED_KEY_ID", "secret_access_key_env": "GUARDED_SECRET"}}])
    result = run_partition(defs, "guarded_export_job", instance, "2024-11-22", raise_on_error=False)
    assert not result.success
    (failure,) = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert not [e for e in result.all_events if e.event_type_value == "STEP_UP_FOR_RETRY"]
    return failure.step_failure_data.error.to_string(), result


def test_the_writer_identity_can_export_to_the_guarded_bucket(iam_moto, tmp_path):
    """The control for the two tests below: the same server and bucket accept the right keys."""
    server, keys = iam_moto
    from mixpanel_assets.destinations.objects.s3 import S3Bucket

    bucket = S3Bucket.connect("guarded", region=MOTO_REGION, endpoint_url=server.endpoint_url,
                              access_key_id=keys["writer"]["AccessKeyId"],
                              secret_access_key=keys["writer"]["SecretAccessKey"])
    result = export(bucket, day_lines(1, 100), tmp_path)
    assert result.rows == 100


def test_denied_writes_name_the_pipeline_the_bucket_and_the_missing_permission(iam_moto, tmp_path, instance,
                                                                                 monkeypatch):
    server, keys = iam_moto
    message, _ = run_to_guarded(tmp_path, instance, monkeypatch, server, keys["reader"]["AccessKeyId"],
                                keys["reader"]["SecretAccessKey"])
    assert "guarded_export" in message and "s3://guarded/" in message
    assert "AccessDenied" in message and "s3:PutObject" in message


def test_a_wrong_secret_is_reported_without_ever_showing_the_secret(iam_moto, tmp_path, instance, monkeypatch):
    server, keys = iam_moto
    wrong_secret = "Wr0ngSecretValue/ThatMustNeverBeLogged+xyz"
    message, result = run_to_guarded(tmp_path, instance, monkeypatch, server, keys["writer"]["AccessKeyId"],
                                     wrong_secret)
    assert "guarded_export" in message and "'guarded'" in message
    assert "rejected the credentials (SignatureDoesNotMatch)" in message and "GUARDED_SECRET" in message
    logged = "\n".join(str(e) for e in instance.all_logs(result.run_id))
    assert wrong_secret not in logged and wrong_secret not in message


def test_a_malformed_gcs_key_names_its_env_var_not_its_content(gcs_server, tmp_path, instance, monkeypatch):
    secret = '{"type": "service_account", "private_key": "-----BEGIN PRIVATE KEY-----SECRETMATERIAL'
    monkeypatch.setenv("BROKEN_GCS_KEY", secret)
    source = tmp_path / "src"
    source.mkdir()
    (source / "2024-11-22.jsonl").write_bytes(b"\n".join(day_lines(1, 50)) + b"\n")
    bucket = unique_name("keyed")
    gcs_server.client().create_bucket(bucket)
    defs = definitions(tmp_path, {"id": PROJECT_ID, "state": {"path": "state"},
                                  "source": {"type": "local", "path": str(source)}}, [
        {"name": "gcs_keyed", "data_source": "events", "from_date": "2024-11-20", "created": "2024-11-20",
         "destination": {"type": "gcs", "bucket": bucket, "endpoint_url": gcs_server.endpoint_url,
                         "credentials_env": "BROKEN_GCS_KEY"}}])
    result = run_partition(defs, "gcs_keyed_job", instance, "2024-11-22", raise_on_error=False)
    (failure,) = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    message = failure.step_failure_data.error.to_string()
    assert "gcs_keyed" in message and bucket in message and "env var BROKEN_GCS_KEY" in message
    logged = "\n".join(str(e) for e in instance.all_logs(result.run_id))
    assert "SECRETMATERIAL" not in logged and "SECRETMATERIAL" not in message


def test_a_wrong_azure_account_key_is_rejected_without_showing_it(azurite_server, tmp_path, instance, monkeypatch):
    from mixpanel_assets_tests.emulators.servers import AZURITE_KEY

    wrong_key = "A" * 80 + "bad/=="
    assert wrong_key != AZURITE_KEY
    monkeypatch.setenv("WRONG_AZURE_KEY", wrong_key)
    source = tmp_path / "src"
    source.mkdir()
    (source / "2024-11-22.jsonl").write_bytes(b"\n".join(day_lines(1, 50)) + b"\n")
    container = unique_name("keyed")
    azurite_server.client().create_container(container)
    defs = definitions(tmp_path, {"id": PROJECT_ID, "state": {"path": "state"},
                                  "source": {"type": "local", "path": str(source)}}, [
        {"name": "azure_keyed", "data_source": "events", "from_date": "2024-11-20", "created": "2024-11-20",
         "destination": {"type": "azure", "container": container, "account_url": azurite_server.account_url,
                         "account_key_env": "WRONG_AZURE_KEY"}}])
    result = run_partition(defs, "azure_keyed_job", instance, "2024-11-22", raise_on_error=False)
    (failure,) = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    message = failure.step_failure_data.error.to_string()
    assert "azure_keyed" in message and container in message and "rejected the credentials" in message
    assert "WRONG_AZURE_KEY" in message
    logged = "\n".join(str(e) for e in instance.all_logs(result.run_id))
    assert wrong_key not in logged and wrong_key not in message
