"""Amazon S3 (and S3-compatible stores): the `Bucket` adapter behind `type: s3`.

The boto3 client comes from dagster-aws' `S3Resource` (region, endpoint, profile, keys), after an
optional STS AssumeRole when `role_arn` is set. Parts go through boto3's managed transfer: above
`multipart_threshold` a part is uploaded in `multipart_chunksize` pieces read from the file, so a
1 GB part never sits in memory. Every object carries the configured server-side encryption.

Checksums: S3 lists each object's ETag. For a single PUT it is the MD5 of the bytes; for a
multipart upload it is md5(concatenated MD5s of the parts) + "-N", so the threshold and chunk size
are set here explicitly (and boto3's classic transfer manager is asked for) so that
`expected_checksum` can predict the ETag from the local file. With SSE-KMS (or SSE-C) the ETag is
not an MD5: it is then recorded as listed but not compared with the bytes at write time.

The IAM permissions needed are Mixpanel's own list: s3:ListBucket on the bucket and s3:PutObject,
s3:GetObject, s3:DeleteObject on its objects (plus kms:GenerateDataKey/Decrypt with aws:kms).
"""

from __future__ import annotations

import contextlib
import hashlib
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from mixpanel_assets.destinations.configs import (
    HTTP_URL,
    ObjectStoreConfig,
    RoleArn,
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


class S3DestinationConfig(ObjectStoreConfig):
    """An S3 bucket, or an S3-compatible store / emulator through `endpoint_url`.

    Credentials: keys from the env vars named here, else `role_arn` assumed with the default
    chain, else the default chain itself (env, profile, instance or task role).
    """

    type: Literal["s3"]
    bucket: str = Field(pattern=r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
    # AWS's us-east-1 or an S3-compatible store's own (auto, nyc3, fr-par, us-west-004).
    region: str | None = Field(None, pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")
    endpoint_url: str | None = Field(None, pattern=HTTP_URL)
    profile: Text | None = None
    access_key_id_env: str | None = None
    secret_access_key_env: str | None = None
    session_token_env: str | None = None
    role_arn: RoleArn | None = None
    external_id: Text | None = None  # the role trust policy's sts:ExternalId condition, if any
    server_side_encryption: Literal["AES256", "aws:kms"] | None = None
    kms_key_id: Text | None = None  # key id/ARN/alias for aws:kms; empty = the account's aws/s3 key

    _check_env = field_validator("access_key_id_env", "secret_access_key_env", "session_token_env")(env_var_name)

    @model_validator(mode="after")
    def _consistent(self) -> S3DestinationConfig:
        if (self.access_key_id_env is None) != (self.secret_access_key_env is None):
            raise ValueError("access_key_id_env and secret_access_key_env go together: give both or neither")
        if self.kms_key_id and self.server_side_encryption != "aws:kms":
            raise ValueError("kms_key_id needs server_side_encryption: aws:kms")
        return self

    def location_key(self) -> tuple:
        return ("s3", self.endpoint_url, self.bucket)

    def describe(self) -> str:
        return f"S3 bucket {self.bucket}"

    @property
    def credentials_from(self) -> str:
        """Where the credentials come from (env var *names*), for error messages."""
        if self.access_key_id_env:
            base = f"the keys in env vars {self.access_key_id_env}/{self.secret_access_key_env}"
        elif self.profile:
            base = f"AWS profile {self.profile}"
        else:
            base = "the default AWS credential chain"
        return f"role {self.role_arn} (assumed with {base})" if self.role_arn else base

    def keys(self, pipeline: str) -> dict:
        """The keys from the env vars named here, read now (when a run opens the destination)."""
        return {"access_key_id": env_secret(pipeline, "access_key_id_env", self.access_key_id_env),
                "secret_access_key": env_secret(pipeline, "secret_access_key_env", self.secret_access_key_env),
                "session_token": env_secret(pipeline, "session_token_env", self.session_token_env)}

    def open_bucket(self, pipeline: str) -> S3Bucket:
        return S3Bucket.connect(
            self.bucket, region=self.region, endpoint_url=self.endpoint_url, profile=self.profile,
            **self.keys(pipeline), role_arn=self.role_arn, external_id=self.external_id,
            credentials_from=self.credentials_from, server_side_encryption=self.server_side_encryption,
            kms_key_id=self.kms_key_id,
        )


def open_destination(config: S3DestinationConfig, context):
    return open_object_store(config, context, lambda: config.open_bucket(context.pipeline))


def table_location(config: S3DestinationConfig, project_id: int, table: str) -> str:
    return object_location("s3", config.bucket, config.prefix, project_id, table)


MULTIPART_THRESHOLD = 64 << 20
MULTIPART_CHUNKSIZE = 16 << 20  # x4 threads: at most ~64 MB of a part in memory
DELETE_BATCH = 1000  # DeleteObjects accepts at most 1000 keys

_MISSING_BUCKET = {"NoSuchBucket"}
_DENIED = {"AccessDenied", "AllAccessDisabled", "AccountProblem", "KMS.AccessDeniedException",
           "KMS.DisabledException", "KMS.NotFoundException", "KMS.KMSInvalidStateException"}
_BAD_CREDENTIALS = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken",
                    "TokenRefreshRequired", "InvalidClientTokenId", "UnrecognizedClientException"}
_WRONG_PLACE = {"PermanentRedirect", "AuthorizationHeaderMalformed", "IllegalLocationConstraintException",
                "InvalidBucketName"}


class S3Bucket(Bucket):
    def __init__(self, client, bucket: str, *, server_side_encryption: str | None = None,
                 kms_key_id: str | None = None, credentials_from: str = "the default AWS credential chain",
                 multipart_threshold: int = MULTIPART_THRESHOLD, multipart_chunksize: int = MULTIPART_CHUNKSIZE):
        self.client = client
        self.bucket = bucket
        self.credentials_from = credentials_from
        self.extra: dict[str, str] = {}
        if server_side_encryption:
            self.extra["ServerSideEncryption"] = server_side_encryption
            if kms_key_id:
                self.extra["SSEKMSKeyId"] = kms_key_id
        self._threshold = multipart_threshold
        self._chunksize = multipart_chunksize

    @classmethod
    def connect(cls, bucket: str, *, region: str | None = None, endpoint_url: str | None = None,
                profile: str | None = None, access_key_id: str | None = None, secret_access_key: str | None = None,
                session_token: str | None = None, role_arn: str | None = None, external_id: str | None = None,
                credentials_from: str = "the default AWS credential chain", **options) -> S3Bucket:
        """Build the client through dagster-aws' S3Resource, assuming `role_arn` first if given."""
        from dagster_aws.s3 import S3Resource

        keys = {"aws_access_key_id": access_key_id, "aws_secret_access_key": secret_access_key,
                "aws_session_token": session_token}
        base = S3Resource(region_name=region, endpoint_url=endpoint_url, profile_name=profile, **keys)
        if role_arn:
            keys = _assume_role(bucket, role_arn, external_id, credentials_from, region=region,
                                endpoint_url=endpoint_url, profile=profile, keys=keys)
            base = S3Resource(region_name=region, endpoint_url=endpoint_url, **keys)
        from botocore.exceptions import BotoCoreError

        try:
            client = base.get_client()
        except BotoCoreError as exc:  # e.g. ProfileNotFound
            raise BucketAccessError(f"cannot build an S3 client for bucket {bucket!r}: {first_line(exc)}") from exc
        return cls(client, bucket, credentials_from=credentials_from, **options)

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    def describe(self) -> str:
        encryption = f", SSE {self.extra['ServerSideEncryption']}" if self.extra else ""
        return f"S3 bucket {self.bucket}{encryption}"

    def upload_file(self, key: str, path: Path, md5: str | None = None) -> None:
        from boto3.s3.transfer import TransferConfig

        config = TransferConfig(multipart_threshold=self._threshold, multipart_chunksize=self._chunksize,
                                max_concurrency=4, use_threads=True, preferred_transfer_client="classic")
        with self._errors("PutObject", key):
            self.client.upload_file(str(path), self.bucket, key, Config=config,
                                    ExtraArgs={**self.extra, "ContentType": content_type(key)})

    def put_bytes(self, key: str, data: bytes) -> None:
        with self._errors("PutObject", key):
            self.client.put_object(Bucket=self.bucket, Key=key, Body=data, ContentType=content_type(key),
                                   **self.extra)

    def create_if_absent(self, key: str, data: bytes) -> bool:
        """PutObject with `If-None-Match: *` (S3 conditional writes, 2024): 412 when the key exists,
        409 when a concurrent conditional write to it is still in flight (the other one wins)."""
        from botocore.exceptions import ClientError

        with self._errors("PutObject", key):
            try:
                self.client.put_object(Bucket=self.bucket, Key=key, Body=data, IfNoneMatch="*",
                                       ContentType=content_type(key), **self.extra)
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") in ("PreconditionFailed", "ConditionalRequestConflict",
                                                                 "412", "409"):
                    return False
                raise
        return True

    def get_bytes(self, key: str) -> bytes | None:
        from botocore.exceptions import ClientError

        with self._errors("GetObject", key):
            try:
                return self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                    return None
                raise

    def download_file(self, key: str, path: Path) -> bool:
        from botocore.exceptions import ClientError

        with self._errors("GetObject", key):
            try:
                self.client.download_file(self.bucket, key, str(path))  # ranged GETs straight to disk
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                    return False
                raise
        return True

    def list_files(self, folder: str) -> list[str]:
        keys = []
        with self._errors("ListBucket", folder):
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=folder, Delimiter="/")
            for page in pages:
                keys.extend(item["Key"] for item in page.get("Contents", ()))
        return sorted(keys)

    def stat_files(self, folder: str) -> dict[str, StoredFile]:
        stats = {}
        with self._errors("ListBucket", folder):
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=folder, Delimiter="/")
            for page in pages:
                for item in page.get("Contents", ()):
                    stats[item["Key"]] = StoredFile(int(item["Size"]), item.get("ETag"), "etag")
        return stats

    def expected_checksum(self, path: Path, md5: str) -> str | None:
        """The ETag S3 will list for `path` uploaded by upload_file (quoted, as listed)."""
        if self.extra.get("ServerSideEncryption") == "aws:kms":
            return None
        size = Path(path).stat().st_size
        if size < self._threshold:
            return f'"{md5}"'
        from s3transfer.utils import ChunksizeAdjuster

        chunk = ChunksizeAdjuster().adjust_chunksize(self._chunksize, size)  # what the transfer manager will use
        digests = []
        with open(path, "rb") as f:
            while data := f.read(chunk):
                digests.append(hashlib.md5(data).digest())
        return f'"{hashlib.md5(b"".join(digests)).hexdigest()}-{len(digests)}"'

    def delete(self, keys: list[str]) -> None:
        for start in range(0, len(keys), DELETE_BATCH):
            batch = keys[start:start + DELETE_BATCH]
            with self._errors("DeleteObject", batch[0]):
                response = self.client.delete_objects(
                    Bucket=self.bucket, Delete={"Objects": [{"Key": k} for k in batch], "Quiet": True})
            errors = response.get("Errors") or []
            if errors:
                first = errors[0]
                code = first.get("Code", "")
                if code in _DENIED:
                    raise self._denied("DeleteObject", first.get("Key", ""), code)
                raise ObjectStoreError(
                    f"S3 could not delete {len(errors)} of {len(batch)} objects in bucket {self.bucket!r}, "
                    f"first {first.get('Key')!r}: {code} {first.get('Message', '')}")

    def check_access(self, folder: str) -> None:
        with self._errors("ListBucket", folder):
            self.client.list_objects_v2(Bucket=self.bucket, Prefix=folder, Delimiter="/", MaxKeys=1)

    # -- errors -------------------------------------------------------------------------------

    def _denied(self, action: str, key: str, code: str) -> BucketAccessError:
        kms = " and kms:GenerateDataKey/kms:Decrypt on the KMS key" if "SSEKMSKeyId" in self.extra or code.startswith("KMS") else ""
        return BucketAccessError(
            f"access denied ({code}) for s3:{action} on s3://{self.bucket}/{key} with {self.credentials_from}; "
            f"the identity needs s3:ListBucket on the bucket and s3:PutObject, s3:GetObject and s3:DeleteObject "
            f"on its objects{kms}")

    @contextlib.contextmanager
    def _errors(self, action: str, key: str):
        """Turn botocore errors into ObjectStoreError (retryable) or BucketAccessError (not)."""
        try:
            yield
        except ObjectStoreError:
            raise
        except Exception as exc:
            translated = _translate(self, action, key, exc)
            if translated is None:
                raise
            raise translated from exc


def _client_error(exc: BaseException):
    """The botocore ClientError behind `exc` (boto3's transfer wraps it in S3UploadFailedError)."""
    from botocore.exceptions import ClientError

    seen = exc
    for _ in range(3):
        if isinstance(seen, ClientError):
            return seen
        seen = seen.__cause__ or seen.__context__
        if seen is None:
            return None
    return None


def _translate(bucket: S3Bucket, action: str, key: str, exc: BaseException) -> ObjectStoreError | None:
    from botocore.exceptions import BotoCoreError, NoCredentialsError, PartialCredentialsError

    name = bucket.bucket
    if isinstance(exc, (NoCredentialsError, PartialCredentialsError)):
        return BucketAccessError(
            f"no usable AWS credentials for S3 bucket {name!r} ({type(exc).__name__}); set the env vars named by "
            "access_key_id_env/secret_access_key_env in the destination, or give the process a role/profile")
    error = _client_error(exc)
    if error is None:
        if isinstance(exc, BotoCoreError):
            return ObjectStoreError(f"S3 {action} on s3://{name}/{key} failed: {first_line(exc)}")
        return None
    code = str(error.response.get("Error", {}).get("Code", ""))
    status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    if code in _MISSING_BUCKET:
        return BucketAccessError(f"S3 bucket {name!r} does not exist (NoSuchBucket); create it or fix `bucket`")
    if code in _BAD_CREDENTIALS:
        return BucketAccessError(
            f"S3 rejected the credentials ({code}) from {bucket.credentials_from} for bucket {name!r}; "
            "check that the key id and secret belong together and have not expired")
    if code in _DENIED or (status == 403 and code in ("", "403", "Forbidden")):
        return bucket._denied(action, key, code or "403 Forbidden")
    if code in _WRONG_PLACE:
        return BucketAccessError(
            f"S3 bucket {name!r} cannot be used as configured ({code}: {error.response['Error'].get('Message', '')}); "
            "check `bucket` and `region`")
    return ObjectStoreError(f"S3 {action} on s3://{name}/{key} failed: {code or status} {first_line(error)}")


def _assume_role(bucket: str, role_arn: str, external_id: str | None, credentials_from: str, *,
                 region: str | None, endpoint_url: str | None, profile: str | None, keys: dict) -> dict:
    """Temporary keys for `role_arn`, from the configured keys/profile (valid one hour: far longer
    than one run's upload). STS is asked at `endpoint_url` too when set, as emulators serve both."""
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    sts = boto3.Session(profile_name=profile, **keys).client("sts", region_name=region, endpoint_url=endpoint_url)
    args = {"RoleArn": role_arn, "RoleSessionName": "mixpanel-assets-export", "DurationSeconds": 3600}
    if external_id:
        args["ExternalId"] = external_id
    try:
        creds = sts.assume_role(**args)["Credentials"]
    except (ClientError, BotoCoreError) as exc:
        raise BucketAccessError(
            f"could not assume role {role_arn} for S3 bucket {bucket!r} with {credentials_from}: "
            f"{first_line(exc)}") from exc
    return {"aws_access_key_id": creds["AccessKeyId"], "aws_secret_access_key": creds["SecretAccessKey"],
            "aws_session_token": creds["SessionToken"]}
