"""Slack sink: one Block Kit message per event, by incoming webhook or ``chat.postMessage``.

- Once per event: a successful post returns ``{"posted": true, ...}``; the worker hands it back
  in ``ctx.previous`` on later retries and replays, and the sink then posts nothing
  (``falhook events replay --force`` forgets it and posts again). A post whose answer is lost
  (a timeout after Slack accepted it) can still appear twice: Slack offers no idempotency key.
- 429 (HTTP, or ``ratelimited``) is retried after Slack's ``Retry-After``; 5xx and Slack's
  transient errors are retried; the rest (``invalid_payload``, ``no_service``,
  ``channel_not_found``, ``invalid_auth``...) are permanent.
- Slack downloads previews itself; when it cannot (``invalid_blocks``: for example a presigned
  link to a store it cannot reach), the message is sent again at once without previews.

The webhook URL and the bot token are secrets: neither is logged nor put in an error.
"""

from __future__ import annotations

import asyncio
import time
from typing import Annotated, Any

import httpx
from msgspec import Meta

from falhook_sinks.base import DeliveryContext, Permanent, Retryable, Sink, SinkEnv
from falhook_sinks.httpcommon import is_retryable_status, retry_after, short, trust
from falhook_sinks.options import Invalid, SinkOptions
from falhook_sinks.slack_blocks import build_message

_TRANSIENT = frozenset(
    {"ratelimited", "internal_error", "fatal_error", "service_unavailable", "request_timeout"}
)


class SlackOptions(SinkOptions):
    webhook_url: str = ""  # an incoming webhook; or bot_token and channel
    bot_token: str = ""
    channel: str = ""
    api_url: str = "https://slack.com/api"
    image_previews: bool = True
    timeout: Annotated[float, Meta(gt=0)] = 15.0

    def check(self) -> None:
        if self.webhook_url and self.bot_token:
            raise Invalid("bot_token", "set either webhook_url or bot_token (+ channel)")
        if not self.webhook_url and not self.bot_token:
            raise Invalid("webhook_url", "is required (or bot_token and channel)")
        if self.bot_token and not self.channel:
            raise Invalid("channel", "is required with bot_token")
        for option, url in (("webhook_url", self.webhook_url), ("api_url", self.api_url)):
            if url and not url.startswith(("https://", "http://")):
                raise Invalid(option, "must be an https:// URL")


class SlackSink(Sink):
    reads_files = False  # links the files (a stored copy, else fal's URL), never reads them
    options_type = SlackOptions
    shows_posters = True  # a video's preview is its poster: a post cannot add it afterwards

    def __init__(self, name: str, opts: SlackOptions, env: SinkEnv) -> None:
        self.name = name
        self.webhook_url = opts.webhook_url or None
        self.bot_token = opts.bot_token or None
        self.channel = opts.channel or None
        self.api_url = opts.api_url.rstrip("/")
        self.previews = opts.image_previews
        self.timeout = opts.timeout
        self._client: httpx.AsyncClient | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def _get_client(self) -> httpx.AsyncClient:
        loop = asyncio.get_running_loop()
        if self._client is None or self._loop is not loop:
            self._client = httpx.AsyncClient(
                timeout=httpx.Timeout(self.timeout, connect=min(self.timeout, 10.0)),
                follow_redirects=False,
                verify=trust(),
            )
            self._loop = loop
        return self._client

    async def aclose(self) -> None:
        client, self._client = self._client, None
        if client is not None and self._loop is asyncio.get_running_loop():
            await client.aclose()

    async def deliver(self, ctx: DeliveryContext) -> dict[str, Any]:
        if ctx.previous and ctx.previous.get("posted"):
            ctx.log.info("slack message already posted; not posting again")
            return ctx.previous
        message = build_message(ctx, previews=self.previews)
        try:
            result = await self._post(message)
        except _BlocksRefused:
            ctx.log.warning("slack refused the previews; posting without them")
            result = await self._post(build_message(ctx, previews=False))
        ctx.log.info("slack message posted", via=result["via"])
        return {"posted": True, "posted_at": int(time.time()), **result}

    async def _post(self, message: dict[str, Any]) -> dict[str, Any]:
        if self.bot_token:
            return await self._chat_post(message)
        return await self._webhook_post(message)

    async def _send(
        self, url: str, body: dict[str, Any], headers: dict[str, str]
    ) -> httpx.Response:
        try:
            return await self._get_client().post(url, json=body, headers=headers)
        except httpx.TimeoutException as exc:
            raise Retryable(f"slack timed out ({type(exc).__name__})") from None
        except httpx.TransportError as exc:
            raise Retryable(f"slack unreachable ({type(exc).__name__})") from None

    async def _webhook_post(self, message: dict[str, Any]) -> dict[str, Any]:
        assert self.webhook_url is not None
        body = {**message, "unfurl_links": False, "unfurl_media": False}
        response = await self._send(self.webhook_url, body, {})
        text = short(response.text, 100)
        if response.status_code == 200:
            return {"via": "webhook"}
        if response.status_code == 429 or is_retryable_status(response.status_code):
            raise Retryable(
                f"slack webhook answered {response.status_code}",
                retry_after=retry_after(response.headers.get("retry-after")),
            )
        if "invalid_blocks" in text and _has_previews(message):
            raise _BlocksRefused
        raise Permanent(f"slack webhook answered {response.status_code}: {text or 'no reason'}")

    async def _chat_post(self, message: dict[str, Any]) -> dict[str, Any]:
        body = {**message, "channel": self.channel, "unfurl_links": False, "unfurl_media": False}
        headers = {"authorization": f"Bearer {self.bot_token}"}
        response = await self._send(f"{self.api_url}/chat.postMessage", body, headers)
        wait = retry_after(response.headers.get("retry-after"))
        if response.status_code == 429 or is_retryable_status(response.status_code):
            raise Retryable(
                f"slack chat.postMessage answered {response.status_code}", retry_after=wait
            )
        try:
            doc = response.json()
        except ValueError:
            doc = None
        if not isinstance(doc, dict):
            raise Permanent(f"slack chat.postMessage answered {response.status_code}, not JSON")
        if doc.get("ok") is True:
            return {"via": "chat.postMessage", "channel": doc.get("channel"), "ts": doc.get("ts")}
        error = short(str(doc.get("error") or "unknown_error"), 100)
        if error in _TRANSIENT:
            raise Retryable(f"slack chat.postMessage: {error}", retry_after=wait)
        if error == "invalid_blocks" and _has_previews(message):
            raise _BlocksRefused
        raise Permanent(f"slack chat.postMessage: {error}")


class _BlocksRefused(Exception):
    """Slack refused blocks it had to fetch (image previews)."""


def _has_previews(message: dict[str, Any]) -> bool:
    return any(b.get("type") == "image" for b in message.get("blocks", []))
