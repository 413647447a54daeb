"""What the S3, GCS and Azure Blob adapters share: their errors and the checks around a write.

Cloud SDK errors carry request dumps (XML bodies, URLs with query strings, signature details);
the adapters turn the ones a user must act on into `BucketAccessError`, with a message that says
what to fix and names the bucket, never a secret. The IO manager makes those permanent failures
(no step retries: a missing bucket does not appear by waiting); access is checked once when the
destination opens, before the part files are compressed, so a typo fails in a second, not after
minutes of work.

Imports nothing heavy: loading definitions must not import boto3, google-cloud or azure.
"""

from __future__ import annotations

from pathlib import PurePosixPath

from mixpanel_assets.destinations.base import DestinationError


class ObjectStoreError(RuntimeError):
    """A store operation failed in a way a retry may fix (network, throttling, 5xx)."""


class BucketAccessError(ObjectStoreError):
    """The bucket is missing, access is denied or the credentials are rejected: retrying will not help."""

    permanent = True  # base.is_permanent: the IO manager fails the step without retries


_CONTENT_TYPES = {
    ".gz": "application/gzip",
    ".zst": "application/zstd",
    ".json": "application/json",
    ".parquet": "application/vnd.apache.parquet",
}


def content_type(key: str) -> str:
    """No Content-Encoding is ever set: a `.json.gz` part must reach readers as the gzip file it is
    (GCS would otherwise decompress it on download, and S3 clients may too)."""
    return _CONTENT_TYPES.get(PurePosixPath(key).suffix, "application/octet-stream")


def first_line(exc: BaseException, limit: int = 300) -> str:
    """The first line of an SDK error: the summary, without the response dump that follows."""
    text = str(exc).strip().splitlines()
    return text[0][:limit] if text else type(exc).__name__


def check_access(pipeline: str, bucket, folder: str) -> None:
    """List `folder` once, so a missing bucket or bad credentials fail before any work is done."""
    try:
        bucket.check_access(folder)
    except ObjectStoreError as exc:
        raise DestinationError(f"pipeline {pipeline!r}: cannot use {bucket.uri(folder)}: {exc}") from exc


def open_object_store(config, context, open_bucket):
    """The ObjectStoreDestination of a cloud store config, its bucket opened by `open_bucket()` and
    access checked once, before any part file is uploaded."""
    from mixpanel_assets.destinations.objects.store import ObjectStoreDestination

    try:
        bucket = open_bucket()
    except ObjectStoreError as exc:
        raise DestinationError(f"pipeline {context.pipeline!r}: {exc}") from exc
    destination = ObjectStoreDestination.from_config(config, context, bucket)
    project_folder = "/".join(p for p in (destination.prefix, str(context.project_id)) if p) + "/"
    check_access(context.pipeline, bucket, project_folder)
    return destination
