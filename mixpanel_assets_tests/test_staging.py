"""Staging: exact dedup by Mixpanel's key with bounded memory, windows, bad lines, cut streams."""


import orjson
import pytest

from mixpanel_assets.staging.blocks import split_blocks
from mixpanel_assets.staging.dedup import Fingerprint
from mixpanel_assets.staging.parts import iter_part_lines
from mixpanel_assets.staging.stage import BadInputError, ExportStreamError, stage_events
from mixpanel_assets.windows import Window
from mixpanel_assets_tests.helpers import dedup_expected, epoch, event_line

DAY = epoch("2024-11-22T00:00:00")
WHOLE_DAY = [Window(DAY, DAY + 86400)]


def chunks_of(path, size=300_000):
    data = path.read_bytes()
    return [data[i:i + size] for i in range(0, len(data), size)]


def kept_rows(staged):
    return [orjson.loads(r) for w in staged.windows for r in w.iter_rows()]


@pytest.mark.parametrize("workers", [1, 2])
def test_dedup_keeps_exactly_one_row_per_mixpanel_key(generated_day, tmp_path, workers):
    lines = generated_day.read_bytes().splitlines()
    expected = dedup_expected(lines)
    staged = stage_events(chunks_of(generated_day), WHOLE_DAY, ["2024-11-22"], staging_root=tmp_path,
                          workers=workers, block_bytes=1 << 20)
    try:
        rows = kept_rows(staged)
        assert staged.lines == len(lines) == 20000
        assert staged.rows == len(rows) == expected["count"]
        assert staged.duplicates == len(lines) - expected["count"] > 0
        keys = [(r["event_name"], r["distinct_id"], r["properties"]["time"], r["insert_id"]) for r in rows]
        assert len(set(keys)) == len(keys)
        # The copy kept is the latest ingested one (highest mp_processing_time_ms).
        for row in rows:
            key = (row["event_name"], row["distinct_id"], row["properties"]["time"], row["insert_id"])
            assert row["properties"] == expected["kept"][key]["properties"]
    finally:
        staged.cleanup()


def test_one_worker_and_two_workers_write_identical_parts(generated_day, tmp_path):
    outputs = []
    for workers in (1, 2):
        staged = stage_events(chunks_of(generated_day), WHOLE_DAY, ["d"], staging_root=tmp_path, workers=workers,
                              block_bytes=1 << 20)
        parts = staged.windows[0].write_parts(tmp_path / f"out{workers}", max_bytes=4 << 20, workers=workers)
        outputs.append([(p.name, b"".join(iter_part_lines(p.path))) for p in parts])
        staged.cleanup()
    assert outputs[0] == outputs[1]
    assert len(outputs[0]) > 1  # several parts, cut at max_bytes


def test_rows_are_sorted_into_their_windows_and_the_rest_counted(tmp_path):
    lines = [event_line("E", DAY + h * 3600 + 5, f"u{h}", f"i{h}") for h in range(-1, 4)]
    windows = [Window(DAY + h * 3600, DAY + (h + 1) * 3600) for h in range(3)]
    staged = stage_events([b"\n".join(lines)], windows, ["h0", "h1", "h2"], staging_root=tmp_path)
    assert [w.rows for w in staged.windows] == [1, 1, 1]
    assert staged.outside_window == 2
    assert [orjson.loads(next(w.iter_rows()))["distinct_id"] for w in staged.windows] == ["u0", "u1", "u2"]
    staged.cleanup()


def test_a_later_copy_with_a_newer_processing_time_wins_and_events_without_insert_id_are_never_merged(tmp_path):
    lines = [
        event_line("E", DAY + 1, "u", "same", mp_processing_time_ms=100, v="old"),
        event_line("E", DAY + 1, "u", "same", mp_processing_time_ms=200, v="new"),
        event_line("E", DAY + 1, "u", "same", mp_processing_time_ms=150, v="middle"),
        event_line("E", DAY + 2, "u", None, v="a"),
        event_line("E", DAY + 2, "u", None, v="a"),
    ]
    staged = stage_events([b"\n".join(lines)], WHOLE_DAY, ["d"], staging_root=tmp_path)
    values = sorted(r["properties"]["v"] for r in kept_rows(staged))
    assert values == ["a", "a", "new"]
    assert staged.duplicates == 2
    staged.cleanup()


def test_bad_lines_within_the_policy_are_skipped_counted_and_reported_with_line_numbers(tmp_path):
    good = [event_line("E", DAY + i, "u", f"i{i}") for i in range(999)]
    data = b"\n".join(good[:500] + [b'{"event": broken'] + good[500:])
    staged = stage_events([data], WHOLE_DAY, ["d"], staging_root=tmp_path, max_bad_fraction=0.01)
    assert staged.rows == 999 and staged.bad_lines == 1
    assert staged.bad_examples[0][0] == "line 501" and "not valid JSON" in staged.bad_examples[0][1]
    staged.cleanup()


def test_too_many_bad_lines_fail_the_export_and_leave_nothing_behind(tmp_path):
    data = b"\n".join([event_line("E", DAY, "u", "i"), b"nonsense", b"{}"])
    with pytest.raises(BadInputError, match=r"(?s)2 of 3 lines are not valid .*line 2: not valid JSON"):
        stage_events([data], WHOLE_DAY, ["d"], staging_root=tmp_path, describe_source="test source")
    assert list(tmp_path.iterdir()) == []


def test_export_terminated_early_fails_the_export(tmp_path):
    data = event_line("E", DAY, "u", "i") + b"\nexport terminated early\n"
    with pytest.raises(ExportStreamError, match="terminated early"):
        stage_events([data], WHOLE_DAY, ["d"], staging_root=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_blocks_are_cut_at_line_ends_whatever_the_chunking():
    data = b"".join(b"line %d\n" % i for i in range(1000))
    for chunk in (1, 7, 1000, len(data)):
        pieces = [data[i:i + chunk] for i in range(0, len(data), chunk)]
        blocks = list(split_blocks(pieces, block_bytes=500))
        assert b"".join(b for _, _, _, b in blocks) == data
        assert all(b.endswith(b"\n") for _, _, _, b in blocks)
        # Only the first block says where it starts; staging numbers the others from the workers' counts.
        assert [n for _, _, n, _ in blocks] == [1] + [None] * (len(blocks) - 1)


def test_a_bad_line_deep_in_a_stream_is_named_by_its_line_number(tmp_path):
    from mixpanel_assets.transform.records import Origin

    good = event_line("E", DAY, "u", "i") + b"\n"
    lines = [good] * 999
    lines[700] = b"broken\n"
    chunks = [Origin("the stream")] + [b"".join(lines[i:i + 10]) for i in range(0, len(lines), 10)]
    for workers in (1, 2):
        staged = stage_events(chunks, WHOLE_DAY, ["d"], staging_root=tmp_path, max_bad_fraction=0.5,
                              block_bytes=len(good) * 37, workers=workers)
        assert staged.bad_examples[0][0] == "the stream line 701"
        staged.cleanup()


def test_each_input_restarts_line_numbers_so_bad_lines_name_their_file(tmp_path):
    from mixpanel_assets.transform.records import Origin

    good = event_line("E", DAY, "u", "i")
    chunks = [Origin("a.jsonl"), good + b"\n" + good, Origin("b.jsonl"), good + b"\nbroken\n"]
    staged = stage_events(chunks, WHOLE_DAY, ["d"], staging_root=tmp_path, max_bad_fraction=0.5)
    assert staged.lines == 4 and staged.bad_examples[0][0] == "b.jsonl line 2"
    staged.cleanup()


def test_fingerprints_add_up_so_hours_make_a_day(generated_day, tmp_path):
    hours = [Window(DAY + h * 3600, DAY + (h + 1) * 3600) for h in range(24)]
    by_hour = stage_events(chunks_of(generated_day), hours, [str(h) for h in range(24)], staging_root=tmp_path)
    by_day = stage_events(chunks_of(generated_day), WHOLE_DAY, ["d"], staging_root=tmp_path)
    total = Fingerprint()
    for w in by_hour.windows:
        total = total + w.fingerprint
    assert total == by_day.windows[0].fingerprint
    assert Fingerprint.from_token(total.token()) == total
    by_hour.cleanup()
    by_day.cleanup()


def test_a_windows_identity_links_are_each_link_once_with_its_earliest_time_in_sorted_order(generated_day, tmp_path):
    from mixpanel_assets.transform.events import identity_links, read_event

    expected: dict = {}
    for line in generated_day.read_bytes().splitlines():
        name, time, fields, _ = read_event(line)
        for link in identity_links(name, fields):
            if link not in expected or time < expected[link]:
                expected[link] = time
    staged = stage_events(chunks_of(generated_day), WHOLE_DAY, ["d"], staging_root=tmp_path, workers=2,
                          block_bytes=1 << 20)
    try:
        links = staged.windows[0].links
        assert len(links) == len(expected) > 100
        items = list(links.sorted_items())
        assert [link for link, _ in items] == sorted(expected)
        assert dict(items) == expected
    finally:
        staged.cleanup()
