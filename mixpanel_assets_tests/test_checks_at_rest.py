"""The cheap asset checks of object stores: a folder proved from its manifest and one listing.

Every store is the real one (a local folder, moto S3, the GCS emulator, Azurite); the only
wrappers are DelegatingBucket subclasses that count downloads or corrupt one upload, so what is
checked is what each store really lists.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os

import pytest

from mixpanel_assets.config import ChecksSettings, PipelinesFile
from mixpanel_assets.defs.checks import reads_back
from mixpanel_assets.destinations.base import DestinationError
from mixpanel_assets.destinations.io_managers import write_staged_window
from mixpanel_assets.destinations.objects.local import LocalBucket
from mixpanel_assets.destinations.objects.store import ObjectStoreDestination
from mixpanel_assets.schema import EVENT_COLUMNS
from mixpanel_assets.staging.stage import stage_events
from mixpanel_assets.windows import PartitionWindow, Window
from mixpanel_assets_tests.emulators.fixtures import unique_name
from mixpanel_assets_tests.emulators.stores import DelegatingBucket, store_for
from mixpanel_assets_tests.helpers import epoch, event_line, local_project

PROJECT_ID = 77
START, END = epoch("2024-11-22T00:00:00"), epoch("2024-11-23T00:00:00")
FOLDER = f"{PROJECT_ID}/mp_master_event/2024/11/22/"


class Counting(DelegatingBucket):
    """The real store, counting the part downloads a check makes."""

    def __init__(self, real):
        super().__init__(real)
        self.downloads = 0

    def download_file(self, key, path):
        self.downloads += 1
        return self.real.download_file(key, path)

    def get_bytes(self, key):
        if key.rsplit("/", 1)[-1].startswith("part-"):
            self.downloads += 1
        return self.real.get_bytes(key)


class CorruptsUploads(DelegatingBucket):
    """The real store receiving other bytes (same size) than the part written: a bad transfer."""

    def upload_file(self, key, path, md5=None):
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))
        self.real.upload_file(key, path, md5=md5)


@pytest.fixture(params=["local", "s3", "gcs", "azure"])
def real_bucket(request, tmp_path, monkeypatch):
    """(the store's Bucket adapter, a function overwriting one object through the store's own API)."""
    if request.param == "local":
        bucket = LocalBucket(tmp_path / "bucket")
        return bucket, lambda key, data: (tmp_path / "bucket" / key).write_bytes(data)
    store = store_for(request.param, request)
    for name, value in store.env.items():
        monkeypatch.setenv(name, value)
    name = unique_name("mp-at-rest")
    store.create_bucket(name)
    adapter = store.adapter(name)
    return adapter, adapter.put_bytes


def lines(version: int, n: int = 2000) -> list[bytes]:
    return [event_line("Viewed", START + i * 30, f"u{i % 40}", f"v{version}-{i}", version=version, pad="y" * 150)
            for i in range(n)] + [event_line("Viewed", START, "u0", f"v{version}-0", version=version, pad="y" * 150)]


def window() -> PartitionWindow:
    start = dt.datetime(2024, 11, 22, tzinfo=dt.UTC)
    return PartitionWindow("2024-11-22", start, start + dt.timedelta(days=1), start, "daily")


def destination(bucket) -> ObjectStoreDestination:
    dest = ObjectStoreDestination("at_rest", PROJECT_ID, bucket, max_file_mb=1)
    dest.max_bytes = 128 << 10  # several parts from a small window
    return dest


def export(bucket, tmp_path, version: int = 1):
    (tmp_path / f"staging{version}").mkdir(exist_ok=True)
    staged = stage_events([b"\n".join(lines(version)) + b"\n"], [Window(START, END)], ["2024-11-22"],
                          staging_root=tmp_path / f"staging{version}", block_bytes=64 << 10, workers=1)
    try:
        return write_staged_window(destination(bucket), staged.windows[0], tmp_path / "parts", window=window())
    finally:
        staged.cleanup()


def manifest_of(bucket) -> dict:
    return json.loads(bucket.get_bytes(FOLDER + "manifest.json"))


def test_a_written_window_is_proved_from_its_manifest_without_downloading_a_part(real_bucket, tmp_path):
    bucket, _ = real_bucket
    written = export(bucket, tmp_path)
    manifest = manifest_of(bucket)
    assert len(manifest["parts"]) >= 3 and manifest["duplicate_keys"] == 0
    assert manifest["columns"] == [list(c) for c in EVENT_COLUMNS]
    for part in manifest["parts"]:
        assert len(part["md5"]) == 32 and part["stored"]

    counting = Counting(bucket)
    proof = destination(counting).check_event_window(window())
    assert (proof.method, proof.rows, proof.problems) == ("manifest", written.rows, [])
    assert proof.rows == 2000 and proof.duplicate_keys == 0 and proof.columns == list(EVENT_COLUMNS)
    assert counting.downloads == 0

    deep = destination(counting).check_event_window(window(), read_back=True)
    assert (deep.method, deep.rows, deep.duplicate_keys, deep.problems) == ("read_back", 2000, 0, [])
    assert counting.downloads == len(manifest["parts"])


def test_a_changed_deleted_or_stray_part_fails_the_cheap_check_naming_it(real_bucket, tmp_path):
    bucket, overwrite = real_bucket
    export(bucket, tmp_path)
    manifest = manifest_of(bucket)
    changed, deleted = manifest["parts"][0]["name"], manifest["parts"][1]["name"]
    data = bytearray(bucket.get_bytes(FOLDER + changed))
    data[100] ^= 0xFF  # other bytes, same size
    overwrite(FOLDER + changed, bytes(data))
    bucket.delete([FOLDER + deleted])
    bucket.put_bytes(FOLDER + "part-stray-00000.json.gz", b"not listed anywhere")

    proof = destination(bucket).check_event_window(window())
    assert proof.method == "manifest"
    assert manifest_of(bucket) == manifest  # the manifest itself looks fine
    problems = "\n".join(proof.problems)
    assert f"{changed} has" in problems and "changed after it was written" in problems
    assert f"{deleted} is listed in manifest.json but missing" in problems
    assert "1 part files not in manifest.json" in problems and "part-stray-00000.json.gz" in problems


def test_a_manifest_written_before_checksums_is_read_back_instead(real_bucket, tmp_path):
    bucket, _ = real_bucket
    export(bucket, tmp_path)
    manifest = manifest_of(bucket)
    for key in ("columns", "duplicate_keys"):
        manifest.pop(key)
    manifest["parts"] = [{k: p[k] for k in ("name", "rows", "bytes")} for p in manifest["parts"]]
    bucket.put_bytes(FOLDER + "manifest.json", json.dumps(manifest).encode())

    counting = Counting(bucket)
    proof = destination(counting).check_event_window(window())
    assert (proof.method, proof.rows, proof.duplicate_keys, proof.problems) == ("read_back", 2000, 0, [])
    assert "predates part checksums" in proof.note and counting.downloads == len(manifest["parts"])


@pytest.mark.parametrize("kind", ["local", "s3"])
def test_an_upload_the_store_received_differently_fails_the_write_and_keeps_the_previous_version(
        kind, request, tmp_path, monkeypatch):
    if kind == "local":
        bucket = LocalBucket(tmp_path / "bucket")
    else:
        store = store_for(kind, request)
        name = unique_name("mp-corrupt")
        store.create_bucket(name)
        bucket = store.adapter(name)
    export(bucket, tmp_path, version=1)
    before = {k: bucket.get_bytes(k) for k in bucket.list_files(FOLDER)}

    with pytest.raises(DestinationError) as info:
        export(CorruptsUploads(bucket), tmp_path, version=2)
    message = str(info.value)
    assert "'at_rest'" in message and "differ from what was written" in message and "previous data" in message
    first_part = message.split("written: ", 1)[1].split(" ", 1)[0]
    assert first_part.startswith("part-") and "md5" in message

    assert {k: bucket.get_bytes(k) for k in bucket.list_files(FOLDER)} == before
    proof = destination(bucket).check_event_window(window())
    assert (proof.method, proof.rows, proof.problems) == ("manifest", 2000, [])


def test_s3_multipart_etags_gcs_resumable_and_azure_block_uploads_list_the_checksum_predicted(request, tmp_path):
    """Parts large enough for each store's chunked upload: the listed checksum is still predicted."""
    path = tmp_path / "part-big-00000.json.gz"
    path.write_bytes(os.urandom(11 << 20))  # S3's smallest chunk is 5 MiB: three chunks
    md5 = hashlib.md5(path.read_bytes()).hexdigest()
    small = {"s3": {"multipart_threshold": 5 << 20, "multipart_chunksize": 5 << 20},
             "gcs": {"chunk_size": 1 << 20}, "azure": {"max_single_put_size": 1 << 20, "max_block_size": 1 << 20}}
    for kind, options in small.items():
        store = store_for(kind, request)
        name = unique_name("mp-chunked")
        store.create_bucket(name)
        bucket = store.adapter(name, **options)
        expected = bucket.expected_checksum(path, md5)
        bucket.upload_file("f/" + path.name, path, md5=md5)
        (stored,) = bucket.stat_files("f/").values()
        assert (stored.size, stored.checksum) == (11 << 20, expected), kind
        if kind == "s3":
            assert expected.endswith('-3"')


def test_read_back_share_picks_a_stable_pseudo_random_subset():
    keys = [f"2024-11-{d:02d}" for d in range(1, 21)]

    def picked(share, run_id="run-a", read_back=False):
        settings = ChecksSettings(read_back=read_back, read_back_share=share)
        return [k for k in keys if reads_back(settings, run_id, k)]

    assert picked(0.0) == [] and picked(1.0) == keys and picked(0.0, read_back=True) == keys
    half = picked(0.5)
    assert 0 < len(half) < 20 and picked(0.5) == half
    assert picked(0.5, run_id="run-b") != half  # another run reads back other partitions
    with pytest.raises(ValueError):
        ChecksSettings(read_back_share=1.5)
    with pytest.raises(ValueError):
        ChecksSettings(read_back="yes")


def test_checks_settings_are_part_of_a_pipeline(tmp_path):
    pipeline = {"name": "p", "data_source": "people", "destination": {"type": "local", "path": "b"},
                "checks": {"read_back_share": 0.05}}
    config = PipelinesFile.model_validate({"project": local_project(1, tmp_path), "pipelines": [pipeline]})
    assert config.pipelines[0].checks == ChecksSettings(read_back=False, read_back_share=0.05)
