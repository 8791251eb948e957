"""The console's pure rules: the login limiter's windows, which public URLs are loopback,
where a login may send the browser, and the path below a mount's root_path."""

from __future__ import annotations

from pathlib import Path

import pytest

from falhook.config import Settings, settings_from_dict
from falhook.console.exposure import is_loopback_url, unguarded_reason
from falhook.console.limits import LoginLimiter
from falhook.console.paths import safe_next
from falhook.intake.endpoint import route_path


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_client_is_locked_after_its_limit_until_the_oldest_failure_leaves_the_window() -> None:
    clock = Clock()
    limiter = LoginLimiter(window=60, per_client=3, overall=100, clock=clock)
    for _ in range(3):
        assert limiter.retry_after("a") is None
        limiter.failed("a")
        clock.now += 10  # failures at 1000, 1010, 1020
    assert limiter.retry_after("a") == 30  # now 1030: the first leaves at 1060
    assert limiter.retry_after("b") is None
    clock.now = 1060.5
    assert limiter.retry_after("a") is None
    limiter.failed("a")
    assert limiter.retry_after("a") == 10  # 1010 leaves at 1070


def test_many_clients_lock_everyone_and_a_success_forgives_only_its_client() -> None:
    clock = Clock()
    limiter = LoginLimiter(window=60, per_client=5, overall=4, clock=clock)
    for client in "abcd":
        limiter.failed(client)
    assert limiter.retry_after("z") == 60
    limiter.succeeded("a")
    assert limiter.retry_after("a") == 60  # the overall limit still holds
    clock.now += 60
    assert limiter.retry_after("z") is None


def test_the_limiter_remembers_a_bounded_number_of_clients() -> None:
    limiter = LoginLimiter(window=60, per_client=1, overall=10_000, clients=3, clock=Clock())
    for client in "abcd":
        limiter.failed(client)
    assert limiter.retry_after("a") is None  # forgotten: the least recently failed
    assert all(limiter.retry_after(c) == 60 for c in "bcd")


@pytest.mark.parametrize(
    ("url", "loopback"),
    [
        ("http://127.0.0.1:8000", True),
        ("http://127.1.2.3", True),
        ("http://[::1]:8000", True),
        ("http://localhost:8000", True),
        ("http://app.localhost", True),
        ("https://hooks.example.com", False),
        ("http://0.0.0.0:8000", False),
        ("http://10.0.0.5:8000", False),
        ("http://localhost.example.com", False),
    ],
)
def test_loopback_public_urls(url: str, loopback: bool) -> None:
    assert is_loopback_url(url) is loopback


def test_only_a_public_console_without_a_token_is_unguarded(tmp_path: Path) -> None:
    def settings(**sections: dict[str, str]) -> Settings:
        return settings_from_dict(dict(sections), base_dir=tmp_path)

    public = {"public_url": "https://hooks.example.com"}
    assert unguarded_reason(settings(receiver=public)) is not None
    assert unguarded_reason(settings(receiver=public, console={"token": "t" * 24})) is None
    assert unguarded_reason(settings()) is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("/fal/console/overview", "/fal/console/overview"),
        ("/fal/console", "/fal/console"),
        ("/fal/console?state=dead", "/fal/console?state=dead"),
        ("/fal/consolex", "/fal/console/"),
        ("/console/", "/fal/console/"),
        ("https://evil.example/fal/console/", "/fal/console/"),
        ("//evil.example/fal/console/", "/fal/console/"),
        ("", "/fal/console/"),
        (None, "/fal/console/"),
    ],
)
def test_a_login_goes_on_only_to_a_console_path(value: str | None, expected: str) -> None:
    assert safe_next(value, "/fal/console") == expected


@pytest.mark.parametrize(
    ("path", "root", "expected"),
    [
        ("/console/", "", "/console/"),
        ("/fal/console/", "/fal", "/console/"),
        ("/fal", "/fal", ""),
        ("/falx/console", "/fal", "/falx/console"),
        ("/console/", "/fal", "/console/"),  # a server that strips the prefix itself
    ],
)
def test_the_route_path_is_below_the_root_path(path: str, root: str, expected: str) -> None:
    assert route_path({"type": "http", "path": path, "root_path": root}) == expected
