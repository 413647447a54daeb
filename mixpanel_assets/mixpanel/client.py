"""HTTP client for Mixpanel's Raw Event Export API and Engage (profiles) API.

Behaviour follows MIXPANEL_SPEC.md sections 4 and 5:
- residency hosts (US / EU / IN), service-account basic auth plus `project_id`;
- the export body is streamed (gzip on the wire, decompressed with ISA-L) and handed on in
  chunks, never held whole; a body that is cut (by the transport, or mid-line behind clean
  framing), or ends with Mixpanel's literal "export terminated early" line, raises
  SourceStreamError so nothing partial is loaded, and a 200 that is not JSON lines (an HTML page,
  a JSON error object) raises SourcePermanentError (export_body.py);
- every request takes a token from the shared RateBudget first (60 queries/hour, 3/second), so
  a retry is a query like any other;
- 429, 5xx and connection failures raise SourceTransientError (with the server's Retry-After),
  400/401/402/403/404 raise SourcePermanentError at once with Mixpanel's message; credentials
  never appear in errors, and credentials that HTTP Basic cannot carry (a non-ASCII character)
  fail before any request, naming the env var.
The client sends each request once: `export_chunks` is one attempt, which the caller wraps in
`self.retries.call` (staging does, so a cut stream is staged again from scratch); Engage pages
are retried here, one page at a time, by the same SourceRetries (retry.py). An Engage page must
be a page (not an error object, a `results` list), and the pages must add up to `total`.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import requests
from isal import isal_zlib

from mixpanel_assets.mixpanel.errors import (
    SourceAuthError,
    SourceError,
    SourcePermanentError,
    SourceStreamError,
    SourceTransientError,
)
from mixpanel_assets.mixpanel.export_body import ExportBody
from mixpanel_assets.mixpanel.rate_budget import RateBudget
from mixpanel_assets.mixpanel.retry import BACKOFF_BASE_SECONDS, DEFAULT_MAX_RETRIES, SourceRetries, retry_after_seconds

HOSTS = {
    "US": ("https://data.mixpanel.com", "https://mixpanel.com"),
    "EU": ("https://data-eu.mixpanel.com", "https://eu.mixpanel.com"),
    "IN": ("https://data-in.mixpanel.com", "https://in.mixpanel.com"),
}
EXPORT_PATH = "/api/2.0/export"
ENGAGE_PATH = "/api/query/engage"
CHUNK = 1 << 20
ENGAGE_PAGE_SIZE = 1000
ENGAGE_SHORT_READ_RETRIES = 1  # an Engage read short of its `total` is read again once, whole

_TRANSPORT_ERRORS = (
    requests.ConnectionError,
    requests.Timeout,
    requests.exceptions.ChunkedEncodingError,
    requests.exceptions.ContentDecodingError,
)


@dataclass(frozen=True)
class ExportQuery:
    from_date: dt.date
    to_date: dt.date
    events: tuple[str, ...] | None = None
    where: str | None = None

    def describe(self) -> str:
        span = f"{self.from_date}" if self.from_date == self.to_date else f"{self.from_date}..{self.to_date}"
        return f"Export API query for {span}" + (f" where {self.where}" if self.where else "")


class MixpanelClient:
    def __init__(
        self,
        project_id: int,
        username: str,
        secret: str,
        residency: str = "US",
        export_url: str | None = None,
        engage_url: str | None = None,
        timeout: float = 300.0,
        max_retries: int = DEFAULT_MAX_RETRIES,
        export_budget: RateBudget | None = None,
        engage_budget: RateBudget | None = None,
        sleep: Callable[[float], None] = time.sleep,
        backoff_base: float = BACKOFF_BASE_SECONDS,
        credentials_hint: str = "the username/secret env vars named in pipelines.yaml",
        credential_envs: tuple[str, str] = ("(username)", "(secret)"),
        project_secret_auth: bool = False,
    ):
        """`project_secret_auth`: `secret` is the project's API secret, sent as the Basic username
        with an empty password and no `project_id` (Mixpanel's older auth, accepted until
        2027-03-03); `username` is then unused."""
        if residency not in HOSTS:
            raise ValueError(f"unknown Mixpanel residency {residency!r}; use one of {', '.join(HOSTS)}")
        data_host, query_host = HOSTS[residency]
        self.project_id = project_id
        self.export_url = (export_url or data_host).rstrip("/") + EXPORT_PATH
        self.engage_url = (engage_url or query_host).rstrip("/") + ENGAGE_PATH
        self.timeout = timeout
        self.export_budget = export_budget or RateBudget(None, 60, 3)
        self.engage_budget = engage_budget or RateBudget(None, 60, 5)
        self.retries = SourceRetries(max_retries, backoff_base, sleep=sleep)
        self.session = requests.Session()
        self.project_secret_auth = project_secret_auth
        if project_secret_auth:
            username, credential_envs = "", ("", credential_envs[1])
        self.session.auth = (secret, "") if project_secret_auth else (username, secret)
        # A project secret identifies its project; a service account needs the project named.
        self._project_params = {} if project_secret_auth else {"project_id": str(project_id)}
        self._secret = secret
        self.session.headers["User-Agent"] = "mixpanel-assets"
        self.queries = 0  # HTTP requests sent, retries included
        self.credentials_hint = credentials_hint  # names of env vars, never their values
        # Raised by the first request, inside the caller's error handling, before any query is spent.
        self._credentials_problem = _credentials_problem(project_id, username, secret, credential_envs)

    def close(self) -> None:
        self.session.close()

    # --- Raw Event Export API -------------------------------------------------------------

    def export_chunks(self, query: ExportQuery) -> Iterator[bytes]:
        """Yield the decompressed response body of one export query in ~1 MB chunks.

        One attempt: a failure raises (SourceTransientError / SourcePermanentError); retrying
        means calling this again and re-reading the whole body, under `self.retries.call`."""
        params = {
            **self._project_params,
            "from_date": query.from_date.isoformat(),
            "to_date": query.to_date.isoformat(),
        }
        if query.events:
            params["event"] = json.dumps(list(query.events))
        if query.where:
            params["where"] = query.where
        response = self._request(
            "GET", self.export_url, self.export_budget, query.describe(), params=params,
            headers={"Accept-Encoding": "gzip"}, stream=True,
        )
        with response:
            yield from _body_chunks(response, f"{query.describe()} (Mixpanel project {self.project_id})",
                                    (self._secret,))

    # --- Engage API ---------------------------------------------------------------------------

    def profiles(self, where: str | None = None) -> Iterator[dict]:
        """Yield every profile ({"$distinct_id", "$properties"}), paging by session_id.

        Pages are read as the API documents (the first page shorter than page_size is the last),
        then what was read must add up to the `total` of page 0: otherwise the last thing this
        generator does is raise, so its caller never replaces a table with fewer profiles. A read
        short of `total` is most likely Mixpanel's hiccup, so it is transient with one retry of
        the whole read (the caller re-stages from scratch under `self.retries.call`)."""
        page = 0
        session_id = None
        total: int | None = None
        read = 0
        while True:
            data = {"page": str(page), "page_size": str(ENGAGE_PAGE_SIZE)}
            if session_id:
                data["session_id"] = session_id
            if where:
                data["where"] = where
            what = f"Engage API page {page} of project {self.project_id}"
            body = self.retries.call(lambda d=data, w=what: self._engage_page(d, w), what,
                                     action="asking for the page again")
            results = body["results"]
            if total is None:
                total = _engage_total(body, what)
            read += len(results)
            page_size = int(body.get("page_size") or ENGAGE_PAGE_SIZE)
            if read > total:
                raise SourcePermanentError(
                    f"{what}: {read:,} profiles read by this page, more than the total of {total:,} "
                    "page 0 reported; the profiles are not loaded", reason="bad_response")
            yield from results
            if len(results) < page_size:
                break
            session_id = body.get("session_id") or session_id
            page = int(body.get("page", page)) + 1
        if read != total:
            raise SourceTransientError(
                f"{what}: {len(results):,} profiles on this page of {page_size:,}, {read:,} read in all, but "
                f"page 0 reported a total of {total:,}; the profiles are not loaded",
                reason="short_read", retry_limit=ENGAGE_SHORT_READ_RETRIES)

    def _engage_page(self, data: dict, what: str) -> dict:
        """One Engage request and its JSON body (read whole inside the request, so a body cut
        short surfaces here as a transient connection error and the page is asked for again).

        A 200 that is not a page (an error object, no `results` list) is permanent: the same
        request answered the same way, and its text is what the user needs to see."""
        response = self._request("POST", self.engage_url, self.engage_budget, what,
                                 params=dict(self._project_params), data=data)
        try:
            body = response.json()
        except ValueError:
            raise SourcePermanentError(f"{what}: response is not JSON: {response.text[:200]!r}", response.status_code,
                                       "bad_response") from None
        if not isinstance(body, dict):
            raise SourcePermanentError(f"{what}: the answer is not a page but {response.text[:200]!r}",
                                       response.status_code, "bad_response")
        if body.get("error") or body.get("status") not in (None, "ok"):
            raise SourcePermanentError(f"{what}: Mixpanel says {body.get('error') or body.get('status')!r} "
                                       f"(HTTP {response.status_code})", response.status_code, "bad_response")
        if not isinstance(body.get("results"), list):
            state = "null" if "results" in body and body["results"] is None else (
                "missing" if "results" not in body else f"a {type(body['results']).__name__}")
            raise SourcePermanentError(f"{what}: the page has no results (`results` is {state}); "
                                       "the profiles are not loaded", response.status_code, "bad_response")
        return body

    # --- one request ----------------------------------------------------------------------------

    def _request(self, method: str, url: str, budget: RateBudget, what: str, **kwargs) -> requests.Response:
        """Send one request (one query of `budget`); anything but 200 raises a SourceError."""
        if self._credentials_problem is not None:
            raise self._credentials_problem
        budget.acquire()
        self.queries += 1
        try:
            response = self.session.request(method, url, timeout=(30, self.timeout), **kwargs)
        except _TRANSPORT_ERRORS as exc:
            raise SourceTransientError(f"{what}: no complete answer from {url}: {type(exc).__name__}",
                                       reason="connection") from None
        status = response.status_code
        if status == 200:
            return response
        message = _error_message(response)
        response.close()
        if status == 429 or status >= 500:
            retry_after = retry_after_seconds(response.headers.get("Retry-After"))
            if status == 429:
                raise SourceTransientError(f"{what}: HTTP 429, rate-limited: {message}", 429, "rate_limited", retry_after)
            raise SourceTransientError(f"{what}: HTTP {status}: {message}", status, "unavailable", retry_after)
        raise _status_error(status, message, what, self.project_id, self.credentials_hint)


class _Gunzip:
    """Streaming gzip decoder that follows concatenated members.

    RFC 1952 lets a body hold several gzip members (streaming servers often emit one per flush);
    a plain decompressobj stops at the end of the first one and would silently drop the rest.
    """

    def __init__(self):
        self._d = isal_zlib.decompressobj(47)  # 47: gzip or zlib header

    def decompress(self, data: bytes) -> bytes:
        out = [self._d.decompress(data)]
        while self._d.eof and self._d.unused_data:
            rest = self._d.unused_data
            self._d = isal_zlib.decompressobj(47)
            out.append(self._d.decompress(rest))
        return b"".join(out)

    def flush(self) -> bytes:
        return self._d.flush()

    @property
    def eof(self) -> bool:
        return self._d.eof


def _body_chunks(response: requests.Response, what: str, redact: tuple[str, ...] = ()) -> Iterator[bytes]:
    """Decompress as we read; fail loudly on a cut body, a 'terminated early' trailer or a body
    that is not JSON lines (every Export body passes ExportBody: export_body.py)."""
    gzipped = "gzip" in response.headers.get("Content-Encoding", "").lower()
    decompressor = _Gunzip() if gzipped else None
    body = ExportBody(what, response.headers.get("Content-Type"), redact)
    received = 0
    try:
        while True:
            chunk = response.raw.read(CHUNK, decode_content=False)
            if not chunk:
                break
            received += len(chunk)
            if decompressor is not None:
                chunk = decompressor.decompress(chunk)
                if not chunk:
                    continue
            chunk = body.feed(chunk)
            if chunk:
                yield chunk
    except (requests.RequestException, OSError, isal_zlib.error) as exc:
        raise SourceStreamError(f"{what}: the response stream broke after {received} bytes ({type(exc).__name__}: {exc})") from None
    except Exception as exc:  # urllib3 ProtocolError / IncompleteRead are not RequestExceptions
        if type(exc).__module__.startswith("urllib3") or type(exc).__name__ in ("IncompleteRead", "ProtocolError"):
            raise SourceStreamError(f"{what}: the response stream broke after {received} bytes ({type(exc).__name__})") from None
        raise
    if decompressor is not None:
        rest = decompressor.flush()
        if not decompressor.eof:
            raise SourceStreamError(f"{what}: the gzip stream ended before its end marker after {received} bytes (cut connection)")
        rest = body.feed(rest) if rest else b""
        if rest:
            yield rest
    held = body.finish()
    if held:
        yield held
    body.check_end()


def _credentials_problem(project_id: int, username: str, secret: str,
                         envs: tuple[str, str]) -> SourcePermanentError | None:
    """Credentials HTTP Basic cannot carry as Mixpanel issued them (ASCII), named by env var only.

    Sent as they are, requests fails with a UnicodeEncodeError that quotes the character and its
    position in the secret, and names no env var; Mixpanel's credentials are plain ASCII, so a
    character beyond it (a pasted non-breaking space, curly quote or symbol) is a copying mistake."""
    for value, env, what in ((username, envs[0], "username"), (secret, envs[1], "secret")):
        if value and env and not value.isascii():
            return SourcePermanentError(
                f"Mixpanel project {project_id}: the service account {what} in env var {env} contains a character "
                "that is not ASCII; Mixpanel credentials are plain ASCII, so it was mis-copied (a non-breaking "
                f"space, a curly quote?). Copy it again from Mixpanel's project settings into {env}; no request "
                "was sent", reason="config")
    return None


def _engage_total(body: dict, what: str) -> int:
    """Page 0's `total`: how many profiles the read must add up to."""
    total = body.get("total")
    if total.__class__ is not int or total < 0:
        raise SourcePermanentError(f"{what}: the page has no usable `total` ({total!r}), so the read cannot be "
                                   "checked for completeness; the profiles are not loaded", reason="bad_response")
    return total


def _error_message(response: requests.Response) -> str:
    text = response.text[:500]
    try:
        body = json.loads(text)
    except ValueError:
        return text.strip() or response.reason or ""
    if isinstance(body, dict):
        return str(body.get("error") or body.get("message") or body)
    return text.strip()


def _status_error(status: int, message: str, what: str, project_id: int,
                  credentials_hint: str = "the env vars named in pipelines.yaml") -> SourceError:
    hint = {
        400: "Mixpanel rejected the request",
        401: f"the service account credentials were refused; check {credentials_hint}",
        402: "Mixpanel requires a paid plan for this request",
        403: f"the service account may not read project {project_id}; give it access to this project in Mixpanel",
        404: f"project {project_id} or the endpoint was not found; check project.id and project.residency",
    }.get(status, "unexpected response")
    text = f"{what}: HTTP {status}: {message!r} ({hint})"
    if status == 400 and "later than today" in message.lower():
        # Mixpanel checks to_date against its own calendar day, which can lag the UTC date of a
        # window that just ended (projects west of UTC); the same query succeeds a few hours later,
        # not a few seconds later, so only a later run can help.
        return SourceTransientError(
            f"{what}: HTTP 400: {message!r} (the window's last UTC date has not begun in Mixpanel's "
            "calendar yet; the run can be retried later)", status, "not_yet", retry_now=False,
        )
    if status == 401 or status == 403 or (status == 400 and "authenticate" in message.lower()):
        if status == 400:
            text = f"{what}: HTTP 400: {message!r} (the service account credentials were refused; check {credentials_hint})"
        return SourceAuthError(text, status)
    reason = {400: "bad_request", 402: "payment", 404: "config"}.get(status, "unexpected")
    return SourcePermanentError(text, status, reason)
