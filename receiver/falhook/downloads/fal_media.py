"""fal's private media: a file an access rule forbids (403) or hides (404) is read through a
signed URL from fal's storage signing API.

    POST https://api.fal.ai/v1/storage/files/sign?url=<file URL, no query>
    Authorization: Key $FAL_KEY        {"expiration_seconds": 3600}
    -> 200 {"signed_url": "https://v3b.fal.media/files/...?identity=..."}

Signed URLs live up to 7 days (the key needs the `assets:read` permission). falhook asks for
one only when a download from a fal media host (fal.media and its subdomains: v3.fal.media,
v3b.fal.media, ...) answered 401, 403 or 404, uses it at once, and never stores or logs it:
its query is a credential.
"""

from __future__ import annotations

from urllib.parse import urlencode, urlsplit

import httpx

from falhook_sinks.httpcommon import trust

SIGNABLE_STATUSES = (401, 403, 404)
SIGNED_FOR = 3600  # seconds asked for: the URL is used at once, a short life leaks less
_MAX_ANSWER = 64 * 1024  # a signing answer is one URL


class SigningError(Exception):
    """No signed URL could be had; ``retryable`` says whether a later attempt may get one."""

    def __init__(self, message: str, *, retryable: bool) -> None:
        super().__init__(message)
        self.message = message
        self.retryable = retryable


def is_fal_media(url: str, hosts: tuple[str, ...]) -> bool:
    """True for a URL on one of `hosts` or their subdomains (`fal.media` covers
    `v3b.fal.media`)."""
    host = (urlsplit(url).hostname or "").rstrip(".").lower()
    return any(host == h or host.endswith("." + h) for h in (h.lower() for h in hosts))


class FalMediaSigner:
    """A client of fal's storage signing API. ``key`` None: nothing can be signed, and the
    error says so (`has_key`)."""

    def __init__(
        self,
        sign_url: str,
        hosts: tuple[str, ...],
        key: str | None,
        *,
        timeout: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.sign_url = sign_url
        self.hosts = hosts
        self._key = key or None
        self._timeout = timeout
        self._transport = transport
        self._client: httpx.AsyncClient | None = None

    def __repr__(self) -> str:  # never shows the key
        return f"FalMediaSigner({self.sign_url!r}, hosts={self.hosts!r})"

    @property
    def has_key(self) -> bool:
        return self._key is not None

    def applies(self, url: str) -> bool:
        return is_fal_media(url, self.hosts)

    async def signed_url(self, url: str) -> str:
        """A signed URL for `url`; SigningError when fal will not give one."""
        if self._key is None:
            raise SigningError("FAL_KEY is not set", retryable=False)
        # fal signs the file's own URL: any query (an old signature) is left off.
        parts = urlsplit(url)
        plain = parts._replace(query="", fragment="").geturl()
        target = f"{self.sign_url}?{urlencode({'url': plain})}"
        try:
            response = await self._http().post(
                target,
                json={"expiration_seconds": SIGNED_FOR},
                headers={"Authorization": f"Key {self._key}"},
            )
        except httpx.HTTPError as exc:
            raise SigningError(
                f"fal's storage signing API ({self._where()}) could not be reached: "
                f"{type(exc).__name__}",
                retryable=True,
            ) from None
        return self._signed_from(response)

    def _signed_from(self, response: httpx.Response) -> str:
        status = response.status_code
        where = f"fal's storage signing API ({self._where()})"
        if status in (401, 403):
            raise SigningError(
                f"{where} refused FAL_KEY (HTTP {status}; the key needs the assets:read "
                "permission)",
                retryable=False,
            )
        if status == 404:
            raise SigningError(f"{where} does not know the file (HTTP 404)", retryable=False)
        if status in (408, 429) or status >= 500:
            raise SigningError(f"{where} answered HTTP {status}", retryable=True)
        signed = None
        if status == 200 and len(response.content) <= _MAX_ANSWER:
            try:
                doc = response.json()
                signed = doc.get("signed_url") if isinstance(doc, dict) else None
            except ValueError:
                signed = None
        if not isinstance(signed, str) or not signed.startswith(("https://", "http://")):
            raise SigningError(
                f"{where} answered HTTP {status} without a signed_url", retryable=True
            )
        return signed

    def _where(self) -> str:
        parts = urlsplit(self.sign_url)
        return f"{parts.scheme}://{parts.netloc}{parts.path}"

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(
                timeout=self._timeout, transport=self._transport, verify=trust()
            )
        return self._client

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None
