"""A deterministic demo Mixpanel project, so the embedded default runs with no credentials.

Any hour of any day can be generated on its own and always gives the same lines, so partitions
can be exported in any order and re-exported with identical results. The data exercises what
real projects contain: anonymous browsing that later signs up (Simplified ID Merge links from
`$device_id` + `$user_id`), returning users on a second device, a device shared by two users,
~1% duplicate deliveries (some re-ingested with a later `mp_processing_time_ms`), unicode, and
nested properties.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import math
import random
from collections.abc import Iterator

import orjson

from mixpanel_assets.mixpanel.sources import EventSource, Span

EVENTS = [
    ("Viewed Page", 40), ("Clicked Button", 18), ("Search", 8), ("Viewed Product", 10),
    ("Added to Cart", 5), ("Purchase", 2), ("Logged In", 3), ("Opened App", 6), ("Played Video", 3),
    ("$mp_web_page_view", 5),
]
CITIES = [("Berlin", "DE"), ("San Francisco", "US"), ("São Paulo", "BR"), ("東京", "JP"), ("Kraków", "PL"),
          ("London", "GB"), ("Montréal", "CA"), ("Bengaluru", "IN")]
BROWSERS = ["Chrome", "Safari", "Firefox", "Microsoft Edge"]
PATHS = ["/", "/pricing", "/features", "/app/dashboard", "/blog/ünïcode-tips", "/docs/start"]
EPOCH = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
HOUR = 3600


def _rng(*parts) -> random.Random:
    digest = hashlib.sha256("|".join(map(str, parts)).encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def _hex(rng: random.Random, n: int) -> str:
    return "".join(rng.choice("0123456789abcdef") for _ in range(n))


class DemoSource(EventSource):
    def __init__(self, seed: int = 42, events_per_hour: int = 400, users: int = 300, project_id: int = 1):
        self.seed = seed
        self.events_per_hour = events_per_hour
        self.n_users = users
        self.project_id = project_id
        self.description = f"demo data (seed {seed})"
        self._users = [self._user(i) for i in range(users)]

    def _user(self, i: int) -> dict:
        rng = _rng(self.seed, "user", i)
        user = {
            "user_id": f"user_{i:05d}" if i % 3 else f"{_hex(rng, 8)}@example.com",
            "devices": [_hex(rng, 16)],
            # Hours since EPOCH at which the user signs up; negative = before any demo data.
            "signup": rng.randint(-24 * 30, 24 * 365 * 3),
            "city": rng.choice(CITIES),
            "browser": rng.choice(BROWSERS),
            "weight": 1.0 / (1 + i) ** 0.6,
        }
        if rng.random() < 0.25:  # returning on a second device some hours after signup
            user["devices"].append(_hex(rng, 16))
            user["second_device_after"] = rng.randint(1, 24 * 14)
        return user

    def _pick(self, rng: random.Random, hour_index: int):
        users = self._users
        if rng.random() < 0.15:  # an anonymous visitor who never signs up (a pool of 2 per user)
            visitor = rng.randrange(2 * len(users))
            device = _hex(_rng(self.seed, "visitor", visitor), 16)
            return None, device, CITIES[visitor % len(CITIES)], BROWSERS[visitor % len(BROWSERS)]
        user = rng.choices(users, weights=[u["weight"] for u in users])[0]
        device = user["devices"][0]
        if len(user["devices"]) > 1 and hour_index >= user["signup"] + user["second_device_after"] - 2 and rng.random() < 0.5:
            device = user["devices"][1]
        identified = hour_index >= user["signup"]
        if device != user["devices"][0]:
            identified = hour_index >= user["signup"] + user["second_device_after"]
        # Multiple users on one device: user 2 logs in on user 1's first device after a reset.
        if users.index(user) == 2 and identified and rng.random() < 0.2 and len(users) > 1:
            device = users[1]["devices"][0]
        return (user if identified else {"user_id": None, "pending": user}), device, user["city"], user["browser"]

    def hour_lines(self, hour_index: int) -> list[bytes]:
        """All export lines of one UTC hour, sorted by time (duplicates included)."""
        rng = _rng(self.seed, "hour", hour_index)
        hour_start = int(EPOCH.timestamp()) + hour_index * HOUR
        hour_of_day = hour_index % 24
        diurnal = 1.0 + 0.6 * math.sin((hour_of_day - 9) / 24 * 2 * math.pi)
        n = max(1, int(self.events_per_hour * diurnal))
        events = []
        names = [e for e, _ in EVENTS]
        weights = [w for _, w in EVENTS]
        for i in range(n):
            time = hour_start + rng.randrange(HOUR)
            picked, device, city, browser = self._pick(rng, hour_index)
            props = {"time": time}
            user_id = picked["user_id"] if picked else None
            props["distinct_id"] = user_id if user_id else f"$device:{device}"
            props["$insert_id"] = _hex(rng, 20)
            props["mp_processing_time_ms"] = time * 1000 + rng.randint(50, 90_000)
            props["$device_id"] = device
            if user_id:
                props["$user_id"] = user_id
            props.update({
                "$browser": browser, "$city": city[0], "mp_country_code": city[1], "$os": rng.choice(["Mac OS X", "Windows", "iOS"]),
                "mp_lib": "web", "$current_url": "https://demo.example.com" + rng.choice(PATHS),
            })
            name = rng.choices(names, weights)[0]
            if name == "Purchase":
                props["price"] = round(rng.uniform(5, 300), 2)
                props["items"] = [{"sku": f"SKU-{rng.randint(1, 99):03d}", "qty": rng.randint(1, 3)}]
            elif name == "Search":
                props["search_query"] = rng.choice(["prix", "größe", "料金", "pricing", "dashboards"])
            events.append((name, props))
        # Sign-ups happen in their own hour: the first identified event of a user on its device.
        for user in self._users:
            if user["signup"] == hour_index:
                time = hour_start + rng.randrange(HOUR)
                events.append(("Signed Up", {
                    "time": time, "distinct_id": user["user_id"], "$insert_id": _hex(rng, 20),
                    "mp_processing_time_ms": time * 1000 + 500, "$device_id": user["devices"][0],
                    "$user_id": user["user_id"], "$city": user["city"][0], "mp_lib": "web",
                    "plan": rng.choice(["free", "pro"]),
                }))
        events.sort(key=lambda e: e[1]["time"])
        lines = [orjson.dumps({"event": name, "properties": props}) for name, props in events]
        for i in range(len(lines)):
            if rng.random() < 0.01:
                name, props = events[i]
                if rng.random() < 0.5:
                    props = dict(props, mp_processing_time_ms=props["mp_processing_time_ms"] + rng.randint(1000, 600_000))
                lines.append(orjson.dumps({"event": name, "properties": props}))
        return lines

    def event_chunks(self, span: Span, events=None, where=None) -> Iterator[bytes]:
        start = math.floor((span.start - EPOCH).total_seconds() / HOUR)
        end = math.ceil((span.end - EPOCH).total_seconds() / HOUR)
        for hour_index in range(start, end):
            lines = self.hour_lines(hour_index)
            if lines:
                yield b"\n".join(lines) + b"\n"

    def profile_lines(self) -> Iterator[bytes]:
        for i, user in enumerate(self._users):
            rng = _rng(self.seed, "profile", i)
            created = EPOCH + dt.timedelta(hours=max(user["signup"], 0))
            yield orjson.dumps({
                "$distinct_id": user["user_id"],
                "$properties": {
                    "$name": f"Demo User {i}", "$email": f"demo{i}@example.com", "$city": user["city"][0],
                    "$created": created.strftime("%Y-%m-%dT%H:%M:%S"), "plan": rng.choice(["free", "pro", "enterprise"]),
                    "lifetime_value": round(rng.uniform(0, 900), 2),
                },
            })
