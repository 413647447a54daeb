"""One interface over the three emulated stores, so a destination test is written once.

A `Store` knows how to write the `destination:` block of pipelines.yaml for its emulator, which
env vars that block names (tests set them), and how to create a bucket and read objects back
with the store's official client, independently of the code under test.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mixpanel_assets.destinations.objects.store import Bucket
from mixpanel_assets_tests.emulators.servers import (
    MOTO_KEY_ID,
    MOTO_REGION,
    MOTO_SECRET,
    AzuriteServer,
    GCSServer,
    MotoServer,
)


@dataclass
class Store:
    kind: str  # the destination type: s3 | gcs | azure
    scheme: str  # of the URIs our destination reports
    env: dict[str, str] = field(default_factory=dict)

    def destination(self, bucket: str, **options) -> dict:
        raise NotImplementedError

    def create_bucket(self, name: str) -> None:
        raise NotImplementedError

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        """Every object key under `prefix`, at any depth, sorted."""
        raise NotImplementedError

    def read(self, bucket: str, key: str) -> bytes:
        raise NotImplementedError

    def adapter(self, bucket: str):
        """Our `Bucket` adapter for `bucket`, built the way the IO manager builds it."""
        raise NotImplementedError


class S3Store(Store):
    def __init__(self, moto: MotoServer):
        super().__init__("s3", "s3", {"TEST_S3_KEY_ID": MOTO_KEY_ID, "TEST_S3_SECRET": MOTO_SECRET})
        self.moto = moto
        self.s3 = moto.client("s3")

    def destination(self, bucket: str, **options) -> dict:
        return {"type": "s3", "bucket": bucket, "region": MOTO_REGION, "endpoint_url": self.moto.endpoint_url,
                "access_key_id_env": "TEST_S3_KEY_ID", "secret_access_key_env": "TEST_S3_SECRET", **options}

    def create_bucket(self, name: str) -> None:
        self.s3.create_bucket(Bucket=name)

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        pages = self.s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        return sorted(item["Key"] for page in pages for item in page.get("Contents", ()))

    def read(self, bucket: str, key: str) -> bytes:
        return self.s3.get_object(Bucket=bucket, Key=key)["Body"].read()

    def adapter(self, bucket: str, **options):
        from mixpanel_assets.destinations.objects.s3 import S3Bucket

        return S3Bucket.connect(bucket, region=MOTO_REGION, endpoint_url=self.moto.endpoint_url,
                                access_key_id=MOTO_KEY_ID, secret_access_key=MOTO_SECRET, **options)


class GCSStore(Store):
    def __init__(self, gcs: GCSServer):
        super().__init__("gcs", "gs")
        self.server = gcs
        self.client = gcs.client()

    def destination(self, bucket: str, **options) -> dict:
        return {"type": "gcs", "bucket": bucket, "project": "test-project", "endpoint_url": self.server.endpoint_url,
                **options}

    def create_bucket(self, name: str) -> None:
        self.client.create_bucket(name)

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        return sorted(b.name for b in self.client.list_blobs(bucket, prefix=prefix))

    def read(self, bucket: str, key: str) -> bytes:
        return self.client.bucket(bucket).blob(key).download_as_bytes()

    def adapter(self, bucket: str, **options):
        from mixpanel_assets.destinations.objects.gcs import GCSBucket

        return GCSBucket.connect(bucket, project="test-project", endpoint_url=self.server.endpoint_url, **options)


class AzureStore(Store):
    def __init__(self, azurite: AzuriteServer):
        super().__init__("azure", "az", {"TEST_AZURE_CONNECTION": azurite.connection_string()})
        self.server = azurite
        self.service = azurite.client()

    def destination(self, bucket: str, **options) -> dict:
        return {"type": "azure", "container": bucket, "connection_string_env": "TEST_AZURE_CONNECTION", **options}

    def create_bucket(self, name: str) -> None:
        self.service.create_container(name)

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        return sorted(self.service.get_container_client(bucket).list_blob_names(name_starts_with=prefix))

    def read(self, bucket: str, key: str) -> bytes:
        return self.service.get_container_client(bucket).download_blob(key).readall()

    def adapter(self, bucket: str, **options):
        from mixpanel_assets.destinations.objects.azure import AzureBlobBucket

        return AzureBlobBucket.connect(bucket, connection_string=self.server.connection_string(), **options)


def store_for(kind: str, request) -> Store:
    """The Store of `kind`, on the session's emulator of that kind (started on first use)."""
    if kind == "s3":
        return S3Store(request.getfixturevalue("moto_server"))
    if kind == "gcs":
        return GCSStore(request.getfixturevalue("gcs_server"))
    if kind == "azure":
        return AzureStore(request.getfixturevalue("azurite_server"))
    raise ValueError(kind)


class DelegatingBucket(Bucket):
    """A real store seen through a wrapper: every call goes to `real`, so a fault test overrides
    only the one call it changes (a slow or failing upload) and the rest is the real adapter."""

    def __init__(self, real: Bucket):
        self.real = real

    def uri(self, key):
        return self.real.uri(key)

    def upload_file(self, key, path, md5=None):
        self.real.upload_file(key, path, md5=md5)

    def download_file(self, key, path):
        return self.real.download_file(key, path)

    def stat_files(self, folder):
        return self.real.stat_files(folder)

    def expected_checksum(self, path, md5):
        return self.real.expected_checksum(path, md5)

    def put_bytes(self, key, data):
        self.real.put_bytes(key, data)

    def create_if_absent(self, key, data):
        return self.real.create_if_absent(key, data)

    def get_bytes(self, key):
        return self.real.get_bytes(key)

    def list_files(self, folder):
        return self.real.list_files(folder)

    def delete(self, keys):
        self.real.delete(keys)
