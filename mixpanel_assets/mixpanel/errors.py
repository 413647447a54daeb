"""Errors of the Mixpanel source, each with a message a data engineer can act on."""

from __future__ import annotations


class MixpanelError(RuntimeError):
    """Base class; `retryable` tells the run whether trying again later can help."""

    retryable = False


class MixpanelAPIError(MixpanelError):
    """Mixpanel answered with an error status; carries Mixpanel's own message."""

    def __init__(self, message: str, status: int | None = None, retryable: bool = False):
        super().__init__(message)
        self.status = status
        self.retryable = retryable


class MixpanelAuthError(MixpanelAPIError):
    """Credentials were refused (400 'Unable to authenticate', 401, 403)."""


class MixpanelRateLimited(MixpanelAPIError):
    """Still rate-limited (429) after every retry."""

    def __init__(self, message: str):
        super().__init__(message, 429, retryable=True)


class MixpanelStreamError(MixpanelError):
    """The export stream was cut or ended early; the window must be exported again."""

    retryable = True


class BadInputError(ValueError):
    """The input itself is wrong (more malformed lines than the bad-line policy allows, an
    unreadable local file): permanent, so the run fails without retrying. Defined with the
    source, which raises it for unreadable files, so the source needs nothing from staging."""
