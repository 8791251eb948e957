"""Slack sink against a loopback stand-in that answers as Slack's documented APIs do."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from falhook_sinks.base import OptionError, Permanent, Retryable, SinkEnv
from falhook_sinks.registry import construct
from falhook_sinks.slack import SlackSink
from tests.support.sink_ctx import local_file, make_ctx
from tests.support.slack_stub import HOOK_PATH, TOKEN, SlackStub, block_problems

STORED = "http://127.0.0.1:9/bucket/fal/reframe/req-123/clip.mp4?X-Amz-Signature=abc"


def webhook_sink(slack: SlackStub, **options: Any) -> SlackSink:
    opts = {"webhook_url": slack.webhook_url, **options}
    return construct(SlackSink, "team", opts, SinkEnv(base_dir=Path(".")))


def bot_sink(slack: SlackStub, **options: Any) -> SlackSink:
    opts = {"bot_token": TOKEN, "channel": "#renders", "api_url": slack.api_url, **options}
    return construct(SlackSink, "team", opts, SinkEnv(base_dir=Path(".")))


async def deliver(sink: SlackSink, ctx: Any) -> dict[str, Any]:
    try:
        return await sink.deliver(ctx)
    finally:
        await sink.aclose()


async def test_exact_message_posted_to_the_webhook(tmp_path: Path, slack: SlackStub) -> None:
    video = local_file(tmp_path, "video", "clip.mp4", b"v" * 5_242_880, "video/mp4")
    image = local_file(tmp_path, "images[0]", "frame.png", b"p" * 2048, "image/png")
    outputs = {"archive": {"objects": {"video": {"bucket": "b", "key": "k", "url": STORED}}}}
    out = await deliver(webhook_sink(slack), make_ctx([video, image], outputs=outputs))

    assert out["posted"] is True and out["via"] == "webhook"
    [post] = slack.posts()
    assert post.path == HOOK_PATH
    assert post.headers["content-type"] == "application/json"
    assert post.json == {
        "text": "fal request done · reframe (req-123)",
        "unfurl_links": False,
        "unfurl_media": False,
        "blocks": [
            {
                "type": "header",
                "text": {"type": "plain_text", "text": "fal request done · reframe"},
            },
            {
                "type": "section",
                "fields": [
                    {"type": "mrkdwn", "text": "*Route*\nreframe"},
                    {"type": "mrkdwn", "text": "*Endpoint*\nluma/agent/ray/v3.2/reframe"},
                    {"type": "mrkdwn", "text": "*Status*\nOK"},
                    {"type": "mrkdwn", "text": "*Request*\nreq-123"},
                ],
            },
            {
                "type": "section",
                "text": {
                    "type": "mrkdwn",
                    "text": f"*<{STORED}|clip.mp4>* · 5.0 MiB · video/mp4 · stored copy  `video`",
                },
            },
            {
                "type": "section",
                "text": {
                    "type": "mrkdwn",
                    "text": f"*<{image.url}|frame.png>* · 2.0 KiB · image/png  `images[0]`",
                },
            },
            {"type": "image", "image_url": image.url, "alt_text": "frame.png"},
            {
                "type": "context",
                "elements": [{"type": "mrkdwn", "text": "falhook · received 2026-11-23T19:12:29Z"}],
            },
        ],
    }


async def test_error_event_shows_the_error_escaped_and_truncated(
    tmp_path: Path, slack: SlackStub
) -> None:
    error = "<!channel> & <@U123> " + "x" * 10_000
    await deliver(webhook_sink(slack), make_ctx([], status="ERROR", error=error, endpoint=None))
    doc = slack.posts()[0].json
    assert block_problems(doc, set()) is None
    header, fields, err = doc["blocks"][:3]
    assert header["text"]["text"] == "fal request failed · reframe"
    assert {"type": "mrkdwn", "text": "*Endpoint*\nunknown"} in fields["fields"]
    text = err["text"]["text"]
    assert text.startswith("*Error*\n```&lt;!channel&gt; &amp; &lt;@U123&gt; xxx")
    assert text.endswith("x…```")
    assert len(text) <= 3000
    assert "<!channel>" not in doc["text"] and len(doc["text"]) <= 3000


async def test_429_retry_after_is_honoured(slack: SlackStub) -> None:
    slack.fail_next(429, "rate limited", Retry_After="30")
    sink = webhook_sink(slack)
    with pytest.raises(Retryable) as err:
        await deliver(sink, make_ctx([]))
    assert err.value.retry_after == 30
    out = await deliver(sink, make_ctx([], attempt=2))
    assert out["posted"] is True
    assert len(slack.posts()) == 2  # the refused one and the accepted one


async def test_one_post_per_event_across_a_replay(slack: SlackStub) -> None:
    sink = webhook_sink(slack)
    first = await deliver(sink, make_ctx([]))
    replayed = await deliver(sink, make_ctx([], previous=first, attempt=1))
    assert replayed == first
    assert len(slack.posts()) == 1
    forced = await deliver(sink, make_ctx([], previous=None))  # replay --force
    assert forced["posted"] is True
    assert len(slack.posts()) == 2


@pytest.mark.parametrize(
    ("status", "body", "kind"),
    [
        (400, "invalid_payload", Permanent),
        (403, "action_prohibited", Permanent),
        (404, "no_service", Permanent),
        (410, "channel_is_archived", Permanent),
        (500, "rollup_error", Retryable),
        (503, "", Retryable),
    ],
)
async def test_webhook_errors(
    slack: SlackStub, status: int, body: str, kind: type[Exception]
) -> None:
    slack.fail_next(status, body)
    with pytest.raises(kind) as err:
        await deliver(webhook_sink(slack), make_ctx([]))
    assert str(status) in str(err.value)
    if kind is Permanent:
        assert body in str(err.value)
    assert HOOK_PATH not in str(err.value)  # the webhook URL is a secret


async def test_unknown_hook_is_permanent_no_service(slack: SlackStub) -> None:
    sink = construct(
        SlackSink,
        "team",
        {"webhook_url": f"http://127.0.0.1:{slack.port}/services/T0/B0/wrong"},
        SinkEnv(base_dir=Path(".")),
    )
    with pytest.raises(Permanent, match="404: no_service"):
        await deliver(sink, make_ctx([]))


async def test_unreachable_preview_is_dropped_and_posted_again(
    tmp_path: Path, slack: SlackStub
) -> None:
    image = local_file(tmp_path, "image", "a.png", b"png", "image/png")
    slack.unreachable_images.add(image.url)
    out = await deliver(webhook_sink(slack), make_ctx([image]))
    assert out["posted"] is True
    first, second = slack.posts()
    assert any(b["type"] == "image" for b in first.json["blocks"])
    assert not any(b["type"] == "image" for b in second.json["blocks"])


async def test_many_files_stay_within_block_limits(tmp_path: Path, slack: SlackStub) -> None:
    files = [
        local_file(tmp_path, f"images[{i}]", f"f{i}.png", b"x", "image/png") for i in range(60)
    ]
    await deliver(webhook_sink(slack), make_ctx(files))
    doc = slack.posts()[0].json
    assert block_problems(doc, set()) is None
    assert len(doc["blocks"]) == 50  # 2 + 23 files x (line + preview) + "more" + context
    assert doc["blocks"][-2]["text"]["text"] == "…and 37 more file(s), not listed"


async def test_huge_content_type_is_cut_to_fit(tmp_path: Path, slack: SlackStub) -> None:
    f = local_file(tmp_path, "video", "v.mp4", b"x", "video/" + "<x>" * 5000)
    out = await deliver(webhook_sink(slack), make_ctx([f]))
    assert out["posted"] is True
    [post] = slack.posts()  # accepted at once: within Block Kit's limits
    line = post.json["blocks"][2]["text"]["text"]
    assert block_problems(post.json, set()) is None
    assert "video/&lt;x&gt;" in line and "…" in line and "<x>" not in line


async def test_hostile_file_name_cannot_inject_links(tmp_path: Path, slack: SlackStub) -> None:
    f = local_file(tmp_path, "video", "v.mp4", b"x", "video/mp4")
    f = type(f)(**{**f.__dict__, "file_name": "<https://evil.example|click> *me*"})
    await deliver(webhook_sink(slack), make_ctx([f]))
    line = slack.posts()[0].json["blocks"][2]["text"]["text"]
    assert "<https://evil" not in line
    assert "&lt;https://evil.example|click&gt;" in line


async def test_chat_post_message_with_a_bot_token(slack: SlackStub) -> None:
    out = await deliver(bot_sink(slack), make_ctx([]))
    assert out == {
        "posted": True,
        "posted_at": out["posted_at"],
        "via": "chat.postMessage",
        "channel": "C0123ABCD",
        "ts": "1700000000.000001",
    }
    [post] = slack.posts()
    assert post.path == "/api/chat.postMessage"
    assert post.headers["authorization"] == f"Bearer {TOKEN}"
    assert post.json["channel"] == "#renders"
    assert post.json["blocks"][0]["type"] == "header"


async def test_chat_post_message_rate_limit_and_errors(slack: SlackStub) -> None:
    slack.fail_next(429, {"ok": False, "error": "ratelimited"}, Retry_After="12")
    with pytest.raises(Retryable) as err:
        await deliver(bot_sink(slack), make_ctx([]))
    assert err.value.retry_after == 12
    with pytest.raises(Permanent, match="channel_not_found"):
        await deliver(bot_sink(slack, channel="#nowhere"), make_ctx([]))
    with pytest.raises(Permanent, match="invalid_auth") as err2:
        await deliver(bot_sink(slack, bot_token="xoxb-wrong"), make_ctx([]))
    assert "xoxb" not in str(err2.value)
    slack.fail_next(200, {"ok": False, "error": "internal_error"})
    with pytest.raises(Retryable, match="internal_error"):
        await deliver(bot_sink(slack), make_ctx([]))


@pytest.mark.parametrize(
    ("options", "key"),
    [
        ({}, "[sinks.team].webhook_url"),
        ({"webhook_url": "ftp://x"}, "[sinks.team].webhook_url"),
        ({"bot_token": "xoxb-1"}, "[sinks.team].channel"),
        ({"webhook_url": "https://h", "bot_token": "t", "channel": "c"}, "[sinks.team].bot_token"),
        ({"webhook_url": "https://h", "image_previews": "yes"}, "[sinks.team].image_previews"),
        ({"webhook_url": "https://h", "chanel": "c"}, "[sinks.team].chanel"),
    ],
)
def test_bad_options_are_named(options: dict[str, Any], key: str) -> None:
    with pytest.raises(OptionError) as err:
        construct(SlackSink, "team", options, SinkEnv(base_dir=Path(".")))
    assert err.value.key == key
