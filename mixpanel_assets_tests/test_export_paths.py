"""The same window exports to the same bytes, whichever path produced it.

A partition can be written by a run of its own, by a range run of a backfill (one query for many
partitions, so the stream is cut into blocks elsewhere), from a stream (the Export API) or from a
local file the workers read in byte ranges. Part files must not depend on any of that: their names
derive from their content, and a rerun with unchanged data must rewrite the very same files.
"""

import gzip

import orjson
import pytest

from mixpanel_assets.staging.stage import stage_events
from mixpanel_assets.transform.records import LocalFile
from mixpanel_assets.windows import Window
from mixpanel_assets_tests.fake_mixpanel import PROJECT_ID, SECRET, USERNAME
from mixpanel_assets_tests.helpers import dedup_expected, definitions, epoch, run_partition

DAY = epoch("2024-11-22T00:00:00")
HOURS = [Window(DAY + h * 3600, DAY + (h + 1) * 3600) for h in range(24)]
USER_ENV = "PATHS_MIXPANEL_USERNAME"
SECRET_ENV = "PATHS_MIXPANEL_SECRET"


def parts_of(staged, window_index: int, out, max_bytes: int) -> list[tuple[str, bytes]]:
    parts = staged.windows[window_index].write_parts(out, max_bytes=max_bytes, workers=1)
    return [(p.name, p.path.read_bytes()) for p in parts]


def hour_lines(lines: list[bytes], hour: int) -> list[bytes]:
    window = HOURS[hour]
    return [line for line in lines if window.start <= orjson.loads(line)["properties"]["time"] < window.end]


def test_an_hours_parts_are_byte_identical_from_a_range_run_a_single_run_a_stream_or_a_local_file(
        tmp_path, generated_day):
    lines = generated_day.read_bytes().splitlines()
    only_hour = b"\n".join(hour_lines(lines, 12)) + b"\n"
    whole_day = generated_day.read_bytes()
    max_bytes = 100_000  # several parts per hour, so where parts are cut matters too
    # The day as one local file in 1 MB ranges, all 24 hours at once (a range run of a backfill) ...
    ranged = stage_events([LocalFile(str(generated_day), generated_day.name)], HOURS, [str(h) for h in range(24)],
                          staging_root=tmp_path, workers=2, block_bytes=1 << 20)
    # ... the day as a stream in odd-sized chunks and 64 KB blocks, hour 12 alone ...
    streamed = stage_events([whole_day[i:i + 77_777] for i in range(0, len(whole_day), 77_777)], [HOURS[12]], ["12"],
                            staging_root=tmp_path, block_bytes=64 << 10)
    # ... and only that hour's lines, as the Export API answers a one-hour query.
    single = stage_events([only_hour], [HOURS[12]], ["12"], staging_root=tmp_path, block_bytes=64 << 10)
    try:
        expected = parts_of(single, 0, tmp_path / "single", max_bytes)
        assert len(expected) > 2
        assert parts_of(ranged, 12, tmp_path / "ranged", max_bytes) == expected
        assert parts_of(streamed, 0, tmp_path / "streamed", max_bytes) == expected
        rows = [r for _, data in expected for r in gzip.decompress(data).splitlines()]
        assert len(rows) == dedup_expected(lines, HOURS[12].start, HOURS[12].end)["count"]
    finally:
        for staged in (ranged, streamed, single):
            staged.cleanup()


@pytest.fixture
def mixpanel(fake_mixpanel, generated_day, monkeypatch):
    fake_mixpanel.add_events(generated_day.read_bytes().splitlines())
    monkeypatch.setenv(USER_ENV, USERNAME)
    monkeypatch.setenv(SECRET_ENV, SECRET)
    return fake_mixpanel


def folder_files(folder) -> dict[str, bytes]:
    """Every file of an hour's folder except the manifest's export time, which differs by design."""
    files = {}
    for path in sorted(folder.iterdir()):
        data = path.read_bytes()
        if path.name == "manifest.json":
            manifest = orjson.loads(data)
            manifest.pop("exported_at")
            data = orjson.dumps(manifest, option=orjson.OPT_SORT_KEYS)
        files[path.name] = data
    return files


def test_a_backfill_range_run_and_single_hour_runs_write_the_same_files(tmp_path, mixpanel, instance):
    pipeline = {"name": "hourly", "data_source": "events", "frequency": "hourly", "from_date": "2024-11-20",
                "created": "2024-11-20", "destination": {"type": "local", "path": "bucket", "max_file_mb": 1}}
    project = {"id": PROJECT_ID, "timezone": "UTC", "state": {"path": "state"},
               "source": mixpanel.source_config(username_env=USER_ENV, secret_env=SECRET_ENV)}
    defs = definitions(tmp_path, project, [pipeline])
    day = tmp_path / "bucket" / str(PROJECT_ID) / "mp_master_event" / "2024" / "11" / "22"
    hours = [f"2024-11-22-{h:02d}:00" for h in range(9, 15)]

    assert run_partition(defs, "hourly_job", instance, range_=(hours[0], hours[-1])).success
    ranged = {folder.name: folder_files(folder) for folder in sorted(day.iterdir())}
    assert len(mixpanel.export_requests()) == 1
    for key in hours:
        assert run_partition(defs, "hourly_job", instance, key).success
    single = {folder.name: folder_files(folder) for folder in sorted(day.iterdir())}

    assert len(mixpanel.export_requests()) == 1 + len(hours)
    assert sorted(ranged) == [f"{h:02d}" for h in range(9, 15)]
    assert single == ranged  # same part names, same bytes: the single runs replaced nothing
    assert all(any(name.startswith("part-") for name in files) for files in single.values())
