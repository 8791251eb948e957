"""What falhook's contract promises, written once for the tests that check it."""

from __future__ import annotations

# The keys every EVENT document has (`events list|show --json`, event.json, the console API;
# built by falhook.store.document). Extra keys may come alongside them.
EVENT_KEYS = {
    "request_id",
    "route",
    "fal_status",
    "error",
    "payload_error",
    "received_at",
    "state",
    "deliveries",
    "files",
}
