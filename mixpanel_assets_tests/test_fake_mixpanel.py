"""The fake Mixpanel agrees with Mixpanel, called with plain `requests` (no client of ours in between).

Covered: both documented auths (service account + project_id; project secret as the Basic
username with an empty password and no project_id, MIXPANEL_SPEC.md section 4), "to_date cannot
be later than today" judged on the project timezone's date, events served exactly as stored,
a request log that is complete as soon as the answer arrives, and the Query API reads Airbyte
makes (top event properties, profile properties, cohorts) computed from the stored data.
"""

import base64
import datetime as dt

import orjson
import pytest
import requests

from mixpanel_assets_tests.fake_mixpanel import PROJECT_ID, PROJECT_SECRET, SECRET, USERNAME, http_error

DAY = "2024-11-22"
T = 1_732_233_600  # 2024-11-22T00:00:00Z


def event(name: str, i: int, **props) -> dict:
    return {"event": name, "properties": {"time": T + i * 60, "distinct_id": f"u{i}", "$insert_id": f"{name}-{i}",
                                          **props}}


def export(fake, auth, **params) -> requests.Response:
    params = {"from_date": DAY, "to_date": DAY, **params}
    return requests.get(f"{fake.url}/api/2.0/export", params=params, auth=auth, timeout=10)


def lines(response: requests.Response) -> list[dict]:
    return [orjson.loads(line) for line in response.content.splitlines()]


# --- auth ------------------------------------------------------------------------------------------------


def test_a_service_account_needs_the_project_id(fake_mixpanel):
    fake_mixpanel.add_events([event("A", 1)])
    assert lines(export(fake_mixpanel, (USERNAME, SECRET), project_id=PROJECT_ID)) == [event("A", 1)]
    assert export(fake_mixpanel, (USERNAME, SECRET)).status_code == 401
    assert export(fake_mixpanel, (USERNAME, "wrong"), project_id=PROJECT_ID).status_code == 401


def test_the_project_secret_alone_reads_its_project(fake_mixpanel):
    fake_mixpanel.add_events([event("A", 1)])
    response = export(fake_mixpanel, (PROJECT_SECRET, ""))
    assert response.status_code == 200 and lines(response) == [event("A", 1)]
    assert export(fake_mixpanel, (PROJECT_SECRET, ""), project_id=PROJECT_ID).status_code == 200
    profiles = requests.post(f"{fake_mixpanel.url}/api/query/engage", data={}, auth=(PROJECT_SECRET, ""), timeout=10)
    assert profiles.status_code == 200 and profiles.json()["status"] == "ok"


def test_the_project_secret_as_airbyte_sends_it_without_a_colon(fake_mixpanel):
    fake_mixpanel.add_events([event("A", 1)])
    header = {"Authorization": "Basic " + base64.b64encode(PROJECT_SECRET.encode()).decode()}
    response = requests.get(f"{fake_mixpanel.url}/api/2.0/export", params={"from_date": DAY, "to_date": DAY},
                            headers=header, timeout=10)
    assert response.status_code == 200 and len(lines(response)) == 1


def test_a_project_secret_opens_only_its_own_project(fake_mixpanel):
    fake_mixpanel.add_project(77)
    fake_mixpanel.add_events([event("Other", 2)], project_id=77)
    fake_mixpanel.add_events([event("Mine", 1)])
    other_secret = fake_mixpanel.project_secret_of(77)
    assert other_secret != PROJECT_SECRET
    assert [e["event"] for e in lines(export(fake_mixpanel, (other_secret, "")))] == ["Other"]
    assert export(fake_mixpanel, (other_secret, ""), project_id=PROJECT_ID).status_code == 401
    assert export(fake_mixpanel, (PROJECT_SECRET, "not-empty")).status_code == 401
    assert export(fake_mixpanel, ("not-a-secret", "")).status_code == 401


def test_the_request_log_never_holds_a_project_secret(fake_mixpanel):
    export(fake_mixpanel, (PROJECT_SECRET, ""))
    export(fake_mixpanel, (USERNAME, SECRET), project_id=PROJECT_ID)
    assert [r.user for r in fake_mixpanel.requests] == ["(project secret)", USERNAME]
    assert PROJECT_SECRET not in repr(fake_mixpanel.requests)


# --- to_date against the project's today -------------------------------------------------------------------


@pytest.mark.parametrize("timezone, now_utc, to_date, status", [
    ("UTC", "2024-11-22T20:00:00", "2024-11-23", 400),
    ("Pacific/Auckland", "2024-11-22T20:00:00", "2024-11-23", 200),   # 09:00 on the 23rd in Auckland
    ("America/Los_Angeles", "2024-11-23T03:00:00", "2024-11-23", 400),  # still the 22nd in Los Angeles
    ("America/Los_Angeles", "2024-11-23T03:00:00", "2024-11-22", 200),
])
def test_to_date_later_than_today_is_judged_on_the_project_timezones_date(fake_mixpanel, timezone, now_utc, to_date,
                                                                        status):
    fake_mixpanel.set_timezone(timezone)
    fake_mixpanel.now = lambda: dt.datetime.fromisoformat(now_utc).replace(tzinfo=dt.UTC)
    response = export(fake_mixpanel, (USERNAME, SECRET), project_id=PROJECT_ID, from_date="2024-11-22",
                      to_date=to_date)
    assert response.status_code == status
    if status == 400:
        assert "to_date cannot be later than today" in response.json()["error"]


# --- events as stored --------------------------------------------------------------------------------------


def test_events_are_served_exactly_as_stored(fake_mixpanel):
    old = event("Old import", 1)  # no mp_processing_time_ms, as older exports and imports have none
    new = event("New", 2, mp_processing_time_ms=(T + 130) * 1000)
    fake_mixpanel.add_events([old, new])
    assert lines(export(fake_mixpanel, (USERNAME, SECRET), project_id=PROJECT_ID)) == [old, new]
    assert fake_mixpanel.events() == [old, new]


# --- the request log is complete when the answer arrives ------------------------------------------------------


def test_the_logged_status_is_there_as_soon_as_the_client_has_its_answer(fake_mixpanel):
    fake_mixpanel.add_events([event("A", i) for i in range(50)])
    session = requests.Session()
    for round_ in range(150):  # the old order (status after the body) lost this race in most runs
        kind = round_ % 3
        if kind == 0:
            fake_mixpanel.queue_fault(http_error(503))
        response = session.get(f"{fake_mixpanel.url}/api/2.0/export", auth=(USERNAME, SECRET), timeout=10,
                               params={"project_id": PROJECT_ID, "from_date": DAY,
                                       "to_date": DAY if kind != 2 else "nonsense"})
        assert fake_mixpanel.requests[-1].status == response.status_code == (503, 200, 400)[kind]
    engage = session.post(f"{fake_mixpanel.url}/api/query/engage", params={"project_id": PROJECT_ID},
                          auth=(USERNAME, SECRET), timeout=10)
    assert fake_mixpanel.requests[-1].status == engage.status_code == 200


# --- Query API reads ------------------------------------------------------------------------------------------


def query(fake, path: str, method: str = "GET", **params) -> requests.Response:
    return requests.request(method, f"{fake.url}{path}", params={"project_id": PROJECT_ID, **params},
                            auth=(USERNAME, SECRET), timeout=10)


@pytest.mark.parametrize("prefix", ["/api/2.0", "/api/query"])
def test_top_event_properties_count_the_events_carrying_each_property(fake_mixpanel, prefix):
    fake_mixpanel.add_events([event("Purchase", i, amount=i, **({"coupon": "X"} if i % 3 == 0 else {}))
                              for i in range(9)] + [event("Viewed", 20, page="/")])
    body = query(fake_mixpanel, f"{prefix}/events/properties/top", event="Purchase").json()
    assert body == {"time": {"count": 9}, "distinct_id": {"count": 9}, "$insert_id": {"count": 9},
                    "amount": {"count": 9}, "coupon": {"count": 3}}
    assert list(body)[-1] == "coupon"  # most frequent first
    assert len(query(fake_mixpanel, f"{prefix}/events/properties/top", event="Purchase", limit=2).json()) == 2
    missing = query(fake_mixpanel, f"{prefix}/events/properties/top")
    assert missing.status_code == 400 and "event is a required parameter" in missing.json()["error"]


def test_profile_properties_have_counts_and_types(fake_mixpanel):
    fake_mixpanel.add_profiles([
        {"$distinct_id": "a", "$properties": {"$created": "2024-01-02T03:04:05", "$email": "a@x", "visits": 3,
                                              "vip": True, "tags": ["x"], "address": {"city": "Oslo"}}},
        {"$distinct_id": "b", "$properties": {"$created": "2024-02-02T03:04:05", "$email": "b@x", "visits": 1}},
        {"$distinct_id": "c", "$properties": {"$email": "c@x", "nothing": None}},
    ])
    body = query(fake_mixpanel, "/api/2.0/engage/properties").json()
    assert body == {"results": {
        "$email": {"count": 3, "type": "string"}, "$created": {"count": 2, "type": "datetime"},
        "visits": {"count": 2, "type": "number"}, "vip": {"count": 1, "type": "boolean"},
        "tags": {"count": 1, "type": "list"}, "address": {"count": 1, "type": "object"}}}


def test_cohorts_are_listed_with_live_counts_and_filter_engage(fake_mixpanel):
    fake_mixpanel.add_profiles([{"$distinct_id": f"u{i}", "$properties": {"plan": ["free", "pro"][i % 2]}}
                                for i in range(6)])
    fake_mixpanel.add_cohort(1000, "Pro users", where='user["plan"] == "pro"', description="paying",
                             created="2019-03-19 23:49:51")
    fake_mixpanel.add_cohort(2000, "Hand-picked", distinct_ids=["u0", "u1", "gone"], is_visible=False)
    expected = [
        {"count": 3, "is_visible": 1, "description": "paying", "created": "2019-03-19 23:49:51",
         "project_id": PROJECT_ID, "id": 1000, "name": "Pro users"},
        {"count": 2, "is_visible": 0, "description": "", "created": "2024-01-01 00:00:00",
         "project_id": PROJECT_ID, "id": 2000, "name": "Hand-picked"},
    ]
    assert query(fake_mixpanel, "/api/2.0/cohorts/list").json() == expected  # as Airbyte calls it
    assert query(fake_mixpanel, "/api/query/cohorts/list", method="POST").json() == expected  # as documented
    fake_mixpanel.add_profiles([{"$distinct_id": "u9", "$properties": {"plan": "pro"}}])
    assert query(fake_mixpanel, "/api/2.0/cohorts/list").json()[0]["count"] == 4

    members = requests.post(f"{fake_mixpanel.url}/api/2.0/engage", params={"project_id": PROJECT_ID},
                            data={"filter_by_cohort": '{"id": 1000}'}, auth=(USERNAME, SECRET), timeout=10).json()
    assert sorted(p["$distinct_id"] for p in members["results"]) == ["u1", "u3", "u5", "u9"]
    unknown = requests.post(f"{fake_mixpanel.url}/api/2.0/engage", params={"project_id": PROJECT_ID},
                            data={"filter_by_cohort": '{"id": 5}'}, auth=(USERNAME, SECRET), timeout=10)
    assert unknown.status_code == 400 and "no cohort 5" in unknown.json()["error"]


def test_query_reads_need_credentials_and_work_with_the_project_secret(fake_mixpanel):
    assert requests.get(f"{fake_mixpanel.url}/api/2.0/cohorts/list", timeout=10).status_code == 401
    response = requests.get(f"{fake_mixpanel.url}/api/2.0/cohorts/list", auth=(PROJECT_SECRET, ""), timeout=10)
    assert response.status_code == 200 and response.json() == []
    assert [r.api for r in fake_mixpanel.requests] == ["query", "query"]
