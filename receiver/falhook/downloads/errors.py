"""How a download fails: retryable or permanent, with a message naming the file's JSON path."""

from __future__ import annotations


class FetchError(Exception):
    """A download failed; ``retryable`` says whether trying again later may help, and
    ``status`` is the file server's HTTP status when that was the reason."""

    retryable = False

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


class FetchRetryable(FetchError):
    """Network errors, timeouts, too slow, 408, 429, 5xx, a body shorter than announced, a
    spool that cannot be written, a body that does not decode."""

    retryable = True


class FetchPermanent(FetchError):
    """Over max_file_bytes, a refused address, other 4xx, a bad URL or data: URI."""

    retryable = False


class FetchRefused(FetchPermanent):
    """The address guard refused the address the file's host resolved to."""


class Stopped(FetchRetryable):
    """The caller went away (cancelled, or the fetcher closed): abandon the download."""

    def __init__(self) -> None:
        super().__init__("download abandoned: cancelled or the fetcher closed")
