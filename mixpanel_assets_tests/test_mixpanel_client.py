"""The Export/Engage API client against the fake Mixpanel over real HTTP (requests + urllib3).

Covered: gzip decoding, server-side `event`/`where` filters, Engage paging, retries of 429 and 5xx
through the one retry layer (retry.py, with the client's sleep injected, so delays are recorded
instead of slept), retries exhausted, cut and 'terminated early' streams, every error status with
Mixpanel's text and no secret, residency hosts, and how MixpanelApiSource maps spans to Export
API queries.
"""

import datetime as dt
import email.utils
import gzip
import math
import zoneinfo

import orjson
import pytest
import requests

from mixpanel_assets.mixpanel.client import ExportQuery, MixpanelClient
from mixpanel_assets.mixpanel.errors import (
    SourceAuthError,
    SourcePermanentError,
    SourceStreamError,
    SourceTransientError,
)
from mixpanel_assets.mixpanel.rate_budget import RateBudget
from mixpanel_assets.mixpanel.retry import (
    BACKOFF_BASE_SECONDS,
    RETRY_AFTER_CAP_SECONDS,
    SourceRetries,
    retry_after_seconds,
)
from mixpanel_assets.mixpanel.sources import MixpanelApiSource, Span
from mixpanel_assets.transform.records import Origin
from mixpanel_assets_tests.fake_mixpanel import (
    PROJECT_ID,
    SECRET,
    USERNAME,
    FakeMixpanel,
    WhereError,
    cut_stream,
    http_error,
    malformed_lines,
    parse_where,
    rate_limited,
    server_error,
    split_line,
    terminated_early,
    unable_to_authenticate,
)

UTC = dt.timezone.utc
DAY = dt.date(2024, 11, 22)
NAMES = ("Viewed Page", "Purchase", "Signed Up")


def epoch(text: str) -> int:
    return int(dt.datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp())


def day_events(n: int = 240, day: str = "2024-11-22") -> list[dict]:
    """n events spread evenly over a UTC day, three names, one in ten a duplicate of its predecessor."""
    start = epoch(f"{day}T00:00:00")
    events = []
    for i in range(n):
        if i % 10 == 9:
            events.append(orjson.loads(orjson.dumps(events[-1])))
            continue
        events.append({"event": NAMES[i % 3], "properties": {
            "time": start + i * (86400 // n), "distinct_id": f"u{i % 17}", "$insert_id": f"ins-{i}",
            "mp_processing_time_ms": (start + i) * 1000, "plan": ["free", "pro"][i % 2], "amount": i}})
    return events


class Sleeps(list):
    """The client's `sleep`: records each delay instead of sleeping."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


def client_for(fake: FakeMixpanel, sleeps: Sleeps | None = None, secret: str = SECRET, **kwargs) -> MixpanelClient:
    return MixpanelClient(
        PROJECT_ID, USERNAME, secret, export_url=fake.url, engage_url=fake.url,
        sleep=sleeps if sleeps is not None else Sleeps(),
        export_budget=RateBudget(None, 10_000, 10_000), engage_budget=RateBudget(None, 10_000, 10_000), **kwargs,
    )


def export_once(client: MixpanelClient, query: ExportQuery) -> list[bytes]:
    """One attempt, as the client makes it: no retry."""
    return b"".join(client.export_chunks(query)).splitlines()


def export_lines(client: MixpanelClient, query: ExportQuery) -> list[bytes]:
    """The query under the client's retry layer, as staging reads it (each attempt re-reads the body)."""
    return client.retries.call(lambda: export_once(client, query), query.describe())


def the_day(**kwargs) -> ExportQuery:
    return ExportQuery(DAY, DAY, **kwargs)


# --- Export API: bodies and filters --------------------------------------------------------------


def test_a_large_export_arrives_gzip_compressed_and_is_decoded_line_for_line(fake_mixpanel):
    events = day_events(600)
    fake_mixpanel.add_events(events)
    lines = export_lines(client_for(fake_mixpanel), the_day())
    assert [orjson.loads(line) for line in lines] == events  # time order, duplicates included
    (request,) = fake_mixpanel.export_requests()
    assert "gzip" in request.headers["Accept-Encoding"] and request.content_encoding == "gzip"
    assert request.params == {"project_id": str(PROJECT_ID), "from_date": "2024-11-22", "to_date": "2024-11-22"}
    assert request.user == USERNAME


def test_a_body_under_1400_bytes_comes_uncompressed_and_reads_the_same(fake_mixpanel):
    events = day_events(6)
    fake_mixpanel.add_events(events)
    assert [orjson.loads(line) for line in export_lines(client_for(fake_mixpanel), the_day())] == events
    assert fake_mixpanel.export_requests()[0].content_encoding is None


def test_the_gzip_body_on_the_wire_is_one_valid_gzip_member_of_json_lines(fake_mixpanel):
    # The fake itself, read with plain requests, so the client is not the only judge of the format.
    fake_mixpanel.add_events(day_events(300))
    response = requests.get(
        fake_mixpanel.url + "/api/2.0/export", auth=(USERNAME, SECRET), stream=True,
        headers={"Accept-Encoding": "gzip"},
        params={"project_id": PROJECT_ID, "from_date": "2024-11-22", "to_date": "2024-11-22"}, timeout=30,
    )
    assert response.headers["Content-Encoding"] == "gzip" and response.headers["Transfer-Encoding"] == "chunked"
    body = gzip.decompress(response.raw.read(decode_content=False))
    assert len(body.splitlines()) == 300 and body.endswith(b"\n")


def test_a_gzip_body_of_several_concatenated_members_is_read_to_the_last_member(fake_mixpanel):
    events = day_events(600)
    fake_mixpanel.add_events(events)
    fake_mixpanel.gzip_member_bytes = 5000
    lines = export_lines(client_for(fake_mixpanel), the_day())
    assert fake_mixpanel.export_requests()[0].content_encoding == "gzip"
    assert [orjson.loads(line) for line in lines] == events


def test_event_and_where_filters_are_sent_to_and_applied_by_the_server(fake_mixpanel):
    events = day_events(240)
    fake_mixpanel.add_events(events)
    start, end = epoch("2024-11-22T06:00:00"), epoch("2024-11-22T12:00:00")
    where = (f'properties["$time"] >= datetime({start}) and properties["$time"] < datetime({end}) '
             'and properties["plan"] == "pro"')
    lines = export_lines(client_for(fake_mixpanel), the_day(events=("Purchase", "Signed Up"), where=where))
    expected = [e for e in events if e["event"] in ("Purchase", "Signed Up") and start <= e["properties"]["time"] < end
                and e["properties"]["plan"] == "pro"]
    assert expected and [orjson.loads(line) for line in lines] == expected
    (request,) = fake_mixpanel.export_requests()
    assert orjson.loads(request.params["event"]) == ["Purchase", "Signed Up"]
    assert request.params["where"] == where


def test_injected_malformed_and_split_lines_reach_the_caller_byte_for_byte(fake_mixpanel):
    # The client does not judge lines (staging counts bad ones); it must neither drop nor repair them.
    events = day_events(40)
    fake_mixpanel.add_events(events)
    fake_mixpanel.queue_fault(malformed_lines([b"{not json"], at=3), split_line(5))
    lines = export_lines(client_for(fake_mixpanel), the_day())
    whole = orjson.dumps(events[5])
    assert lines[3] == b"{not json"
    assert lines[6] + lines[7] == whole and len(lines) == 42


# --- Export API: retries and broken streams --------------------------------------------------------


def test_429_is_retried_after_the_seconds_mixpanel_asks_for(fake_mixpanel):
    events = day_events(30)
    fake_mixpanel.add_events(events)
    fake_mixpanel.queue_fault(rate_limited(retry_after=7))
    fake_mixpanel.queue_fault(rate_limited(retry_after=13))
    sleeps = Sleeps()
    client = client_for(fake_mixpanel, sleeps)
    assert len(export_lines(client, the_day())) == 30
    assert sleeps == [7.0, 13.0]
    assert [r.status for r in fake_mixpanel.export_requests()] == [429, 429, 200]
    assert client.queries == 3


def test_a_retry_after_given_as_an_http_date_is_honoured_too(fake_mixpanel):
    fake_mixpanel.add_events(day_events(3))
    later = email.utils.format_datetime(dt.datetime.now(UTC) + dt.timedelta(seconds=120), usegmt=True)
    fake_mixpanel.queue_fault(rate_limited(retry_after=later))
    sleeps = Sleeps()
    assert len(export_lines(client_for(fake_mixpanel, sleeps, backoff_base=0.001), the_day())) == 3
    assert len(sleeps) == 1 and 100 < sleeps[0] <= 120


def test_5xx_is_retried_with_growing_backoff_then_succeeds(fake_mixpanel):
    fake_mixpanel.add_events(day_events(30))
    for status in (500, 502, 503):
        fake_mixpanel.queue_fault(server_error(status))
    sleeps = Sleeps()
    assert len(export_lines(client_for(fake_mixpanel, sleeps, backoff_base=2.0), the_day())) == 30
    assert [r.status for r in fake_mixpanel.export_requests()] == [500, 502, 503, 200]
    # base * 2**attempt, jittered down by at most half
    assert [lo <= s <= hi for s, (lo, hi) in zip(sleeps, [(1, 2), (2, 4), (4, 8)])] == [True] * 3


def test_5xx_until_retries_run_out_raises_a_retryable_error_naming_the_query(fake_mixpanel):
    fake_mixpanel.queue_fault(server_error(503), times=3)
    client = client_for(fake_mixpanel, max_retries=2)
    with pytest.raises(SourceTransientError) as caught:
        export_lines(client, ExportQuery(DAY, DAY + dt.timedelta(days=1)))
    assert caught.value.retryable and caught.value.status == 503
    assert "Export API query for 2024-11-22..2024-11-23" in str(caught.value) and "3 attempts" in str(caught.value)
    assert len(fake_mixpanel.export_requests()) == 3


def test_429_until_retries_run_out_raises_rate_limited_with_mixpanels_text(fake_mixpanel):
    fake_mixpanel.queue_fault(rate_limited(retry_after=1), times=2)
    with pytest.raises(SourceTransientError) as caught:
        export_lines(client_for(fake_mixpanel, max_retries=1), the_day())
    assert caught.value.retryable and "Query rate limit exceeded" in str(caught.value)
    assert caught.value.status == 429 and caught.value.attempts == 2
    assert "Export API query for 2024-11-22" in str(caught.value)


@pytest.mark.parametrize("header, low, high", [
    ("nan", 1.0, 2.0),  # not a number: exponential backoff instead (base 2 s, first wait 1-2 s)
    ("-5", 0.0, 0.0),  # in the past: now
    ("1e12", RETRY_AFTER_CAP_SECONDS, RETRY_AFTER_CAP_SECONDS),  # huge: capped
    ("inf", RETRY_AFTER_CAP_SECONDS, RETRY_AFTER_CAP_SECONDS),
    ("Fri, 31 Dec 9999 23:59:59 GMT", RETRY_AFTER_CAP_SECONDS, RETRY_AFTER_CAP_SECONDS),
    ("Mon, 01 Jan 2001 00:00:00 GMT", 0.0, 0.0),
    ("after lunch", 1.0, 2.0),
], ids=["nan", "negative", "huge", "inf", "year-9999", "past-date", "garbage"])
def test_a_nonsensical_retry_after_gives_a_bounded_wait_never_an_error(fake_mixpanel, header, low, high):
    fake_mixpanel.add_events(day_events(3))
    fake_mixpanel.queue_fault(rate_limited(retry_after=header))
    sleeps = Sleeps()
    assert len(export_lines(client_for(fake_mixpanel, sleeps), the_day())) == 3
    (slept,) = sleeps
    assert math.isfinite(slept) and low <= slept <= high


def test_retry_after_parsing_accepts_seconds_and_dates_and_ignores_the_rest():
    now = dt.datetime(2026, 1, 1, tzinfo=UTC)
    assert retry_after_seconds("7", now) == 7.0 and retry_after_seconds("2.5", now) == 2.5
    assert retry_after_seconds("Thu, 01 Jan 2026 00:02:00 GMT", now) == 120.0
    assert retry_after_seconds(None) is None and retry_after_seconds(" ") is None
    assert retry_after_seconds("nan") is None and retry_after_seconds("-inf") is None
    assert retry_after_seconds("-3") == 0.0
    assert SourceRetries().delay(1, float("nan")) <= BACKOFF_BASE_SECONDS  # a NaN that got through still waits a bounded time
    assert SourceRetries().delay(40, None) <= SourceRetries().backoff_cap  # the backoff is capped too


def test_a_cut_stream_is_asked_for_again_by_the_same_retry_layer_and_read_whole(fake_mixpanel):
    events = day_events(400)
    fake_mixpanel.add_events(events)
    fake_mixpanel.queue_fault(cut_stream())
    fake_mixpanel.queue_fault(server_error(503))
    sleeps = Sleeps()
    client = client_for(fake_mixpanel, sleeps)
    assert [orjson.loads(line) for line in export_lines(client, the_day())] == events
    assert [r.status for r in fake_mixpanel.export_requests()] == [200, 503, 200]
    assert len(sleeps) == 2 and client.queries == 3  # one loop, one count: the cut and the 503 alike


def test_every_retry_takes_a_token_from_the_shared_rate_budget(fake_mixpanel, tmp_path):
    # Retries are queries: the budget file every run on the machine shares records each attempt.
    fake_mixpanel.add_events(day_events(3))
    fake_mixpanel.queue_fault(server_error(503))
    fake_mixpanel.queue_fault(cut_stream(0))
    budget = RateBudget(tmp_path / "export.json", 60, 10_000)
    client = MixpanelClient(PROJECT_ID, USERNAME, SECRET, export_url=fake_mixpanel.url, sleep=Sleeps(),
                            export_budget=budget)
    assert len(export_lines(client, the_day())) == 3
    assert len(RateBudget(tmp_path / "export.json").recorded()) == budget.spent == client.queries == 3


@pytest.mark.parametrize("n_events", [5, 400], ids=["plain", "gzip"])
@pytest.mark.parametrize("after_bytes", [None, 0], ids=["cut-midway", "cut-at-once"])
def test_a_stream_cut_mid_body_raises_a_stream_error_never_a_short_success(fake_mixpanel, n_events, after_bytes):
    fake_mixpanel.add_events(day_events(n_events))
    fake_mixpanel.queue_fault(cut_stream(after_bytes))
    with pytest.raises(SourceStreamError, match="Export API query for 2024-11-22") as caught:
        export_once(client_for(fake_mixpanel), the_day())
    assert caught.value.retryable
    assert len(export_lines(client_for(fake_mixpanel), the_day())) == n_events  # the connection pool recovered


@pytest.mark.parametrize("n_events", [6, 400], ids=["plain", "gzip"])
def test_a_stream_ending_with_export_terminated_early_raises_a_stream_error(fake_mixpanel, n_events):
    fake_mixpanel.add_events(day_events(n_events))
    fake_mixpanel.queue_fault(terminated_early())
    with pytest.raises(SourceStreamError, match="terminated early") as caught:
        export_once(client_for(fake_mixpanel), the_day())
    assert caught.value.retryable


# --- errors a retry cannot fix ----------------------------------------------------------------------


@pytest.mark.parametrize("username, secret, project_id", [
    (USERNAME, "not-the-secret-3f9d", PROJECT_ID),
    ("someone-else", SECRET, PROJECT_ID),
    (USERNAME, SECRET, 999),
], ids=["wrong-secret", "wrong-user", "wrong-project"])
def test_refused_credentials_raise_an_auth_error_that_names_the_fix_and_hides_the_secret(
        fake_mixpanel, username, secret, project_id):
    client = MixpanelClient(project_id, username, secret, export_url=fake_mixpanel.url, engage_url=fake_mixpanel.url,
                            sleep=Sleeps())
    with pytest.raises(SourceAuthError) as caught:
        export_lines(client, the_day())
    message = str(caught.value)
    assert caught.value.status == 401 and not caught.value.retryable
    assert "Invalid credentials" in message and "env vars" in message
    assert secret not in message and SECRET not in message
    assert len(fake_mixpanel.export_requests()) == 1  # not retried


def test_unable_to_authenticate_400_is_an_auth_error_too(fake_mixpanel):
    fake_mixpanel.auth_failure_status = 400
    with pytest.raises(SourceAuthError, match="Unable to authenticate request") as caught:
        export_lines(client_for(fake_mixpanel, secret="expired-secret-81c2"), the_day())
    assert "expired-secret-81c2" not in str(caught.value) and not caught.value.retryable
    fake_mixpanel.queue_fault(unable_to_authenticate())
    with pytest.raises(SourceAuthError):
        export_lines(client_for(fake_mixpanel), the_day())


def test_engage_with_refused_credentials_raises_an_auth_error_without_the_secret(fake_mixpanel):
    with pytest.raises(SourceAuthError, match="Engage API page 0") as caught:
        list(client_for(fake_mixpanel, secret="wrong-engage-secret-77").profiles())
    assert "wrong-engage-secret-77" not in str(caught.value)


@pytest.mark.parametrize("status, mixpanel_text, hint, error_type", [
    (402, "Your plan does not include API access", "paid plan", SourcePermanentError),
    (403, "Permission denied", f"may not read project {PROJECT_ID}", SourceAuthError),
    (404, "Not found", f"project {PROJECT_ID} or the endpoint was not found", SourcePermanentError),
])
def test_402_403_404_fail_at_once_with_mixpanels_text_and_a_hint(
        fake_mixpanel, status, mixpanel_text, hint, error_type):
    fake_mixpanel.queue_fault(http_error(status))
    with pytest.raises(error_type) as caught:
        export_lines(client_for(fake_mixpanel), the_day())
    message = str(caught.value)
    assert caught.value.status == status and not caught.value.retryable
    assert mixpanel_text in message and hint in message and f"HTTP {status}" in message
    assert len(fake_mixpanel.export_requests()) == 1


def test_a_404_with_a_message_body_shows_that_message(fake_mixpanel):
    fake_mixpanel.queue_fault(http_error(404, {"message": "Project does not exist"}))
    with pytest.raises(SourcePermanentError, match="Project does not exist"):
        export_lines(client_for(fake_mixpanel), the_day())


def test_a_malformed_date_is_rejected_with_mixpanels_reason(fake_mixpanel):
    response = requests.get(fake_mixpanel.url + "/api/2.0/export", auth=(USERNAME, SECRET), timeout=30,
                            params={"project_id": PROJECT_ID, "from_date": "2024/11/22", "to_date": "2024-11-22"})
    assert response.status_code == 400 and "yyyy-mm-dd" in response.json()["error"]


def test_a_to_date_after_mixpanels_today_is_retryable_because_the_day_will_come(fake_mixpanel):
    # Mixpanel's "today" may be the project's calendar day, which can lag the UTC date of a
    # just-finished window west of UTC: the same query succeeds later, so it must not fail for good.
    fake_mixpanel.today = DAY - dt.timedelta(days=1)
    with pytest.raises(SourceTransientError, match="to_date cannot be later than today") as caught:
        export_lines(client_for(fake_mixpanel), the_day())
    assert caught.value.status == 400 and caught.value.retryable
    assert len(fake_mixpanel.export_requests()) == 1  # only a later run can help: no query spent on retries


# --- Engage API ---------------------------------------------------------------------------------------


def profiles(n: int) -> list[dict]:
    return [{"$distinct_id": f"user-{i:03d}", "$properties": {"$email": f"user{i}@example.com", "n": i}}
            for i in range(n)]


def test_engage_pages_through_every_profile_passing_the_session_id_on(fake_mixpanel):
    fake_mixpanel.add_profiles(profiles(25))
    fake_mixpanel.engage_page_size = 10
    got = list(client_for(fake_mixpanel).profiles())
    assert got == profiles(25)
    requests_ = fake_mixpanel.engage_requests()
    assert [r.form["page"] for r in requests_] == ["0", "1", "2"]
    session = "session_id"
    assert session not in requests_[0].form
    assert requests_[1].form[session] == requests_[2].form[session] != ""
    assert all(r.method == "POST" and r.params == {"project_id": str(PROJECT_ID)} for r in requests_)


def test_engage_stops_after_an_empty_page_when_the_total_is_a_multiple_of_the_page_size(fake_mixpanel):
    fake_mixpanel.add_profiles(profiles(20))
    fake_mixpanel.engage_page_size = 10
    assert len(list(client_for(fake_mixpanel).profiles())) == 20
    assert len(fake_mixpanel.engage_requests()) == 3


def test_engage_pages_are_a_stable_snapshot_while_profiles_change(fake_mixpanel):
    fake_mixpanel.add_profiles(profiles(15))
    fake_mixpanel.engage_page_size = 10
    stream = client_for(fake_mixpanel).profiles()
    first = [next(stream) for _ in range(10)]
    fake_mixpanel.delete_profiles(["user-012"])
    assert len(first + list(stream)) == 15


def test_an_engage_page_cut_mid_body_is_retried(fake_mixpanel):
    fake_mixpanel.add_profiles(profiles(25))
    fake_mixpanel.engage_page_size = 10
    fake_mixpanel.queue_fault(api="engage")  # page 0: fine
    fake_mixpanel.queue_fault(cut_stream(), api="engage")  # page 1: cut
    sleeps = Sleeps()
    assert list(client_for(fake_mixpanel, sleeps).profiles()) == profiles(25)
    assert [r.form["page"] for r in fake_mixpanel.engage_requests()] == ["0", "1", "1", "2"]
    assert len(sleeps) == 1


def test_engage_5xx_is_retried_and_429_honours_retry_after(fake_mixpanel):
    fake_mixpanel.add_profiles(profiles(3))
    fake_mixpanel.queue_fault(server_error(502), api="engage")
    fake_mixpanel.queue_fault(rate_limited(retry_after=5), api="engage")
    sleeps = Sleeps()
    assert len(list(client_for(fake_mixpanel, sleeps).profiles())) == 3
    assert sleeps[1] == 5.0 and [r.status for r in fake_mixpanel.engage_requests()] == [502, 429, 200]


def test_engage_page_beyond_zero_without_session_id_is_refused_by_the_server(fake_mixpanel):
    response = requests.post(fake_mixpanel.url + "/api/query/engage", params={"project_id": PROJECT_ID},
                             data={"page": "1"}, auth=(USERNAME, SECRET), timeout=30)
    assert response.status_code == 400 and "session_id" in response.json()["error"]


# --- limits and hosts --------------------------------------------------------------------------------


def test_the_fake_enforces_three_queries_a_second_when_asked(fake_mixpanel):
    fake_mixpanel.enforce_rate_limits = True
    fake_mixpanel.clock = lambda: 5000.0  # every request in the same instant
    auth = (USERNAME, SECRET)
    params = {"project_id": PROJECT_ID, "from_date": "2024-11-22", "to_date": "2024-11-22"}
    statuses = [requests.get(fake_mixpanel.url + "/api/2.0/export", params=params, auth=auth, timeout=30)
                for _ in range(4)]
    assert [r.status_code for r in statuses[:3]] == [200] * 3
    assert statuses[3].status_code == 429 and int(statuses[3].headers["Retry-After"]) >= 1
    assert "Query rate limit exceeded" in statuses[3].text


def test_the_fake_enforces_sixty_queries_an_hour_and_says_when_to_come_back(fake_mixpanel):
    fake_mixpanel.enforce_rate_limits = True
    now = [5000.0]
    fake_mixpanel.clock = lambda: now[0]
    auth = (USERNAME, SECRET)
    params = {"project_id": PROJECT_ID, "from_date": "2024-11-22", "to_date": "2024-11-22"}
    with requests.Session() as session:
        for _ in range(60):
            assert session.get(fake_mixpanel.url + "/api/2.0/export", params=params, auth=auth, timeout=30).ok
            now[0] += 2
        refused = session.get(fake_mixpanel.url + "/api/2.0/export", params=params, auth=auth, timeout=30)
    assert refused.status_code == 429 and int(refused.headers["Retry-After"]) == 3600 - 120


@pytest.mark.parametrize("residency, export_host, engage_host", [
    ("US", "https://data.mixpanel.com", "https://mixpanel.com"),
    ("EU", "https://data-eu.mixpanel.com", "https://eu.mixpanel.com"),
    ("IN", "https://data-in.mixpanel.com", "https://in.mixpanel.com"),
])
def test_residency_selects_mixpanels_hosts(residency, export_host, engage_host):
    client = MixpanelClient(1, "user", "secret", residency=residency)
    assert client.export_url == export_host + "/api/2.0/export"
    assert client.engage_url == engage_host + "/api/query/engage"


def test_explicit_urls_override_the_residency_hosts():
    client = MixpanelClient(1, "user", "secret", residency="EU",
                            export_url="http://127.0.0.1:9/", engage_url="http://127.0.0.1:8")
    assert client.export_url == "http://127.0.0.1:9/api/2.0/export"
    assert client.engage_url == "http://127.0.0.1:8/api/query/engage"


def test_an_unknown_residency_is_a_clear_error():
    with pytest.raises(ValueError, match="residency 'APAC'.*US, EU, IN"):
        MixpanelClient(1, "user", "secret", residency="APAC")


# --- MixpanelApiSource: spans -> Export API queries ---------------------------------------------------


def local_span(zone: str, start: str, end: str) -> Span:
    tz = zoneinfo.ZoneInfo(zone)
    return Span(dt.datetime.fromisoformat(start).replace(tzinfo=tz).astimezone(UTC),
                dt.datetime.fromisoformat(end).replace(tzinfo=tz).astimezone(UTC))


def source(timezone: str = "UTC", legacy: bool = False) -> MixpanelApiSource:
    return MixpanelApiSource(MixpanelClient(PROJECT_ID, "u", "s"), timezone, legacy)


def test_a_utc_day_is_one_date_without_a_filter():
    query = source().export_query(local_span("UTC", "2024-11-22T00:00", "2024-11-23T00:00"))
    assert (query.from_date, query.to_date, query.where, query.events) == (DAY, DAY, None, None)


def test_a_project_timezone_day_is_two_utc_dates_with_a_time_filter():
    span = local_span("America/Los_Angeles", "2024-11-22T00:00", "2024-11-23T00:00")
    query = source("America/Los_Angeles").export_query(span)
    assert (query.from_date, query.to_date) == (DAY, DAY + dt.timedelta(days=1))
    assert query.where == (f'properties["$time"] >= datetime({epoch("2024-11-22T08:00:00")}) and '
                           f'properties["$time"] < datetime({epoch("2024-11-23T08:00:00")})')


def test_an_hour_is_one_date_with_a_time_filter_and_keeps_the_pipelines_filters():
    span = local_span("UTC", "2024-11-22T13:00", "2024-11-22T14:00")
    query = source().export_query(span, events=["Purchase"], where='properties["plan"] == "pro"')
    assert (query.from_date, query.to_date, query.events) == (DAY, DAY, ("Purchase",))
    assert query.where == (f'(properties["plan"] == "pro") and '
                           f'properties["$time"] >= datetime({epoch("2024-11-22T13:00:00")})'
                           f' and properties["$time"] < datetime({epoch("2024-11-22T14:00:00")})')


def test_a_legacy_project_asks_for_dates_in_the_project_timezone():
    span = local_span("Asia/Tokyo", "2024-11-22T00:00", "2024-11-23T00:00")
    query = source("Asia/Tokyo", legacy=True).export_query(span)
    assert (query.from_date, query.to_date, query.where) == (DAY, DAY, None)


def test_event_chunks_of_a_project_day_return_exactly_that_days_events_from_the_server(fake_mixpanel):
    fake_mixpanel.add_events(day_events(240, "2024-11-22") + day_events(240, "2024-11-23"))
    src = MixpanelApiSource(client_for(fake_mixpanel), "America/Los_Angeles")
    span = local_span("America/Los_Angeles", "2024-11-22T00:00", "2024-11-23T00:00")
    chunks = list(src.event_chunks(span))
    assert isinstance(chunks[0], Origin) and "2024-11-22..2024-11-23" in chunks[0]
    times = [orjson.loads(line)["properties"]["time"] for line in b"".join(chunks[1:]).splitlines()]
    assert times and all(span.start.timestamp() <= t < span.end.timestamp() for t in times)
    everything = fake_mixpanel.events()
    in_span = [e for e in everything if span.start.timestamp() <= e["properties"]["time"] < span.end.timestamp()]
    assert len(times) == len(in_span)
    assert src.queries == 1


# --- the fake's where subset (other tests rely on it) ------------------------------------------------


@pytest.mark.parametrize("expression, expected", [
    ('properties["plan"] == "pro"', True),
    ('properties["plan"] != "pro"', False),
    ('properties["amount"] >= 10 and properties["amount"] < 10.5', True),
    ('properties["$time"] > datetime(100) or properties["plan"] == "x"', True),
    ('event["$time"] >= datetime("1970-01-01T00:02:01")', False),
    ('not (properties["plan"] == "free")', True),
    ('defined(properties["plan"]) and not defined(properties["missing"])', True),
    ('properties["missing"] == "x" or properties["missing"] < 3', False),
    ('properties["missing"] != "x"', True),
    ('properties["amount"] > "5"', False),
    ('properties["flag"]', True),
    ("properties['name with \\'quote\\''] == 1", True),
])
def test_the_fakes_where_evaluator_supports_the_segmentation_subset(expression, expected):
    props = {"plan": "pro", "amount": 10, "flag": True, "name with 'quote'": 1}
    assert bool(parse_where(expression)((props, 120.0))) is expected


@pytest.mark.parametrize("expression", [
    'properties["a"] ==', '__import__("os")', 'properties[1] == 1', '(properties["a"]',
])
def test_the_fakes_where_evaluator_rejects_what_it_does_not_understand(expression):
    with pytest.raises(WhereError):
        parse_where(expression)


# --- the fake's data changes (the data-sync tests rely on them) --------------------------------------


def test_late_and_back_dated_events_carry_their_arrival_time_into_the_next_export(fake_mixpanel):
    fake_mixpanel.add_events(day_events(30))
    client = client_for(fake_mixpanel)
    before = export_lines(client, the_day())
    late = {"event": "Imported", "properties": {"time": epoch("2024-11-22T05:00:00"), "distinct_id": "late",
                                                "$insert_id": "late-1", "mp_processing_time_ms": 1}}
    arrival = epoch("2024-11-25T09:00:00") * 1000
    fake_mixpanel.add_events([late], ingested_at_ms=arrival)
    after = [orjson.loads(line) for line in export_lines(client, the_day())]
    (imported,) = [e for e in after if e["event"] == "Imported"]
    assert len(after) == len(before) + 1 and imported["properties"]["mp_processing_time_ms"] == arrival
    assert late["properties"]["mp_processing_time_ms"] == 1  # the caller's dict was copied, not changed


def test_a_gdpr_deletion_removes_the_users_events_and_profile(fake_mixpanel):
    events = day_events(60)
    fake_mixpanel.add_events(events)
    fake_mixpanel.add_profiles([{"$distinct_id": "u3", "$properties": {}}, {"$distinct_id": "u4", "$properties": {}}])
    removed = fake_mixpanel.delete_distinct_ids(["u3"])
    assert removed == sum(e["properties"]["distinct_id"] == "u3" for e in events) > 0
    lines = [orjson.loads(line) for line in export_lines(client_for(fake_mixpanel), the_day())]
    assert len(lines) == len(events) - removed and all(e["properties"]["distinct_id"] != "u3" for e in lines)
    assert [p["$distinct_id"] for p in client_for(fake_mixpanel).profiles()] == ["u4"]


def test_the_fake_applies_limit_and_time_in_ms_like_the_export_api(fake_mixpanel):
    fake_mixpanel.add_events(day_events(30))
    auth = (USERNAME, SECRET)
    params = {"project_id": PROJECT_ID, "from_date": "2024-11-22", "to_date": "2024-11-22",
              "limit": 5, "time_in_ms": "true"}
    response = requests.get(fake_mixpanel.url + "/api/2.0/export", params=params, auth=auth, timeout=30)
    rows = [orjson.loads(line) for line in response.content.splitlines()]
    assert len(rows) == 5 and rows[0]["properties"]["time"] == epoch("2024-11-22T00:00:00") * 1000
    too_many = requests.get(fake_mixpanel.url + "/api/2.0/export", params={**params, "limit": 100_001},
                            auth=auth, timeout=30)
    assert too_many.status_code == 400
