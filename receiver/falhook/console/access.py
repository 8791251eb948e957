"""Who may use the console, and which POSTs are really the operator's.

- With `[console] token`: the API takes `Authorization: Bearer <token>`; pages take a session
  cookie set by the login form (HttpOnly, SameSite=Strict, signed, expiring). The cookie is
  an expiry and its HMAC under a key derived from the token: changing the token logs
  everyone out, and nothing is kept on the server.
- Without a token: loopback clients only. A request that came through a proxy (it carries
  X-Forwarded-For, Forwarded or X-Real-IP) is not taken as loopback, whatever the socket
  says; and a console whose `[receiver].public_url` is not a loopback address is not served
  at all without a token (exposure.py).
- CSRF: a POST made by a browser (it carries a cookie, Origin or Sec-Fetch-Site) must come
  from the console's own origin and carry the CSRF token of its session (a form field or
  the X-CSRF-Token header). Bearer-token calls need neither: browsers never add them.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
import time
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit

from starlette.requests import HTTPConnection

from falhook.config import ConsoleSettings

SESSION_COOKIE = "falhook_console"
BROWSER_COOKIE = "falhook_browser"  # without a token: what the CSRF token is bound to
Auth = Literal["bearer", "session", "loopback"]
SAFE_SITES = frozenset({"same-origin", "none"})


@dataclass(frozen=True)
class Verdict:
    """How a request is authenticated, or why it is not: `status` 401 (no or wrong
    credentials) or 403 (a client the console does not answer)."""

    auth: Auth | None
    status: int = 200
    reason: str = ""


class Access:
    def __init__(self, settings: ConsoleSettings) -> None:
        self.token = settings.token
        self.session_seconds = settings.session_hours * 3600
        secret = self.token.encode() if self.token else secrets.token_bytes(32)
        # Without a token, a key of this process: CSRF tokens last until it restarts.
        self.key = hmac.new(secret, b"falhook-console-session", hashlib.sha256).digest()

    # --- who -------------------------------------------------------------------------------

    def check(self, request: HTTPConnection) -> Verdict:
        if not self.token:
            if is_loopback(request):
                return Verdict("loopback")
            return Verdict(
                None, 403, "the console answers only loopback clients until [console].token is set"
            )
        header = request.headers.get("authorization", "")
        if header.lower().startswith("bearer "):
            if self.token_matches(header[7:].strip()):
                return Verdict("bearer")
            return Verdict(None, 401, "wrong token")
        if self.session_valid(request.cookies.get(SESSION_COOKIE, "")):
            return Verdict("session")
        return Verdict(None, 401, "log in, or send Authorization: Bearer <token>")

    def token_matches(self, given: str) -> bool:
        return bool(self.token) and hmac.compare_digest(given.encode(), self.token.encode())

    # --- sessions ----------------------------------------------------------------------------

    def _sign(self, text: str) -> str:
        return hmac.new(self.key, text.encode(), hashlib.sha256).hexdigest()

    def new_session(self) -> str:
        expires = str(int(time.time() + self.session_seconds))
        nonce = secrets.token_hex(8)
        return f"{expires}.{nonce}.{self._sign(f'{expires}.{nonce}')}"

    def session_valid(self, value: str) -> bool:
        parts = value.split(".")
        if len(parts) != 3 or not parts[0].isdigit():
            return False
        expires, nonce, mac = parts
        if int(expires) < time.time():
            return False
        return hmac.compare_digest(mac, self._sign(f"{expires}.{nonce}"))

    # --- CSRF --------------------------------------------------------------------------------

    def binding(self, request: HTTPConnection) -> str:
        """What a CSRF token is bound to: the session, or the browser's own cookie."""
        return request.cookies.get(SESSION_COOKIE) or request.cookies.get(BROWSER_COOKIE) or ""

    def csrf_token(self, binding: str) -> str:
        return self._sign(f"csrf:{binding}") if binding else ""

    def csrf_refusal(self, request: HTTPConnection, auth: Auth, given: str | None) -> str | None:
        """Why this POST is refused as cross-site, or None when it may go ahead."""
        if auth == "bearer":
            return None
        origin = request.headers.get("origin")
        site = request.headers.get("sec-fetch-site")
        if origin is not None and not same_origin(origin, request):
            return "cross-origin request refused"
        if site is not None and site not in SAFE_SITES:
            return "cross-site request refused"
        browser = origin is not None or site is not None or bool(request.cookies)
        if not browser and auth == "loopback":
            return None  # curl on the machine itself: nothing a web page could forge
        expected = self.csrf_token(self.binding(request))
        if not expected or not given or not hmac.compare_digest(given, expected):
            return "missing or wrong CSRF token (reload the page)"
        return None


def same_origin(origin: str, request: HTTPConnection) -> bool:
    host = request.headers.get("host", "")
    try:
        return urlsplit(origin).netloc.lower() == host.lower() and bool(host)
    except ValueError:
        return False


PROXY_HEADERS = ("x-forwarded-for", "forwarded", "x-real-ip")


def is_loopback(request: HTTPConnection) -> bool:
    if any(name in request.headers for name in PROXY_HEADERS):
        return False
    client = request.client
    if client is None:
        return False
    try:
        return ipaddress.ip_address(client.host).is_loopback
    except ValueError:
        return False
