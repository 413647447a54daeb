"""The one retry layer of source requests: Export queries, Engage pages and the sync probe.

Why one: retries used to happen in the client (per request), in staging (per stream) and in the
Dagster step (RetryPolicy), and multiplied: one persistent fault could cost 7 x 3 x 4 = 84
Export API queries of a 60/hour budget. Now an *attempt* is whatever must be redone whole after
a transient failure (for an export: issuing the query and staging its stream from scratch, since
a cut stream cannot be resumed; for Engage: one page, and the whole read when its pages do not
add up to `total`, at most once), this module retries it, and nothing above retries source errors
again: a loop never retries an error a nested loop gave up on (an Engage page inside a whole
read), and defs/assets.py `source_failures_to_dagster` fails the step without Dagster
retries. Every attempt sends its request through the client, which takes a token from
the shared RateBudget first, so retries are counted as queries like any other.

Bound (docs/operations-retries.md): an attempt that fails costs one query, so a read of one query
that fails every time costs exactly `max_retries + 1` queries (DEFAULT_MAX_RETRIES + 1 = 7).

The loop is tenacity's; this module only decides what is retried (SourceTransientError with
`retry_now`, within its own `retry_limit` if it has one) and how long to wait: the server's
Retry-After when it gives a usable one, else exponential backoff with jitter, both capped.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import tenacity

from mixpanel_assets.mixpanel.errors import SourceTransientError

DEFAULT_MAX_RETRIES = 6  # project.source.max_retries; 7 attempts, about 1 + 2 + ... + 32 s of backoff
BACKOFF_BASE_SECONDS = 2.0  # the first wait is 1-2 s, doubling
BACKOFF_CAP_SECONDS = 300.0
RETRY_AFTER_CAP_SECONDS = 600.0  # a Retry-After beyond this is waited for this long, then retried

T = TypeVar("T")
_log = logging.getLogger(__name__)


def max_queries_of_failing_read(max_retries: int = DEFAULT_MAX_RETRIES) -> int:
    """Export API queries one read (one query's worth of data) costs when every attempt fails."""
    return max_retries + 1


def retry_after_seconds(value: str | None, now: dt.datetime | None = None) -> float | None:
    """Retry-After as seconds to wait, or None for 'use backoff'.

    RFC 9110 allows delay-seconds or an HTTP date; servers also send nonsense (`nan`, `inf`,
    negative numbers, dates in the year 9999). A negative or past value means now; a non-finite
    or unparsable one is ignored; a huge one is capped by the caller (SourceRetries.delay).
    """
    if value is None or not value.strip():
        return None
    try:
        seconds = float(value)
    except ValueError:
        seconds = None
    if seconds is not None:
        return max(seconds, 0.0) if math.isfinite(seconds) else (RETRY_AFTER_CAP_SECONDS if seconds > 0 else None)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, OverflowError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return max((when - (now or dt.datetime.now(dt.UTC))).total_seconds(), 0.0)


@dataclass(frozen=True)
class SourceRetries:
    """How a source retries transient failures; one instance per client, shared by its reads."""

    max_retries: int = DEFAULT_MAX_RETRIES
    backoff_base: float = BACKOFF_BASE_SECONDS
    backoff_cap: float = BACKOFF_CAP_SECONDS
    retry_after_cap: float = RETRY_AFTER_CAP_SECONDS
    sleep: Callable[[float], None] = time.sleep

    @property
    def attempts(self) -> int:
        return self.max_retries + 1

    def delay(self, failed_attempt: int, retry_after: float | None) -> float:
        """Seconds to wait after attempt `failed_attempt` (1-based); always finite and capped."""
        if retry_after is not None and math.isfinite(retry_after):
            return min(max(retry_after, 0.0), self.retry_after_cap)
        backoff = min(self.backoff_base * 2 ** (failed_attempt - 1), self.backoff_cap)
        return backoff * (0.5 + random.random() / 2)  # jittered down by at most half

    def call(self, attempt: Callable[[], T], what: str, log: logging.Logger | None = None,
             action: str = "retrying") -> T:
        """Run `attempt` until it returns, retrying SourceTransientError; re-raise anything else.

        `attempt` must redo the whole unit (issue the query again and re-read its body), so a
        cut stream is never stitched to a partial one. When the attempts run out the last error
        is raised with how many attempts it cost, for the Dagster boundary to report.
        """
        logger = log or _log

        def wait(state: tenacity.RetryCallState) -> float:
            exc = state.outcome.exception()
            return self.delay(state.attempt_number, getattr(exc, "retry_after", None))

        def retry(state: tenacity.RetryCallState) -> bool:
            exc = state.outcome.exception()
            if not isinstance(exc, SourceTransientError) or not exc.retry_now or exc.exhausted:
                return False  # exhausted: a nested call (an Engage page inside a whole read) gave up on it
            return exc.retry_limit is None or state.attempt_number <= exc.retry_limit

        def before_sleep(state: tenacity.RetryCallState) -> None:
            exc = state.outcome.exception()
            limit = getattr(exc, "retry_limit", None)
            attempts = self.attempts if limit is None else min(self.attempts, limit + 1)
            logger.warning(f"{exc}; {action} in {state.upcoming_sleep:.1f} s "
                           f"(attempt {state.attempt_number + 1} of {attempts})")

        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(self.attempts),
            wait=wait,
            retry=retry,
            sleep=self.sleep,
            before_sleep=before_sleep,
            reraise=True,
        )
        try:
            return retrying(attempt)
        except SourceTransientError as exc:
            if exc.retry_now and not exc.exhausted:
                stats = retrying.statistics
                raise exc.gave_up(stats.get("attempt_number", 1), stats.get("idle_for", 0.0))
            raise


NO_RETRIES = SourceRetries(max_retries=0)  # sources that read local data: waiting changes nothing
