"""The S3, GCS and Azure `Bucket` adapters against the emulators: the few operations the replace
protocol relies on, large uploads in parts, and S3's encryption and role options."""

from __future__ import annotations

import json
import os

import pytest

from mixpanel_assets_tests.emulators.fixtures import unique_name
from mixpanel_assets_tests.emulators.servers import MOTO_KEY_ID, MOTO_REGION, MOTO_SECRET
from mixpanel_assets_tests.emulators.stores import store_for


@pytest.fixture(params=["s3", "gcs", "azure"])
def store(request):
    return store_for(request.param, request)


def test_list_files_sees_only_the_objects_directly_in_the_folder(store):
    bucket = unique_name("mp-list")
    store.create_bucket(bucket)
    adapter = store.adapter(bucket)
    for key in ("7/mp_master_event/2024/11/22/part-a.json.gz", "7/mp_master_event/2024/11/22/manifest.json",
                "7/mp_master_event/2024/11/22/13/part-b.json.gz", "7/mp_master_event/2024/11/220/part-c.json.gz"):
        adapter.put_bytes(key, b"x")
    assert adapter.list_files("7/mp_master_event/2024/11/22/") == [
        "7/mp_master_event/2024/11/22/manifest.json", "7/mp_master_event/2024/11/22/part-a.json.gz"]
    assert adapter.list_files("7/mp_people_data/") == []


def test_get_bytes_of_a_missing_object_is_none_and_delete_of_a_missing_object_is_quiet(store):
    bucket = unique_name("mp-get")
    store.create_bucket(bucket)
    adapter = store.adapter(bucket)
    assert adapter.get_bytes("7/mp_people_data/manifest.json") is None
    adapter.put_bytes("7/mp_people_data/manifest.json", b'{"rows": 1}')
    assert adapter.get_bytes("7/mp_people_data/manifest.json") == b'{"rows": 1}'
    adapter.delete(["7/mp_people_data/manifest.json", "7/mp_people_data/never-existed"])
    assert store.keys(bucket) == []


def test_download_file_streams_an_object_to_disk_and_reports_a_missing_one(store, tmp_path):
    bucket = unique_name("mp-dl")
    store.create_bucket(bucket)
    adapter = store.adapter(bucket)
    data = os.urandom(3 << 20)
    source = tmp_path / "part.bin"
    source.write_bytes(data)
    adapter.upload_file("7/mp_people_data/part-x.json.gz", source)
    assert adapter.download_file("7/mp_people_data/part-x.json.gz", tmp_path / "back.bin")
    assert (tmp_path / "back.bin").read_bytes() == data
    assert adapter.download_file("7/mp_people_data/missing.json.gz", tmp_path / "missing.bin") is False


def test_a_part_larger_than_one_request_is_uploaded_in_pieces_from_the_file(store, tmp_path):
    bucket = unique_name("mp-big")
    store.create_bucket(bucket)
    piece = 5 << 20  # S3's smallest multipart part
    adapter = {
        "s3": lambda: store.adapter(bucket, multipart_threshold=piece, multipart_chunksize=piece),
        "gcs": lambda: store.adapter(bucket, chunk_size=1 << 20),
        "azure": lambda: store.adapter(bucket, max_single_put_size=1 << 20, max_block_size=piece),
    }[store.kind]()
    path = tmp_path / "part-big.json.gz"
    data = os.urandom(12 << 20)
    path.write_bytes(data)
    key = "7/mp_master_event/2024/11/22/part-big.json.gz"
    adapter.upload_file(key, path)
    assert store.read(bucket, key) == data
    if store.kind == "s3":
        head = store.s3.head_object(Bucket=bucket, Key=key)
        assert head["ETag"].endswith('-3"')  # three multipart parts
        assert head["ContentType"] == "application/gzip" and "ContentEncoding" not in head
    if store.kind == "azure":
        blob = store.service.get_blob_client(bucket, key)
        committed, _ = blob.get_block_list("committed")
        assert len(committed) == 3  # three staged blocks, committed as one blob
        assert blob.get_blob_properties().content_settings.content_type == "application/gzip"
    if store.kind == "gcs":
        blob = store.client.bucket(bucket).get_blob(key)
        assert blob.size == len(data) and blob.content_type == "application/gzip" and blob.content_encoding is None


@pytest.mark.parametrize("sse", ["AES256", "aws:kms"])
def test_s3_objects_carry_the_configured_server_side_encryption(moto_server, tmp_path, sse):
    bucket = unique_name("mp-sse")
    s3 = moto_server.client("s3")
    s3.create_bucket(Bucket=bucket)
    key_id = moto_server.client("kms").create_key()["KeyMetadata"]["Arn"] if sse == "aws:kms" else None
    adapter = store_for("s3", _Request(moto_server)).adapter(bucket, server_side_encryption=sse, kms_key_id=key_id)
    part = tmp_path / "part-x.json.gz"
    part.write_bytes(b"rows")
    adapter.upload_file("7/mp_people_data/part-x.json.gz", part)
    adapter.put_bytes("7/mp_people_data/manifest.json", b"{}")
    for key in ("7/mp_people_data/part-x.json.gz", "7/mp_people_data/manifest.json"):
        head = s3.head_object(Bucket=bucket, Key=key)
        assert head["ServerSideEncryption"] == sse
        assert head.get("SSEKMSKeyId") == key_id


def test_s3_can_write_through_an_assumed_role(moto_server):
    from mixpanel_assets.destinations.objects.s3 import S3Bucket

    bucket = unique_name("mp-role")
    moto_server.client("s3").create_bucket(Bucket=bucket)
    role = moto_server.client("iam").create_role(
        RoleName=unique_name("exporter"), AssumeRolePolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": [
            {"Effect": "Allow", "Principal": {"AWS": "*"}, "Action": "sts:AssumeRole"}]}))["Role"]["Arn"]
    adapter = S3Bucket.connect(bucket, region=MOTO_REGION, endpoint_url=moto_server.endpoint_url,
                               access_key_id=MOTO_KEY_ID, secret_access_key=MOTO_SECRET, role_arn=role,
                               external_id="mixpanel-project-token")
    credentials = adapter.client._request_signer._credentials
    assert credentials.access_key != MOTO_KEY_ID and credentials.token  # temporary keys from STS
    adapter.put_bytes("7/mp_people_data/complete", b"")
    assert adapter.list_files("7/mp_people_data/") == ["7/mp_people_data/complete"]


@pytest.mark.parametrize("credential", ["account_key", "sas_token"])
def test_azure_accepts_an_account_key_or_a_sas_token_instead_of_a_connection_string(azurite_server, credential):
    import datetime as dt

    from azure.storage.blob import ContainerSasPermissions, generate_container_sas

    from mixpanel_assets.destinations.objects.azure import AzureBlobBucket
    from mixpanel_assets_tests.emulators.servers import AZURITE_ACCOUNT, AZURITE_KEY

    container = unique_name("mp-cred")
    azurite_server.client().create_container(container)
    secret = AZURITE_KEY if credential == "account_key" else generate_container_sas(
        AZURITE_ACCOUNT, container, account_key=AZURITE_KEY,
        permission=ContainerSasPermissions(read=True, write=True, delete=True, list=True),
        expiry=dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=1))
    adapter = AzureBlobBucket.connect(container, account_url=azurite_server.account_url, **{credential: secret})
    adapter.put_bytes("7/mp_people_data/complete", b"")
    assert adapter.list_files("7/mp_people_data/") == ["7/mp_people_data/complete"]
    adapter.delete(["7/mp_people_data/complete"])
    assert adapter.list_files("7/mp_people_data/") == []


class _Request:
    """Just enough of pytest's `request` for store_for() outside a parametrized fixture."""

    def __init__(self, moto_server):
        self.moto_server = moto_server

    def getfixturevalue(self, name):
        assert name == "moto_server"
        return self.moto_server
