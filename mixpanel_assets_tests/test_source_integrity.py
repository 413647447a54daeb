"""An Export answer that HTTP calls fine but that is not a whole export never replaces a window.

Each case runs the real asset against the fake Mixpanel (fake_mixpanel.py) into a local folder or
DuckDB: first a good run of 3,000 rows, then the hostile answer, then the window must still hold
exactly those 3,000 rows, whether the run failed or retried and succeeded. Covered (issue 12):
a stream cut mid-line behind clean framing (close-delimited, or a complete gzip member) is a cut
stream, retried and never loaded; a 200 that is an HTML page or a JSON error object fails for good
with what came back; a run whose every line is bad fails whatever the bad-line policy allows; a
secret with a non-ASCII character fails before any request, naming its env var and nothing of it.
Retry-After nonsense (nan, negative, huge) is covered by test_mixpanel_client.py
`test_a_nonsensical_retry_after_gives_a_bounded_wait_never_an_error`.
"""

from __future__ import annotations

import base64
import datetime as dt
import gzip
import socket

import dagster as dg
import duckdb
import orjson
import pytest

from mixpanel_assets.mixpanel.client import ExportQuery, MixpanelClient
from mixpanel_assets.mixpanel.errors import SourceStreamError
from mixpanel_assets.mixpanel.rate_budget import RateBudget
from mixpanel_assets_tests.fake_mixpanel import (
    PROJECT_ID,
    SECRET,
    USERNAME,
    cut_mid_line,
    html_page,
    json_error_body,
    malformed_lines,
)
from mixpanel_assets_tests.helpers import (
    definitions,
    epoch,
    event_line,
    events_pipeline,
    local_project,
    read_folder_rows,
    run_partition,
)

USER_ENV = "INTEGRITY_MIXPANEL_USERNAME"
SECRET_ENV = "INTEGRITY_MIXPANEL_SECRET"
DAY = "2024-11-22"
ROWS = 3_000
MAX_RETRIES = 2  # project.source.max_retries here: 3 attempts per read

FILES = events_pipeline("files", "daily", {"type": "local", "path": "bucket"})
DB = events_pipeline("db", "daily", {"type": "duckdb", "path": "wh.duckdb"})


def day_lines(n: int = ROWS) -> list[bytes]:
    start = epoch(f"{DAY}T00:00:00")
    return [event_line(("Viewed Page", "Purchase", "Signed Up")[i % 3], start + i * (86400 // n), f"user_{i % 97}",
                       f"ins-{i}", mp_processing_time_ms=(start + i) * 1000) for i in range(n)]


@pytest.fixture
def mixpanel(fake_mixpanel, monkeypatch):
    fake_mixpanel.add_events(day_lines())
    monkeypatch.setenv(USER_ENV, USERNAME)
    monkeypatch.setenv(SECRET_ENV, SECRET)
    return fake_mixpanel


def project(fake, **extra) -> dict:
    source = {**fake.source_config(username_env=USER_ENV, secret_env=SECRET_ENV), "max_retries": MAX_RETRIES}
    return {"id": PROJECT_ID, "state": {"path": "state"}, "export_workers": 1, "source": source, **extra}


def keys(rows) -> list[tuple]:
    return sorted((str(name), str(distinct_id), str(insert_id)) for name, distinct_id, insert_id in rows)


def folder_keys(tmp_path) -> list[tuple]:
    folder = tmp_path / "bucket" / str(PROJECT_ID) / "mp_master_event" / "2024" / "11" / "22"
    return keys((r["event_name"], r["distinct_id"], r["insert_id"]) for r in read_folder_rows(folder))


def db_keys(tmp_path) -> list[tuple]:
    with duckdb.connect(str(tmp_path / "wh.duckdb"), read_only=True) as conn:
        return keys(conn.execute("SELECT event_name, distinct_id, insert_id FROM mp_master_event").fetchall())


def good_run(tmp_path, fake, instance, pipeline=FILES, **extra) -> tuple[dg.Definitions, list[tuple]]:
    """The window as a good run leaves it: all 3,000 rows."""
    defs = definitions(tmp_path, project(fake, **extra), [pipeline])
    assert run_partition(defs, f"{pipeline['name']}_job", instance, DAY).success
    held = folder_keys(tmp_path) if pipeline is FILES else db_keys(tmp_path)
    assert len(held) == ROWS
    fake.clear_requests()
    return defs, held


def failure_message(result: dg.ExecuteInProcessResult) -> str:
    (failure,) = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert not [e for e in result.all_events if e.event_type_value == "STEP_UP_FOR_RETRY"]
    return failure.event_specific_data.error.message


# --- a stream cut mid-line behind clean HTTP framing ------------------------------------------------------

CUTS = [cut_mid_line(framing="close"), cut_mid_line(framing="chunked")]
CUT_IDS = ["close-delimited", "complete-gzip-member"]


@pytest.mark.parametrize("fault", CUTS, ids=CUT_IDS)
def test_a_stream_cut_mid_line_once_is_read_again_and_the_window_keeps_all_its_rows(
        tmp_path, mixpanel, instance, fault):
    defs, held = good_run(tmp_path, mixpanel, instance)
    mixpanel.queue_fault(fault)
    assert run_partition(defs, "files_job", instance, DAY).success
    assert [r.faults for r in mixpanel.export_requests()] == [("cut_line",), ()]  # retried once, then whole
    assert mixpanel.export_requests()[0].content_encoding == "gzip"  # the member was whole: no decoder error
    assert folder_keys(tmp_path) == held


@pytest.mark.parametrize("fault", CUTS, ids=CUT_IDS)
def test_a_stream_cut_mid_line_on_every_attempt_fails_the_run_and_the_window_keeps_all_its_rows(
        tmp_path, mixpanel, instance, fault):
    defs, held = good_run(tmp_path, mixpanel, instance, DB)
    mixpanel.queue_fault(fault, times=MAX_RETRIES + 1)
    result = run_partition(defs, "db_job", instance, DAY, raise_on_error=False)
    assert not result.success
    message = failure_message(result)
    assert "middle of a line" in message and "Export API query for 2024-11-22" in message
    assert f"gave up after {MAX_RETRIES + 1} attempts" in message
    assert len(mixpanel.export_requests()) == MAX_RETRIES + 1  # the run's bounded query budget, no more
    assert db_keys(tmp_path) == held


def test_a_small_uncompressed_close_delimited_body_cut_mid_line_is_a_stream_error_at_the_client(mixpanel):
    mixpanel.delete_events(lambda event: True)
    mixpanel.add_events(day_lines(6))  # under 1400 bytes: sent as it is, no gzip
    mixpanel.queue_fault(cut_mid_line(after_lines=3, framing="close"))
    client = MixpanelClient(PROJECT_ID, USERNAME, SECRET, export_url=mixpanel.url,
                            export_budget=RateBudget(None, 10_000, 10_000))
    day = ExportQuery(*(2 * [dt.date(2024, 11, 22)]))
    with pytest.raises(SourceStreamError, match="middle of a line") as caught:
        b"".join(client.export_chunks(day))
    assert caught.value.retryable and mixpanel.export_requests()[0].content_encoding is None
    assert len(b"".join(client.export_chunks(day)).splitlines()) == 6  # the next answer is whole and read whole


@pytest.mark.parametrize("name", [f"{DAY}.jsonl", f"{DAY}.jsonl.gz"])
def test_a_local_file_whose_last_line_lacks_a_newline_is_still_read_whole(tmp_path, instance, name):
    # Files are not streams: only an Export API answer must end where a line ends.
    folder = tmp_path / "files"
    folder.mkdir()
    data = b"\n".join(day_lines())
    (folder / name).write_bytes(gzip.compress(data) if name.endswith(".gz") else data)
    defs = definitions(tmp_path, local_project(PROJECT_ID, folder), [FILES])
    assert run_partition(defs, "files_job", instance, DAY).success
    assert len(folder_keys(tmp_path)) == ROWS


# --- a 200 answer that is not JSON lines ----------------------------------------------------------------

NOT_JSON_LINES = [(html_page(), "Maintenance"), (html_page(content_type="text/plain; charset=utf-8"), "Maintenance"),
                  (json_error_body(), "Unable to process the export")]


@pytest.mark.parametrize("fault, came_back", NOT_JSON_LINES,
                         ids=["html-page", "html-page-as-text-plain", "json-error-object"])
def test_a_200_answer_that_is_not_json_lines_fails_for_good_naming_what_came_back(
        tmp_path, mixpanel, instance, fault, came_back):
    defs, held = good_run(tmp_path, mixpanel, instance, bad_lines={"max_count": 10})
    mixpanel.queue_fault(fault)
    result = run_partition(defs, "files_job", instance, DAY, raise_on_error=False)
    assert not result.success
    message = failure_message(result)
    assert f"Mixpanel project {PROJECT_ID}" in message and "Export API query for 2024-11-22" in message
    assert "HTTP 200" in message and came_back in message
    assert SECRET not in message
    assert len(mixpanel.export_requests()) == 1  # asking again would answer the same: no query spent on it
    assert folder_keys(tmp_path) == held


def test_a_run_whose_every_line_is_bad_fails_even_when_the_bad_line_policy_would_allow_them(
        tmp_path, mixpanel, instance):
    defs, held = good_run(tmp_path, mixpanel, instance, DB, bad_lines={"max_count": 10})
    mixpanel.delete_events(lambda event: True)
    mixpanel.queue_fault(malformed_lines([b'{"event": "Broken", "properties": {"time": 1'] * 4))
    result = run_partition(defs, "db_job", instance, DAY, raise_on_error=False)
    assert not result.success
    message = failure_message(result)
    assert "all 4 lines are not valid Mixpanel export events" in message and "nothing was written" in message
    assert db_keys(tmp_path) == held


# --- credentials that cannot be sent ---------------------------------------------------------------------


def test_a_secret_with_a_non_ascii_character_fails_before_any_request_naming_its_env_var_only(
        tmp_path, mixpanel, instance, monkeypatch):
    defs, held = good_run(tmp_path, mixpanel, instance)
    planted = "planted-secret-9f1c2\u2603d"
    monkeypatch.setenv(SECRET_ENV, planted)
    result = run_partition(defs, "files_job", instance, DAY, raise_on_error=False)
    assert not result.success
    message = failure_message(result)
    assert SECRET_ENV in message and "ASCII" in message
    assert "\u2603" not in message and "planted-secret" not in message and "position" not in message
    assert mixpanel.export_requests() == []
    for entry in instance.all_logs(result.run_id):
        assert "planted-secret" not in repr(entry) and "\u2603" not in repr(entry)
    assert folder_keys(tmp_path) == held


# --- the fake's shapes are what they claim, read with a bare socket ---------------------------------------


def raw_export(fake, accept_gzip: bool = True) -> tuple[bytes, bytes]:
    """The response head and body as they come off the wire, until the server closes."""
    auth = base64.b64encode(f"{USERNAME}:{SECRET}".encode()).decode()
    request = (f"GET /api/2.0/export?project_id={PROJECT_ID}&from_date={DAY}&to_date={DAY} HTTP/1.1\r\n"
               f"Host: 127.0.0.1\r\nAuthorization: Basic {auth}\r\nConnection: close\r\n"
               + ("Accept-Encoding: gzip\r\n" if accept_gzip else "") + "\r\n")
    with socket.create_connection(("127.0.0.1", fake.port), timeout=30) as conn:
        conn.sendall(request.encode())
        data = b""
        while chunk := conn.recv(1 << 16):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return head.lower(), body


def test_the_fakes_close_delimited_cut_has_no_length_and_a_whole_gzip_member_ending_mid_line(mixpanel):
    mixpanel.queue_fault(cut_mid_line(framing="close"))
    head, body = raw_export(mixpanel)
    assert b"content-length" not in head and b"transfer-encoding" not in head and b"connection: close" in head
    content = gzip.decompress(body)  # a whole member: decompresses without error
    lines = content.split(b"\n")
    assert len(lines) == ROWS // 2 + 1 and lines[-1] and not content.endswith(b"\n")
    assert [orjson.loads(line) for line in lines[:-1]] == [orjson.loads(line) for line in day_lines()[:ROWS // 2]]


def test_the_fakes_200_pages_say_what_they_are(mixpanel):
    mixpanel.queue_fault(html_page())
    head, body = raw_export(mixpanel)
    assert head.startswith(b"http/1.1 200") and b"content-type: text/html" in head and body.startswith(b"<!DOCTYPE")
    mixpanel.queue_fault(json_error_body("nope"))
    head, body = raw_export(mixpanel)
    assert b"content-type: application/json" in head and orjson.loads(body)["error"] == "nope"
