"""Configuration: embedded defaults, ${ENV} interpolation, paths, and errors naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from receiver.config import ConfigError, config_path_from, embedded_defaults, load_settings
from receiver.config import settings_from_dict as from_dict


def error_key(raw: dict, tmp_path: Path) -> str:
    with pytest.raises(ConfigError) as err:
        from_dict(raw, base_dir=tmp_path)
    return err.value.key


def test_embedded_defaults_use_falhook_data(tmp_path: Path) -> None:
    s = embedded_defaults(tmp_path)
    assert s.sqlite_path() == tmp_path / "falhook-data" / "events.db"
    assert s.sinks["local"].type == "disk" and s.routes["default"].sinks == ("local",)
    assert s.delivery.max_attempts == 12 and s.receiver.timestamp_tolerance == 300


def test_env_vars_are_interpolated_and_unset_ones_name_the_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOOK_URL", "https://hooks.example.com")
    s = from_dict({"receiver": {"public_url": "${HOOK_URL}"}}, base_dir=tmp_path)
    assert s.receiver.public_url == "https://hooks.example.com"
    monkeypatch.delenv("HOOK_URL")
    assert error_key({"receiver": {"public_url": "${HOOK_URL}"}}, tmp_path) == "receiver.public_url"


def test_relative_paths_follow_the_config_file(tmp_path: Path) -> None:
    cfg = tmp_path / "conf" / "falhook.toml"
    cfg.parent.mkdir()
    cfg.write_text('[store]\nurl = "sqlite:///data/ev.db"\n[downloads]\nspool_dir = "sp"\n')
    s = load_settings(cfg)
    assert s.sqlite_path() == cfg.parent / "data" / "ev.db"
    assert s.spool_path == cfg.parent / "sp"
    absolute = from_dict({"store": {"url": "sqlite:////var/x.db"}}, base_dir=tmp_path)
    assert absolute.sqlite_path() == Path("/var/x.db")


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ({"nope": {}}, "[nope]"),
        ({"delivery": {"max_attemps": 3}}, "[delivery].max_attemps"),
        ({"delivery": {"max_attempts": "3"}}, "[delivery].max_attempts"),
        ({"delivery": {"max_attempts": 0}}, "[delivery].max_attempts"),
        ({"delivery": {"backoff_initial": 10, "backoff_max": 5}}, "[delivery].backoff_max"),
        ({"downloads": {"allow_private_hosts": "yes"}}, "[downloads].allow_private_hosts"),
        ({"receiver": {"allowed_user_ids": "u"}}, "[receiver].allowed_user_ids"),
        ({"receiver": {"jwks_url": "ftp://x"}}, "[receiver].jwks_url"),
        ({"store": {"url": "mysql://x"}}, "[store].url"),
        ({"serverless": {"mode": "sometimes"}}, "[serverless].mode"),
        ({"submit": {"upload": "s3"}}, "[submit].upload"),
        ({"submit": {"schemas": {"my/ray": 3}}}, "[submit].schemas"),
        ({"reconcile": {"deadline": 0}}, "[reconcile].deadline"),
        ({"reconcile": {"enabled": "no"}}, "[reconcile].enabled"),
        ({"sinks": {"a": {"root": "x"}}}, "[sinks.a].type"),
        ({"sinks": {"a": {"type": "disk"}}, "routes": {"r": {"sinks": ["b"]}}}, "[routes.r].sinks"),
        ({"sinks": {"a": {"type": "disk"}}, "routes": {"r": {"sinks": []}}}, "[routes.r].sinks"),
        (
            {"sinks": {"a": {"type": "disk"}}, "routes": {"r": {"sinks": ["a", "a"]}}},
            "[routes.r].sinks",
        ),
        ({"sinks": {"a": {"type": "disk", "after": ["zz"]}}}, "[sinks.a].after"),
        ({"sinks": {"a": {"type": "disk", "after": ["a"]}}}, "[sinks.a].after"),
        (
            {"sinks": {"a": {"type": "x", "after": ["b"]}, "b": {"type": "x", "after": ["a"]}}},
            "[sinks.a].after",
        ),
        (
            {
                "sinks": {"a": {"type": "x"}, "b": {"type": "x", "after": ["a"]}},
                "routes": {"r": {"sinks": ["b"]}},
            },
            "[routes.r].sinks",
        ),
        (
            {"routes": {"r": {"sinks": ["a"], "extra": 1}}, "sinks": {"a": {"type": "x"}}},
            "[routes.r].extra",
        ),
    ],
)
def test_mistakes_name_their_key(raw: dict, key: str, tmp_path: Path) -> None:
    assert error_key(raw, tmp_path) == key


def test_submit_and_reconcile_sections_reach_their_modules(tmp_path: Path) -> None:
    from receiver.reconcile import reconcile_settings
    from receiver.submit import submit_settings

    s = from_dict(
        {
            "submit": {"schemas": {"my-org/ray": "text-to-video"}, "upload": "queue"},
            "reconcile": {"deadline": 30, "interval": 5},
        },
        base_dir=tmp_path,
    )
    assert submit_settings(s).schemas == {"my-org/ray": "text-to-video"}
    assert submit_settings(s).upload == "queue"
    assert (reconcile_settings(s).deadline, reconcile_settings(s).interval) == (30.0, 5.0)


def test_config_file_problems_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        load_settings(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[receiver\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(bad)


def test_flag_wins_over_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FALHOOK_CONFIG", "/env.toml")
    assert config_path_from("/flag.toml") == Path("/flag.toml")
    assert config_path_from(None) == Path("/env.toml")
    monkeypatch.setenv("FALHOOK_CONFIG", "")
    assert config_path_from(None) is None
