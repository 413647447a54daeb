"""Errors of the Mixpanel source: one type for "retrying cannot help", one for "retrying may".

The split is the whole contract between the layers: the retry layer (retry.py) retries
SourceTransientError and nothing else, and the Dagster boundary (defs/assets.py,
`source_failures_to_dagster`) turns whatever reaches it into a dg.Failure that Dagster does not
retry again. Messages name the query and carry Mixpanel's own words, and the *names* of the
credential env vars where they help; never a secret.
"""

from __future__ import annotations

from typing import Literal

PermanentReason = Literal["auth", "payment", "bad_request", "config", "bad_response", "unexpected"]
TransientReason = Literal["rate_limited", "unavailable", "connection", "stream", "not_yet", "short_read"]


class SourceError(RuntimeError):
    """Base of the source's errors; `retryable` says whether trying again (later) can help."""

    retryable = False
    reason: str = "unexpected"

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status  # the HTTP status Mixpanel answered with, if any


class SourcePermanentError(SourceError):
    """The same request fails the same way every time: refused credentials (auth, 401/403 and
    Mixpanel's 400 'Unable to authenticate'), no API access on the plan (payment, 402), a
    rejected request (bad_request, 400), a wrong project or residency (config, 404), an answer
    that is not what the API documents (bad_response)."""

    def __init__(self, message: str, status: int | None = None, reason: PermanentReason = "unexpected"):
        super().__init__(message, status)
        self.reason = reason


class SourceAuthError(SourcePermanentError):
    """The service account was refused (401, 403, or 400 'Unable to authenticate')."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message, status, "auth")


class SourceTransientError(SourceError):
    """The request may succeed if sent again: 429, 5xx, a refused or dropped connection, a cut
    stream. `retry_after` is the bounded wait the server asked for, if it did; `retry_now`
    False means only a later run can help (Mixpanel's calendar has not reached the window's
    last day yet), so the retry layer does not spend queries on it. `retry_limit` caps the
    retries of an error that costs a whole read to retry and is unlikely to last (an Engage read
    short of its `total`: one retry), below the layer's own setting."""

    retryable = True

    def __init__(self, message: str, status: int | None = None, reason: TransientReason = "unavailable",
                 retry_after: float | None = None, retry_now: bool = True, retry_limit: int | None = None):
        super().__init__(message, status)
        self.reason = reason
        self.retry_after = retry_after
        self.retry_now = retry_now
        self.retry_limit = retry_limit
        self.attempts = 1  # queries this error cost, set by the retry layer when it gives up
        self.exhausted = False  # a retry loop gave up on it: an enclosing loop must not retry it again

    def gave_up(self, attempts: int, waited: float) -> SourceTransientError:
        """Say in the message that the retry layer spent its attempts on this error."""
        self.attempts = attempts
        self.exhausted = True
        plural = "s" if attempts != 1 else ""
        self.args = (f"{self.args[0]} (gave up after {attempts} attempt{plural}, {waited:.0f} s of waiting)",)
        return self


class SourceStreamError(SourceTransientError):
    """The export stream was cut or ended early; the window must be read again, whole."""

    def __init__(self, message: str):
        super().__init__(message, None, "stream")


class BadInputError(ValueError):
    """The input itself is wrong (more malformed lines than the bad-line policy allows, an
    unreadable local file): permanent, so the run fails without retrying. Defined with the
    source, which raises it for unreadable files, so the source needs nothing from staging."""
