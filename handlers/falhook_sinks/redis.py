"""Redis Streams sink: one ``XADD`` entry per event, fields ``request_id``, ``route``, ``event``
(the event JSON) and the propagation headers (``traceparent``).

Exactly one entry per event. The entry and a marker key, ``falhook:published:<stream>:<sink>:
<request_id>`` holding the entry id for ``idempotency_ttl`` seconds, are written by one Lua
script: atomically, so no crash can leave one without the other. An attempt that follows one
which may have published (see falhook_sinks.messaging) finds the marker and adds nothing; a
first attempt, including the first of ``events replay --force``, adds an entry and resets the
marker, which is how a forced replay publishes again.

The events the worker hands over together (``deliver_batch``) go in one pipeline: one round
trip for all their scripts, each entry's answer its own event's. redis-py's asyncio client
keeps a connection pool that reconnects by itself; its own retries are off (a retried script
whose answer was lost would add a second entry): the worker retries.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Annotated, Any

from msgspec import Meta

from falhook_sinks.base import BatchResult, DeliveryContext, Permanent, Retryable, SinkEnv
from falhook_sinks.messaging import (
    Connection,
    PublishMode,
    QueueSink,
    SecretUrl,
    encode,
    event_message,
)
from falhook_sinks.options import Invalid, SinkOptions
from falhook_sinks.templates import check_template, render

# KEYS: stream, marker. ARGV: mode ("fresh" | "resume"), marker TTL, MAXLEN ("" for none),
# create ("1" | "0"), then the entry's field/value pairs.
# Returns {1, id} when added, {0, id} when the marker says it already was, {2, ""} when the
# stream does not exist and may not be created.
_SCRIPT = """
if ARGV[1] == 'resume' then
  local id = redis.call('GET', KEYS[2])
  if id then return {0, id} end
end
local cmd = {'XADD', KEYS[1]}
if ARGV[4] == '0' then cmd[#cmd + 1] = 'NOMKSTREAM' end
if ARGV[3] ~= '' then
  cmd[#cmd + 1] = 'MAXLEN'; cmd[#cmd + 1] = '~'; cmd[#cmd + 1] = ARGV[3]
end
cmd[#cmd + 1] = '*'
for i = 5, #ARGV do cmd[#cmd + 1] = ARGV[i] end
local id = redis.call(unpack(cmd))
if not id then return {2, ''} end
redis.call('SET', KEYS[2], id, 'EX', ARGV[2])
return {1, id}
"""

_SCRIPT_SHA = hashlib.sha1(_SCRIPT.encode(), usedforsecurity=False).hexdigest()  # EVALSHA's name
ScriptCall = tuple[list[Any], list[Any]]  # the script's keys and arguments
ENTRY_FIELDS = ("request_id", "route", "event")

# Server answers that say "later": loading, failover, out of memory, busy scripts, cluster moves.
_RETRYABLE_PREFIXES = (
    "LOADING",
    "READONLY",
    "OOM",
    "BUSY",
    "MASTERDOWN",
    "TRYAGAIN",
    "CLUSTERDOWN",
)


class RedisOptions(SinkOptions):
    url: str  # redis://[user:password@]host:6379/0, rediss:// for TLS, unix:///path
    stream: str = "falhook:{route}"
    maxlen: Annotated[int, Meta(ge=1)] | None = None  # approximate trim (MAXLEN ~)
    create_stream: bool = True  # false: a missing stream is an error (NOMKSTREAM)
    idempotency_ttl: Annotated[int, Meta(ge=60)] = 86_400  # seconds a marker is kept
    timeout: Annotated[float, Meta(gt=0)] = 10.0  # connect and reply, seconds

    def check(self) -> None:
        if not self.url.startswith(("redis://", "rediss://", "unix://")):
            raise Invalid("url", "must be a redis://, rediss:// or unix:// URL")
        check_template(self.stream, "stream")
        if not self.stream.strip():
            raise Invalid("stream", "must not be empty")


class RedisSink(QueueSink[RedisOptions]):
    options_type = RedisOptions
    client = ("redis", "redis", "redis-py")
    kind = "redis entry"

    def __init__(self, name: str, opts: RedisOptions, env: SinkEnv) -> None:
        super().__init__(name, opts, env)
        self.url = SecretUrl(opts.url)
        # The client is a pool that reconnects by itself: always usable once made.
        self._client: Connection[Any] = Connection(self._open, _close, lambda _: True)

    async def _open(self) -> Any:
        """A client (a pool) bound to this event loop, its own retries off."""
        from redis.asyncio import Redis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        return Redis.from_url(
            self.opts.url,
            socket_connect_timeout=self.opts.timeout,
            socket_timeout=self.opts.timeout,
            retry=Retry(NoBackoff(), 0),
            client_name=f"falhook-{self.name}",
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    def marker_key(self, stream: str, request_id: str) -> str:
        return f"falhook:published:{stream}:{self.name}:{request_id}"

    async def publish_batch(
        self, batch: Sequence[tuple[DeliveryContext, PublishMode]]
    ) -> list[BatchResult]:
        """Every event's script in one pipelined round trip; each entry's answer (added,
        already there, or an error) is its own event's."""
        streams = [render(self.opts.stream, ctx.event) for ctx, _ in batch]
        calls = [
            self._script_call(ctx, stream, mode)
            for (ctx, mode), stream in zip(batch, streams, strict=True)
        ]
        try:
            client = await self._client.get()
            answers = await self._run_scripts(client, calls)
        except Exception as exc:
            return [self._classify(exc, stream) for stream in streams]
        return [
            self._outcome(ctx, stream, answer)
            for (ctx, _), stream, answer in zip(batch, streams, answers, strict=True)
        ]

    def _script_call(self, ctx: DeliveryContext, stream: str, mode: PublishMode) -> ScriptCall:
        """The script's keys and arguments for this event's entry."""
        event = ctx.event
        fields: list[str | bytes] = [
            "request_id",
            event.request_id,
            "route",
            event.route,
            "event",
            encode(event_message(ctx)),
        ]
        for header, value in ctx.headers.items():
            if header not in ENTRY_FIELDS:
                fields += [header, value]
        args = [
            mode,
            self.opts.idempotency_ttl,
            self.opts.maxlen or "",
            "1" if self.opts.create_stream else "0",
            *fields,
        ]
        return [stream, self.marker_key(stream, event.request_id)], args

    async def _run_scripts(
        self, client: Any, calls: list[tuple[list[Any], list[Any]]]
    ) -> list[Any]:
        """EVALSHA of each call in one pipeline (no MULTI: each event stands alone); the
        script is loaded and those calls sent again when the server does not know it (first
        use, or after a restart: a NOSCRIPT call ran nothing)."""
        from redis.exceptions import NoScriptError

        answers = await self._pipeline(client, calls)
        missing = [i for i, answer in enumerate(answers) if isinstance(answer, NoScriptError)]
        if missing:
            await client.script_load(_SCRIPT)
            again = await self._pipeline(client, [calls[i] for i in missing])
            for i, answer in zip(missing, again, strict=True):
                answers[i] = answer
        return answers

    async def _pipeline(self, client: Any, calls: list[ScriptCall]) -> list[Any]:
        pipe = client.pipeline(transaction=False)
        for keys, args in calls:
            pipe.evalsha(_SCRIPT_SHA, len(keys), *keys, *args)
        return list(await pipe.execute(raise_on_error=False))

    def _outcome(self, ctx: DeliveryContext, stream: str, answer: Any) -> BatchResult:
        if isinstance(answer, Exception):
            return self._classify(answer, stream)
        code, entry_id = answer
        if code == 2:
            return Permanent(
                f"{self._target(stream)}: the stream does not exist (create_stream = false)"
            )
        entry = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
        added = code == 1
        if not added:
            ctx.log.info("redis entry already there; not adding again", entry=entry)
        return {"published": True, "stream": stream, "entry_id": entry, "added": added}

    def _target(self, stream: str) -> str:
        return f"redis stream {stream!r} on {self.url.shown}"

    def _classify(self, exc: Exception, stream: str) -> Retryable | Permanent:
        from redis import exceptions as rx

        detail = self.url.scrub(f"{type(exc).__name__}: {exc}")
        message = f"{self._target(stream)}: {detail}"
        if isinstance(exc, rx.AuthenticationError | rx.AuthorizationError | rx.NoPermissionError):
            return Permanent(message)
        if isinstance(exc, rx.ConnectionError | rx.TimeoutError | OSError):
            return Retryable(message)
        if isinstance(exc, rx.ResponseError):
            text = str(exc).lstrip()
            if text.startswith(("NOAUTH", "WRONGPASS", "NOPERM")):
                return Permanent(message)
            if isinstance(exc, rx.OutOfMemoryError | rx.ReadOnlyError) or text.startswith(
                _RETRYABLE_PREFIXES
            ):
                return Retryable(message)
            return Permanent(message)  # WRONGTYPE, unknown command (a Redis before 5.0), ...
        return Retryable(message)


async def _close(client: Any) -> None:
    await client.aclose()
