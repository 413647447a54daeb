"""What is at rest in a folder, proved from its manifest and ONE listing, without downloading a part.

The writer knows each part's rows, bytes and MD5 as written, and staging already removed rows
whose dedup key it had kept. So after the upload the writer lists the folder once
(`Bucket.stat_files`), refuses parts whose size or store checksum differ from what the local bytes
predict (`verify_uploads`), and records both checksums in `manifest.json`. Later, the asset checks
list the folder again and compare (`prove_folder`): every part the manifest names is there with
the same size and the same store checksum, no other `part-*` file is, and the manifest's counts
add up. Equal store checksums mean the bytes readers get are the bytes that were written and
counted, which is what a read-back would re-derive at the price of downloading every part.

What this does not do is re-parse rows: a bug in the writer itself (rows miscounted, a column
misnamed) is caught only by the deep read-back (`checks: {read_back: true}`), which stays available.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from mixpanel_assets.destinations.base import DestinationError, EventWindowReadback, TableReadback
from mixpanel_assets.schema import EVENTS_TABLE

MANIFEST = "manifest.json"
MAX_LISTED = 5  # part names quoted per problem: enough to act on, short enough for a UI line


@dataclass(frozen=True)
class StoredFile:
    """One object as its store lists it: size and the store's own checksum, in the store's spelling
    (`kind`: "md5" hex for local files, "etag" for S3, "md5-base64"/"crc32c" for GCS,
    "content-md5" base64 for Azure). `etag` is a version identifier kept beside it where it is not
    the checksum itself (Azure)."""

    size: int
    checksum: str | None
    kind: str
    etag: str | None = None


def part_entry(part, md5: str, stored: StoredFile) -> dict:
    """A part's line in manifest.json: what was written (rows, bytes, md5) and what the store said."""
    entry = {"name": part.name, "rows": part.rows, "bytes": part.size, "md5": md5, "stored": stored.checksum,
             "checksum_kind": stored.kind}
    if stored.etag is not None:
        entry["etag"] = stored.etag
    return entry


def verify_uploads(bucket, folder: str, parts: list, md5s: dict[str, str], expected: dict[str, str | None],
                   pipeline: str) -> list[dict]:
    """One listing after the uploads: each part must be there with its written size and the store
    checksum its bytes predict (`expected`, None where the store's checksum is not derived from the
    bytes, e.g. SSE-KMS ETags). Returns the parts' manifest entries; a mismatch raises, naming the
    part and both values, before any manifest is written."""
    if not parts:
        return []
    listed = bucket.stat_files(folder)
    entries, problems = [], []
    for part in parts:
        stored = listed.get(folder + part.name)
        want = expected.get(part.name)
        if stored is None:
            problems.append(f"{part.name} is not in the folder after its upload")
        elif stored.size != part.size:
            problems.append(f"{part.name} is stored with {stored.size} bytes, {part.size} were written")
        elif want is not None and stored.checksum != want:
            problems.append(f"{part.name} is stored with {stored.kind} {stored.checksum}, the written bytes "
                            f"(md5 {md5s[part.name]}) give {want}")
        else:
            entries.append(part_entry(part, md5s[part.name], stored))
    if problems:
        raise DestinationError(
            f"pipeline {pipeline!r}: the parts uploaded to {bucket.uri(folder)} differ from what was written: "
            f"{'; '.join(problems[:MAX_LISTED])}; the previous data there is unchanged")
    return entries


def fallback_reason(manifest: dict | None, table: str) -> str | None:
    """Why this folder cannot be proved from its manifest (then it is read back), or None."""
    if manifest is None:
        return f"no {MANIFEST}"
    parts = manifest.get("parts", [])
    if any("md5" not in p or "stored" not in p for p in parts) or "columns" not in manifest:
        return f"{MANIFEST} predates part checksums"
    if "rows" not in manifest or any(p.get("rows") is None or p.get("bytes") is None for p in parts):
        return f"{MANIFEST} does not record every part's rows and bytes"
    if table == EVENTS_TABLE and "duplicate_keys" not in manifest:
        return f"{MANIFEST} does not record duplicate dedup keys"
    if table != EVENTS_TABLE and "duplicate_ids" not in manifest:
        return f"{MANIFEST} does not record duplicate distinct_ids (the writer did not count them)"
    return None


def prove_folder(bucket, folder: str, table: str, manifest: dict) -> EventWindowReadback | TableReadback:
    """The check's view of a folder whose manifest has checksums (see fallback_reason): rows are
    the manifest's parts' rows, as readers honouring it see them; problems name the parts."""
    listed = bucket.stat_files(folder)
    parts = manifest.get("parts", [])
    problems: list[str] = []
    names = Counter(p["name"] for p in parts)
    twice = sorted(n for n, c in names.items() if c > 1)
    if twice:
        problems.append(f"{len(twice)} part files listed more than once in {MANIFEST}: {twice[:MAX_LISTED]}")
    for entry in parts:
        name = entry["name"]
        stored = listed.get(folder + name)
        if stored is None:
            problems.append(f"{name} is listed in {MANIFEST} but missing")
        elif stored.size != entry["bytes"]:
            problems.append(f"{name} has {stored.size} bytes at rest, {entry['bytes']} in {MANIFEST}")
        elif stored.checksum != entry["stored"]:
            problems.append(f"{name} has {stored.kind} {stored.checksum} at rest, {entry['stored']} in {MANIFEST} "
                            "(changed after it was written)")
        elif entry.get("etag") is not None and stored.etag != entry["etag"]:
            problems.append(f"{name} has etag {stored.etag} at rest, {entry['etag']} in {MANIFEST} "
                            "(rewritten after it was written)")
    stray = sorted(k.rsplit("/", 1)[-1] for k in listed
                   if k.rsplit("/", 1)[-1].startswith("part-") and k.rsplit("/", 1)[-1] not in names)
    if stray:
        problems.append(f"{len(stray)} part files not in {MANIFEST} (readers of part-* would count them): "
                        f"{stray[:MAX_LISTED]}")
    rows = sum(int(p["rows"]) for p in parts)
    if rows != int(manifest["rows"]):
        problems.append(f"{MANIFEST} says {manifest['rows']} rows, its parts hold {rows}")
    # Parts with equal MD5s hold the same rows: readers honouring the manifest read them twice, so
    # every row of each extra copy repeats a dedup key (and a distinct_id).
    seen: set[str] = set()
    repeated_rows = 0
    for entry in parts:
        if entry["md5"] in seen:
            repeated_rows += int(entry["rows"])
        seen.add(entry["md5"])
    location = bucket.uri(folder)
    found_columns = [tuple(c) for c in manifest["columns"]]
    if table == EVENTS_TABLE:
        keys = int(manifest["duplicate_keys"])
        return EventWindowReadback(location, rows, keys + repeated_rows, keys + repeated_rows, found_columns, problems,
                                   method="manifest")
    return TableReadback(location, rows, int(manifest["duplicate_ids"]) + repeated_rows, found_columns, problems,
                         method="manifest")
