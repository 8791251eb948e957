"""The emulator's file storage: uploaded and generated files, their access rules, and signed
URLs from a stand-in for fal's storage signing API.

fal's CDN files carry an access rule: `allow` (public), `forbid` (reading answers an error)
or `hide` (the file looks missing). A signed URL from `POST /v1/storage/files/sign?url=...`
(body `{"expiration_seconds": N}`, at most 7 days, with the key) reads it anyway; the
signature travels in the query as `identity=...`, as fal's does.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

ACCESS_RULES = ("allow", "forbid", "hide")
SIGN_PATH = "/v1/storage/files/sign"
MAX_EXPIRATION = 7 * 24 * 3600  # fal's limit for a signed URL
SIGNATURE_PARAM = "identity"


@dataclass(frozen=True)
class StoredFile:
    data: bytes
    content_type: str
    access: str = "allow"


@dataclass(frozen=True)
class Answer:
    status: int
    body: dict[str, Any]


class EmulatedStorage:
    def __init__(self) -> None:
        self.files: dict[str, tuple[bytes, str]] = {}  # "<id>/<name>" -> (bytes, type)
        self.access: dict[str, str] = {}  # "<id>/<name>" -> forbid | hide (allow: absent)
        self._signatures: dict[str, tuple[str, float]] = {}  # token -> (file key, expiry)

    def put(self, key: str, data: bytes, content_type: str, access: str = "allow") -> None:
        self.files[key] = (data, content_type)
        if access != "allow":
            self.access[key] = access

    def read(self, key: str, signature: str | None) -> StoredFile | Answer:
        """The file, or fal's answer when it cannot be read: 404 (missing, or hidden), 403."""
        if key not in self.files:
            return Answer(404, {"detail": "Not found"})
        data, content_type = self.files[key]
        rule = self.access.get(key, "allow")
        if rule != "allow" and not self._valid(signature, key):
            if rule == "hide":
                return Answer(404, {"detail": "Not found"})
            return Answer(403, {"detail": "Access to this file is forbidden"})
        return StoredFile(data, content_type, rule)

    def sign(self, file_url: str | None, body: Any) -> Answer:
        """fal's signing API: a signed URL for one of our files, valid `expiration_seconds`."""
        if not file_url:
            return Answer(422, {"detail": "query parameter url is required"})
        parts = urlsplit(file_url)
        if parts.query:
            return Answer(422, {"detail": "url must not contain query parameters"})
        expiration = body.get("expiration_seconds") if isinstance(body, dict) else None
        if not isinstance(expiration, int) or not 1 <= expiration <= MAX_EXPIRATION:
            return Answer(
                422, {"detail": f"expiration_seconds must be an integer 1..{MAX_EXPIRATION}"}
            )
        key = parts.path.removeprefix("/files/")
        if not parts.path.startswith("/files/") or key not in self.files:
            return Answer(404, {"detail": "File not found"})
        token = secrets.token_urlsafe(24)
        self._signatures[token] = (key, time.time() + expiration)
        return Answer(200, {"signed_url": f"{file_url}?{SIGNATURE_PARAM}={token}"})

    def _valid(self, signature: str | None, key: str) -> bool:
        if not signature or signature not in self._signatures:
            return False
        signed_key, expires = self._signatures[signature]
        return signed_key == key and time.time() < expires
