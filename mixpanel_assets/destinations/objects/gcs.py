"""Google Cloud Storage: the `Bucket` adapter behind `type: gcs`.

The client comes from dagster-gcp's `GCSResource` (Application Default Credentials: the
GOOGLE_APPLICATION_CREDENTIALS key file, workload identity or the metadata server) unless the
destination names an env var holding a service-account key, or an emulator endpoint. Parts above
RESUMABLE_CHUNK go up as resumable uploads read from the file one chunk at a time, so a large part
never sits in memory and a dropped connection resumes instead of starting over.

The identity needs Storage Object Admin on the bucket (Mixpanel asks for the same role):
storage.objects.create/get/list/delete.

Checksums: GCS computes and lists each object's MD5 (base64) and CRC32C, resumable uploads
included; only composite objects lack the MD5, and then the CRC32C is what is listed.
"""

from __future__ import annotations

import base64
import contextlib
import json
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from mixpanel_assets.destinations.configs import (
    HTTP_URL,
    ObjectStoreConfig,
    Text,
    env_secret,
    env_var_name,
    object_location,
)
from mixpanel_assets.destinations.objects.at_rest import StoredFile
from mixpanel_assets.destinations.objects.cloud import (
    BucketAccessError,
    ObjectStoreError,
    content_type,
    first_line,
    open_object_store,
)
from mixpanel_assets.destinations.objects.store import Bucket


class GCSDestinationConfig(ObjectStoreConfig):
    """A GCS bucket. Credentials: the service-account key in `credentials_env` (its JSON, or the
    path to the key file), else Application Default Credentials."""

    type: Literal["gcs"]
    bucket: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]$")
    project: Text | None = None
    credentials_env: str | None = None
    endpoint_url: str | None = Field(None, pattern=HTTP_URL)  # emulators: anonymous access

    _check_env = field_validator("credentials_env")(env_var_name)

    def location_key(self) -> tuple:
        return ("gcs", self.endpoint_url, self.bucket)

    def describe(self) -> str:
        return f"GCS bucket {self.bucket}"


def open_destination(config: GCSDestinationConfig, context):
    def open_bucket() -> GCSBucket:
        credentials = env_secret(context.pipeline, "credentials_env", config.credentials_env)
        return GCSBucket.connect(config.bucket, project=config.project, credentials=credentials,
                                 credentials_env=config.credentials_env, endpoint_url=config.endpoint_url)

    return open_object_store(config, context, open_bucket)


def table_location(config: GCSDestinationConfig, project_id: int, table: str) -> str:
    return object_location("gs", config.bucket, config.prefix, project_id, table)


RESUMABLE_CHUNK = 16 << 20  # a multiple of 256 KiB, as the resumable protocol requires
_SCOPES = ("https://www.googleapis.com/auth/devstorage.read_write",)


class GCSBucket(Bucket):
    def __init__(self, client, bucket: str, *, credentials_from: str = "Application Default Credentials",
                 chunk_size: int = RESUMABLE_CHUNK):
        self.client = client
        self.bucket_name = bucket
        self.bucket = client.bucket(bucket)
        self.credentials_from = credentials_from
        self.chunk_size = chunk_size

    @classmethod
    def connect(cls, bucket: str, *, project: str | None = None, credentials: str | None = None,
                credentials_env: str | None = None, endpoint_url: str | None = None, **options) -> GCSBucket:
        """`credentials` is a service-account key (JSON text or a path to the file), from an env var."""
        client_options = {"api_endpoint": endpoint_url} if endpoint_url else None
        if credentials:
            from google.cloud import storage

            creds, key_project = _service_account(bucket, credentials, credentials_env)
            client = storage.Client(project=project or key_project, credentials=creds, client_options=client_options)
            return cls(client, bucket, credentials_from=f"the service-account key in env var {credentials_env}",
                       **options)
        if endpoint_url:
            # An emulator: no Google credentials exist, and none may be looked up (no network).
            from google.auth.credentials import AnonymousCredentials
            from google.cloud import storage

            client = storage.Client(project=project or "local", credentials=AnonymousCredentials(),
                                    client_options=client_options)
            return cls(client, bucket, credentials_from=f"anonymous access to {endpoint_url}", **options)
        from dagster_gcp.gcs import GCSResource
        from google.auth.exceptions import DefaultCredentialsError

        try:
            client = GCSResource(project=project).get_client()
        except DefaultCredentialsError as exc:
            raise BucketAccessError(
                f"no Google credentials for GCS bucket {bucket!r}: set GOOGLE_APPLICATION_CREDENTIALS, run on a "
                "workload with a service account, or name an env var holding a key in `credentials_env`") from exc
        return cls(client, bucket, **options)

    def uri(self, key: str) -> str:
        return f"gs://{self.bucket_name}/{key}"

    def describe(self) -> str:
        return f"GCS bucket {self.bucket_name}"

    def upload_file(self, key: str, path: Path, md5: str | None = None) -> None:
        size = Path(path).stat().st_size
        # chunk_size switches the client to a resumable session that reads the file chunk by chunk.
        blob = self.bucket.blob(key, chunk_size=self.chunk_size if size > self.chunk_size else None)
        with self._errors("create", key):
            blob.upload_from_filename(str(path), content_type=content_type(key))

    def put_bytes(self, key: str, data: bytes) -> None:
        with self._errors("create", key):
            self.bucket.blob(key).upload_from_string(data, content_type=content_type(key))

    def create_if_absent(self, key: str, data: bytes) -> bool:
        """`ifGenerationMatch=0`: GCS creates the object only if no live generation exists."""
        from google.api_core.exceptions import PreconditionFailed

        with self._errors("create", key):
            try:
                self.bucket.blob(key).upload_from_string(data, content_type=content_type(key), if_generation_match=0)
            except PreconditionFailed:
                return False
        return True

    def get_bytes(self, key: str) -> bytes | None:
        from google.api_core.exceptions import NotFound

        with self._errors("get", key):
            blob = self.bucket.get_blob(key)  # None when the object is missing; NotFound when the bucket is
            if blob is None:
                return None
            try:
                return blob.download_as_bytes()
            except NotFound:
                return None

    def download_file(self, key: str, path: Path) -> bool:
        from google.api_core.exceptions import NotFound

        with self._errors("get", key):
            blob = self.bucket.get_blob(key)
            if blob is None:
                return False
            try:
                blob.download_to_filename(str(path))  # chunked, straight to disk
            except NotFound:
                return False
        return True

    def list_files(self, folder: str) -> list[str]:
        with self._errors("list", folder):
            blobs = self.client.list_blobs(self.bucket_name, prefix=folder, delimiter="/")
            return sorted(b.name for b in blobs)

    def stat_files(self, folder: str) -> dict[str, StoredFile]:
        with self._errors("list", folder):
            blobs = self.client.list_blobs(self.bucket_name, prefix=folder, delimiter="/")
            return {b.name: StoredFile(int(b.size or 0), b.md5_hash, "md5-base64") if b.md5_hash
                    else StoredFile(int(b.size or 0), b.crc32c, "crc32c") for b in blobs}

    def expected_checksum(self, path: Path, md5: str) -> str | None:
        return base64.b64encode(bytes.fromhex(md5)).decode()

    def delete(self, keys: list[str]) -> None:
        from google.api_core.exceptions import NotFound

        for key in keys:
            with self._errors("delete", key):
                try:
                    self.bucket.delete_blob(key)
                except NotFound:
                    pass  # already gone: the goal of a delete

    def check_access(self, folder: str) -> None:
        with self._errors("list", folder):
            next(iter(self.client.list_blobs(self.bucket_name, prefix=folder, delimiter="/", max_results=1)), None)

    @contextlib.contextmanager
    def _errors(self, permission: str, key: str):
        from google.api_core import exceptions as gexc
        from google.auth.exceptions import GoogleAuthError

        name = self.bucket_name
        try:
            yield
        except ObjectStoreError:
            raise
        except gexc.NotFound as exc:
            raise BucketAccessError(f"GCS bucket {name!r} does not exist (404); create it or fix `bucket`") from exc
        except (gexc.Forbidden, gexc.Unauthorized) as exc:
            raise BucketAccessError(
                f"access denied ({exc.code}) for storage.objects.{permission} on gs://{name}/{key} with "
                f"{self.credentials_from}; grant the identity Storage Object Admin on the bucket") from exc
        except GoogleAuthError as exc:
            raise BucketAccessError(
                f"Google rejected the credentials ({type(exc).__name__}) from {self.credentials_from} for GCS "
                f"bucket {name!r}; check the key is current and its service account is enabled") from exc
        except gexc.GoogleAPIError as exc:
            raise ObjectStoreError(f"GCS {permission} on gs://{name}/{key} failed: {first_line(exc)}") from exc


def _service_account(bucket: str, value: str, env_name: str | None):
    """Credentials from a key given as JSON text or as a path; errors never quote the value."""
    from google.oauth2 import service_account

    where = f"env var {env_name}" if env_name else "the configured credentials"
    try:
        if value.lstrip().startswith("{"):
            info = json.loads(value)
        else:
            info = json.loads(Path(value).read_text())
        creds = service_account.Credentials.from_service_account_info(info, scopes=_SCOPES)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise BucketAccessError(
            f"the service-account key in {where} for GCS bucket {bucket!r} is not usable ({type(exc).__name__}); "
            "it must hold the key file's JSON, or the path to that file") from None
    return creds, info.get("project_id")
