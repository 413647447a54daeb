"""Azure Blob Storage: the `Bucket` adapter behind `type: azure` (the "bucket" is a container).

Credentials, in Mixpanel's order of preference: a service principal (tenant id, client id,
client secret: azure-identity's ClientSecretCredential, which is what Mixpanel asks for), an
account key, a SAS token, a connection string, or else DefaultAzureCredential (managed identity,
`az login`, AZURE_* variables), the same choices dagster-azure's AzureBlobStorageResource offers.
The client is built here rather than through that resource because the resource gives a client
closed at the end of a `with` block and without block-size settings, while one export keeps one
client open across its windows and needs staged block uploads: above `max_single_put_size` a
part is sent as blocks of `max_block_size` read from the file, then committed as one blob.

The identity needs Storage Blob Data Contributor on the container (Mixpanel asks for the same).

Checksums: the service computes a blob's Content-MD5 only for a single Put Blob, not for blobs
committed from blocks. So a part small enough for one put gets the service's own MD5 (a real
check of the bytes received), while a larger one carries the MD5 of the local file, sent by us as
its Content-MD5 property. `stat_files` lists that Content-MD5 as the checksum (base64) and the
blob's ETag beside it: the ETag changes whenever the blob is written again, whatever its bytes,
so the checks catch a part overwritten after the manifest even where Content-MD5 is only our claim.
"""

from __future__ import annotations

import base64
import contextlib
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from mixpanel_assets.destinations.configs import HTTP_URL, ObjectStoreConfig, env_secret, env_var_name, object_location
from mixpanel_assets.destinations.objects.at_rest import StoredFile
from mixpanel_assets.destinations.objects.cloud import (
    BucketAccessError,
    ObjectStoreError,
    content_type,
    first_line,
    open_object_store,
)
from mixpanel_assets.destinations.objects.store import Bucket


class AzureDestinationConfig(ObjectStoreConfig):
    """An Azure Blob container. Credentials (one kind): a service principal (three env vars), an
    account key, a SAS token, a connection string, else DefaultAzureCredential."""

    type: Literal["azure"]
    container: str = Field(pattern=r"^[a-z0-9]+(-[a-z0-9]+)*$", min_length=3, max_length=63)
    account: str | None = Field(None, pattern=r"^[a-z0-9]{3,24}$")  # -> https://<account>.blob.core.windows.net
    account_url: str | None = Field(None, pattern=HTTP_URL)  # instead of account: emulators, other clouds
    connection_string_env: str | None = None
    account_key_env: str | None = None
    sas_token_env: str | None = None
    tenant_id_env: str | None = None
    client_id_env: str | None = None
    client_secret_env: str | None = None

    _check_env = field_validator("connection_string_env", "account_key_env", "sas_token_env", "tenant_id_env",
                                 "client_id_env", "client_secret_env")(env_var_name)

    @model_validator(mode="after")
    def _consistent(self) -> AzureDestinationConfig:
        principal = (self.tenant_id_env, self.client_id_env, self.client_secret_env)
        if any(principal) and not all(principal):
            raise ValueError("a service principal needs tenant_id_env, client_id_env and client_secret_env")
        kinds = [bool(self.connection_string_env), bool(self.account_key_env), bool(self.sas_token_env), all(principal)]
        if sum(kinds) > 1:
            raise ValueError("give one kind of credentials: connection_string_env, account_key_env, sas_token_env "
                             "or the service principal's three env vars")
        if self.account and self.account_url:
            raise ValueError("give account or account_url, not both")
        if not (self.account or self.account_url or self.connection_string_env):
            raise ValueError("account (the storage account name) is required unless connection_string_env is given")
        return self

    @property
    def effective_account_url(self) -> str | None:
        if self.account_url:
            return self.account_url.rstrip("/")
        return f"https://{self.account}.blob.core.windows.net" if self.account else None

    def location_key(self) -> tuple:
        return ("azure", self.effective_account_url or self.connection_string_env, self.container)

    def describe(self) -> str:
        where = f" in storage account {self.account}" if self.account else ""
        return f"Azure container {self.container}{where}"

    @property
    def credentials_from(self) -> str:
        """Where the credentials come from (env var *names*), for error messages."""
        if self.connection_string_env:
            return f"the connection string in env var {self.connection_string_env}"
        if self.account_key_env:
            return f"the account key in env var {self.account_key_env}"
        if self.sas_token_env:
            return f"the SAS token in env var {self.sas_token_env}"
        if self.client_secret_env:
            return (f"the service principal in env vars {self.tenant_id_env}/{self.client_id_env}/"
                    f"{self.client_secret_env}")
        return "DefaultAzureCredential"


def open_destination(config: AzureDestinationConfig, context):
    def open_bucket() -> AzureBlobBucket:
        secrets = {field[:-4]: env_secret(context.pipeline, field, getattr(config, field))
                   for field in ("connection_string_env", "account_key_env", "sas_token_env", "tenant_id_env",
                                 "client_id_env", "client_secret_env")}
        return AzureBlobBucket.connect(config.container, account_url=config.effective_account_url, **secrets,
                                       credentials_from=config.credentials_from)

    return open_object_store(config, context, open_bucket)


def table_location(config: AzureDestinationConfig, project_id: int, table: str) -> str:
    return object_location("az", config.container, config.prefix, project_id, table)


MAX_SINGLE_PUT = 32 << 20
BLOCK_SIZE = 16 << 20
UPLOAD_CONCURRENCY = 4

_MISSING = {"ContainerNotFound", "ResourceNotFound", "AccountNotFound"}
_BAD_CREDENTIALS = {"AuthenticationFailed", "InvalidAuthenticationInfo", "NoAuthenticationInformation",
                    "AuthorizationFailure"}
_DENIED = {"AuthorizationPermissionMismatch", "AuthorizationSourceIPMismatch", "AuthorizationProtocolMismatch",
           "InsufficientAccountPermissions", "AccountIsDisabled", "AuthorizationResourceTypeMismatch"}


class AzureBlobBucket(Bucket):
    def __init__(self, service, container: str, *, credentials_from: str = "DefaultAzureCredential",
                 max_single_put: int = MAX_SINGLE_PUT):
        self.service = service
        self.max_single_put = max_single_put
        self.container_name = container
        self.container = service.get_container_client(container)
        self.account = service.account_name
        self.credentials_from = credentials_from

    @classmethod
    def connect(cls, container: str, *, account_url: str | None = None, connection_string: str | None = None,
                account_key: str | None = None, sas_token: str | None = None, tenant_id: str | None = None,
                client_id: str | None = None, client_secret: str | None = None,
                credentials_from: str = "DefaultAzureCredential", max_single_put_size: int = MAX_SINGLE_PUT,
                max_block_size: int = BLOCK_SIZE) -> AzureBlobBucket:
        from azure.storage.blob import BlobServiceClient

        sizes = {"max_single_put_size": max_single_put_size, "max_block_size": max_block_size}
        try:
            if connection_string:
                service = BlobServiceClient.from_connection_string(connection_string, **sizes)
            else:
                service = BlobServiceClient(account_url, credential=_credential(
                    account_key, sas_token, tenant_id, client_id, client_secret), **sizes)
        except ValueError:
            # The SDK's message may quote the malformed connection string: never repeat it.
            raise BucketAccessError(
                f"the Azure credentials from {credentials_from} for container {container!r} are malformed "
                "(a connection string needs AccountName, AccountKey or SharedAccessSignature, and endpoints)"
            ) from None
        return cls(service, container, credentials_from=credentials_from, max_single_put=max_single_put_size)

    def uri(self, key: str) -> str:
        return f"az://{self.container_name}/{key}"

    def describe(self) -> str:
        return f"Azure container {self.container_name} in storage account {self.account}"

    def upload_file(self, key: str, path: Path, md5: str | None = None) -> None:
        from azure.storage.blob import ContentSettings

        size = Path(path).stat().st_size
        settings = ContentSettings(content_type=content_type(key))
        if md5 and size > self.max_single_put:
            settings.content_md5 = bytearray(bytes.fromhex(md5))  # blocks: the service computes none
        with self._errors("write", key), open(path, "rb") as stream:
            self.container.upload_blob(key, stream, length=size, overwrite=True, max_concurrency=UPLOAD_CONCURRENCY,
                                       content_settings=settings)

    def put_bytes(self, key: str, data: bytes) -> None:
        from azure.storage.blob import ContentSettings

        with self._errors("write", key):
            self.container.upload_blob(key, data, overwrite=True,
                                       content_settings=ContentSettings(content_type=content_type(key)))

    def create_if_absent(self, key: str, data: bytes) -> bool:
        """`overwrite=False` sends `If-None-Match: *`: the service answers 409 BlobAlreadyExists."""
        from azure.core.exceptions import ResourceExistsError
        from azure.storage.blob import ContentSettings

        with self._errors("write", key):
            try:
                self.container.upload_blob(key, data, overwrite=False,
                                           content_settings=ContentSettings(content_type=content_type(key)))
            except ResourceExistsError:
                return False
        return True

    def get_bytes(self, key: str) -> bytes | None:
        from azure.core.exceptions import ResourceNotFoundError

        with self._errors("read", key):
            try:
                return self.container.download_blob(key).readall()
            except ResourceNotFoundError as exc:
                if _code(exc) == "BlobNotFound":
                    return None
                raise

    def download_file(self, key: str, path: Path) -> bool:
        from azure.core.exceptions import ResourceNotFoundError

        with self._errors("read", key):
            try:
                downloader = self.container.download_blob(key)
                with open(path, "wb") as f:
                    downloader.readinto(f)  # chunked, straight to disk
            except ResourceNotFoundError as exc:
                if _code(exc) == "BlobNotFound":
                    return False
                raise
        return True

    def list_files(self, folder: str) -> list[str]:
        from azure.storage.blob import BlobPrefix

        with self._errors("list", folder):
            items = self.container.walk_blobs(name_starts_with=folder, delimiter="/")
            return sorted(item.name for item in items if not isinstance(item, BlobPrefix))

    def stat_files(self, folder: str) -> dict[str, StoredFile]:
        from azure.storage.blob import BlobPrefix

        stats = {}
        with self._errors("list", folder):
            for item in self.container.walk_blobs(name_starts_with=folder, delimiter="/"):
                if isinstance(item, BlobPrefix):
                    continue
                md5 = item.content_settings.content_md5 if item.content_settings else None
                stats[item.name] = StoredFile(int(item.size), base64.b64encode(bytes(md5)).decode() if md5 else None,
                                              "content-md5", etag=item.etag)
        return stats

    def expected_checksum(self, path: Path, md5: str) -> str | None:
        return base64.b64encode(bytes.fromhex(md5)).decode()

    def delete(self, keys: list[str]) -> None:
        from azure.core.exceptions import ResourceNotFoundError

        for key in keys:
            with self._errors("delete", key):
                try:
                    self.container.delete_blob(key)
                except ResourceNotFoundError as exc:
                    if _code(exc) != "BlobNotFound":  # already gone is the goal of a delete
                        raise

    def check_access(self, folder: str) -> None:
        with self._errors("list", folder):
            next(iter(self.container.list_blobs(name_starts_with=folder, results_per_page=1)), None)

    @contextlib.contextmanager
    def _errors(self, action: str, key: str):
        from azure.core.exceptions import AzureError, ClientAuthenticationError, HttpResponseError

        name = self.container_name
        try:
            yield
        except ObjectStoreError:
            raise
        except AzureError as exc:
            code = _code(exc)
            where = f"container {name!r} of storage account {self.account!r}"
            if code in _MISSING:
                raise BucketAccessError(f"Azure {where} does not exist ({code}); create it or fix `container`") from None
            if code in _BAD_CREDENTIALS or (isinstance(exc, ClientAuthenticationError) and code not in _DENIED):
                raise BucketAccessError(
                    f"Azure rejected the credentials ({code or type(exc).__name__}) from {self.credentials_from} "
                    f"for {where}; check the key/secret is current and the account's network rules") from None
            if code in _DENIED or (isinstance(exc, HttpResponseError) and exc.status_code == 403):
                raise BucketAccessError(
                    f"access denied ({code or 403}) to {action} az://{name}/{key} with {self.credentials_from}; "
                    "assign the identity Storage Blob Data Contributor on the container") from None
            # Azure's messages end with the XML response; only its first line is worth keeping.
            raise ObjectStoreError(f"Azure {action} of az://{name}/{key} failed: {code or ''} {first_line(exc)}") from exc


def _code(exc) -> str:
    code = getattr(exc, "error_code", None)
    return str(getattr(code, "value", code) or "")


def _credential(account_key, sas_token, tenant_id, client_id, client_secret):
    if tenant_id or client_id or client_secret:
        from azure.identity import ClientSecretCredential

        return ClientSecretCredential(tenant_id, client_id, client_secret)
    if account_key:
        return account_key
    if sas_token:
        return sas_token
    from azure.identity import DefaultAzureCredential

    return DefaultAzureCredential()
