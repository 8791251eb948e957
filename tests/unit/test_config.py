"""Configuration: embedded defaults, ${ENV} interpolation, paths, and errors naming the key."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from falhook.config import ConfigError, config_path_from, embedded_defaults, load_settings
from falhook.config import settings_from_dict as from_dict


def error_key(raw: dict[str, Any], tmp_path: Path) -> str:
    with pytest.raises(ConfigError) as err:
        from_dict(raw, base_dir=tmp_path)
    assert str(err.value).startswith(err.value.key + ": ")  # the message leads with the key
    return err.value.key


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


# --- embedded defaults -----------------------------------------------------------------------


def test_embedded_defaults_store_events_in_sqlite_under_falhook_data(tmp_path: Path) -> None:
    s = embedded_defaults(tmp_path)
    assert s.store.url.startswith("sqlite:///")
    assert s.sqlite_path() == tmp_path / "falhook-data" / "events.db"


def test_embedded_defaults_have_a_disk_sink_local_under_falhook_data(tmp_path: Path) -> None:
    local = embedded_defaults(tmp_path).sinks["local"]
    assert local.type == "disk"
    assert embedded_defaults(tmp_path).resolve_path(local.options["root"]) == (
        tmp_path / "falhook-data" / "files"
    )


def test_embedded_defaults_have_one_route_default_to_the_local_sink(tmp_path: Path) -> None:
    routes = embedded_defaults(tmp_path).routes
    assert list(routes) == ["default"] and routes["default"].sinks == ("local",)


def test_loading_no_file_gives_the_embedded_defaults() -> None:
    s = load_settings(None)
    assert s.source == "embedded defaults" and list(s.routes) == ["default"]


def test_contract_defaults_apply_when_a_section_is_absent(tmp_path: Path) -> None:
    s = from_dict({}, base_dir=tmp_path)
    assert s.receiver.jwks_url == "https://rest.alpha.fal.ai/.well-known/jwks.json"
    assert (s.receiver.jwks_refetch_interval, s.receiver.timestamp_tolerance) == (60, 300)
    assert s.receiver.max_body_bytes == 10485760 and s.receiver.allowed_user_ids == ()
    assert (s.delivery.max_attempts, s.delivery.lease_seconds) == (12, 60)
    assert (s.delivery.backoff_initial, s.delivery.backoff_max) == (2.0, 900.0)
    assert s.delivery.concurrency == 8
    assert s.downloads.allow_private_hosts is False
    assert (s.downloads.max_file_bytes, s.downloads.timeout) == (4294967296, 300)


# --- ${ENV} interpolation --------------------------------------------------------------------


def test_a_set_environment_variable_is_interpolated_in_string_values(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOOK_HOST", "hooks.example.com")
    monkeypatch.setenv("SLACK_WEBHOOK_URL", "https://hooks.slack.com/services/T/B/x")
    monkeypatch.setenv("FAL_USER", "user-1")
    s = from_dict(
        {
            "receiver": {
                "public_url": "https://${HOOK_HOST}/base",
                "allowed_user_ids": ["${FAL_USER}"],
            },
            "sinks": {"team": {"type": "slack", "webhook_url": "${SLACK_WEBHOOK_URL}"}},
        },
        base_dir=tmp_path,
    )
    assert s.receiver.public_url == "https://hooks.example.com/base"
    assert s.receiver.allowed_user_ids == ("user-1",)
    assert s.sinks["team"].options["webhook_url"] == "https://hooks.slack.com/services/T/B/x"


def test_an_unset_environment_variable_is_an_error_naming_the_key_and_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SLACK_WEBHOOK_URL", raising=False)
    raw = {"sinks": {"team": {"type": "slack", "webhook_url": "${SLACK_WEBHOOK_URL}"}}}
    with pytest.raises(ConfigError) as err:
        from_dict(raw, base_dir=tmp_path)
    assert "team" in err.value.key and "webhook_url" in err.value.key
    assert "SLACK_WEBHOOK_URL" in str(err.value)


# --- paths -----------------------------------------------------------------------------------


def test_relative_paths_resolve_against_the_config_files_folder(tmp_path: Path) -> None:
    cfg = write(tmp_path / "conf" / "falhook.toml", '[downloads]\nspool_dir = "sp"\n')
    s = load_settings(cfg)
    assert s.base_dir == cfg.parent.resolve()
    assert s.resolve_path("files") == cfg.parent.resolve() / "files"
    assert s.spool_path == cfg.parent.resolve() / "sp"


def test_absolute_paths_stay_absolute(tmp_path: Path) -> None:
    s = from_dict({}, base_dir=tmp_path)
    assert s.resolve_path("/srv/falhook/files") == Path("/srv/falhook/files")


def test_a_relative_sqlite_url_resolves_against_the_config_files_folder(tmp_path: Path) -> None:
    cfg = write(tmp_path / "conf" / "falhook.toml", '[store]\nurl = "sqlite:///data/ev.db"\n')
    assert load_settings(cfg).sqlite_path() == cfg.parent.resolve() / "data" / "ev.db"


def test_a_four_slash_sqlite_url_is_an_absolute_path(tmp_path: Path) -> None:
    s = from_dict({"store": {"url": "sqlite:////var/lib/falhook/ev.db"}}, base_dir=tmp_path)
    assert s.sqlite_path() == Path("/var/lib/falhook/ev.db")


def test_a_postgresql_store_has_no_sqlite_path(tmp_path: Path) -> None:
    s = from_dict({"store": {"url": "postgresql://falhook@db:5432/falhook"}}, base_dir=tmp_path)
    assert s.sqlite_path() is None


# --- mistakes name their key -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ({"nope": {}}, "[nope]"),
        ({"delivery": 3}, "[delivery]"),
        ({"delivery": {"max_attemps": 3}}, "[delivery].max_attemps"),
        ({"receiver": {"port": 8000}}, "[receiver].port"),
    ],
    ids=["unknown section", "section not a table", "unknown key", "unknown receiver key"],
)
def test_unknown_sections_and_keys_name_themselves(
    raw: dict[str, Any], key: str, tmp_path: Path
) -> None:
    assert error_key(raw, tmp_path) == key


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ({"delivery": {"max_attempts": "3"}}, "[delivery].max_attempts"),
        ({"delivery": {"max_attempts": 2.5}}, "[delivery].max_attempts"),
        ({"delivery": {"concurrency": True}}, "[delivery].concurrency"),
        ({"delivery": {"backoff_initial": "2"}}, "[delivery].backoff_initial"),
        ({"receiver": {"timestamp_tolerance": 1.5}}, "[receiver].timestamp_tolerance"),
        ({"receiver": {"public_url": 8000}}, "[receiver].public_url"),
        ({"receiver": {"allowed_user_ids": "user-1"}}, "[receiver].allowed_user_ids"),
        ({"receiver": {"allowed_user_ids": [1]}}, "[receiver].allowed_user_ids"),
        ({"downloads": {"allow_private_hosts": "yes"}}, "[downloads].allow_private_hosts"),
        ({"downloads": {"allow_private_hosts": 0}}, "[downloads].allow_private_hosts"),
        ({"store": {"url": 5}}, "[store].url"),
        ({"submit": {"schemas": {"my/ray": 3}}}, "[submit].schemas"),
        ({"reconcile": {"enabled": "no"}}, "[reconcile].enabled"),
    ],
)
def test_wrong_types_name_their_key(raw: dict[str, Any], key: str, tmp_path: Path) -> None:
    assert error_key(raw, tmp_path) == key


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ({"delivery": {"max_attempts": 0}}, "[delivery].max_attempts"),
        ({"delivery": {"max_attempts": -1}}, "[delivery].max_attempts"),
        ({"delivery": {"lease_seconds": -60}}, "[delivery].lease_seconds"),
        ({"delivery": {"backoff_initial": -2.0}}, "[delivery].backoff_initial"),
        ({"delivery": {"concurrency": -8}}, "[delivery].concurrency"),
        ({"receiver": {"timestamp_tolerance": -300}}, "[receiver].timestamp_tolerance"),
        ({"receiver": {"jwks_refetch_interval": -1}}, "[receiver].jwks_refetch_interval"),
        ({"receiver": {"max_body_bytes": -1}}, "[receiver].max_body_bytes"),
        ({"downloads": {"max_file_bytes": -1}}, "[downloads].max_file_bytes"),
        ({"downloads": {"timeout": -300}}, "[downloads].timeout"),
        ({"reconcile": {"deadline": 0}}, "[reconcile].deadline"),
    ],
)
def test_negative_numbers_name_their_key(raw: dict[str, Any], key: str, tmp_path: Path) -> None:
    assert error_key(raw, tmp_path) == key


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ({"delivery": {"backoff_initial": math.nan}}, "[delivery].backoff_initial"),
        ({"delivery": {"lease_seconds": math.nan}}, "[delivery].lease_seconds"),
        ({"downloads": {"timeout": math.nan}}, "[downloads].timeout"),
    ],
)
def test_nan_is_not_a_number_of_seconds(raw: dict[str, Any], key: str, tmp_path: Path) -> None:
    assert error_key(raw, tmp_path) == key


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ({"serverless": {"mode": "sometimes"}}, "[serverless].mode"),
        ({"submit": {"upload": "s3"}}, "[submit].upload"),
    ],
)
def test_a_value_outside_its_choices_names_its_key(
    raw: dict[str, Any], key: str, tmp_path: Path
) -> None:
    assert error_key(raw, tmp_path) == key


def test_backoff_max_below_backoff_initial_names_backoff_max(tmp_path: Path) -> None:
    raw = {"delivery": {"backoff_initial": 10, "backoff_max": 5}}
    assert error_key(raw, tmp_path) == "[delivery].backoff_max"


@pytest.mark.parametrize(
    "url", ["mysql://falhook@db/falhook", "sqlite://events.db", "events.db", "https://db"]
)
def test_a_bad_store_url_names_store_url(url: str, tmp_path: Path) -> None:
    assert error_key({"store": {"url": url}}, tmp_path) == "[store].url"


def test_a_sqlite_url_without_a_file_names_store_url(tmp_path: Path) -> None:
    assert error_key({"store": {"url": "sqlite:///"}}, tmp_path) == "[store].url"


def test_the_postgresql_schema_defaults_to_falhook_and_can_be_named(tmp_path: Path) -> None:
    url = "postgresql://falhook@db:5432/falhook"
    assert from_dict({"store": {"url": url}}, base_dir=tmp_path).store.schema == "falhook"
    named = from_dict({"store": {"url": url, "schema": "team_a"}}, base_dir=tmp_path)
    assert named.store.schema == "team_a"


@pytest.mark.parametrize("schema", ["", "Upper", "1st", "has-dash", 'q"uote', "x" * 49])
def test_a_bad_postgresql_schema_names_store_schema(schema: str, tmp_path: Path) -> None:
    raw = {"store": {"url": "postgresql://falhook@db/falhook", "schema": schema}}
    assert error_key(raw, tmp_path) == "[store].schema"


@pytest.mark.parametrize(
    ("key", "value"),
    [("public_url", "hooks.example.com"), ("jwks_url", "ftp://x"), ("public_url", "https://")],
)
def test_a_bad_receiver_url_names_its_key(key: str, value: str, tmp_path: Path) -> None:
    assert error_key({"receiver": {key: value}}, tmp_path) == f"[receiver].{key}"


@pytest.mark.parametrize(
    "table", [{"root": "files"}, {"type": ""}, {"type": 3}], ids=["no type", "empty", "not str"]
)
def test_a_sink_without_a_type_names_its_type_key(table: dict[str, Any], tmp_path: Path) -> None:
    assert error_key({"sinks": {"local": table}}, tmp_path) == "[sinks.local].type"


def test_a_route_naming_an_unknown_sink_names_the_routes_sinks(tmp_path: Path) -> None:
    raw = {"sinks": {"local": {"type": "disk"}}, "routes": {"reframe": {"sinks": ["archive"]}}}
    assert error_key(raw, tmp_path) == "[routes.reframe].sinks"


def test_a_route_with_no_sinks_names_the_routes_sinks(tmp_path: Path) -> None:
    raw = {"sinks": {"local": {"type": "disk"}}, "routes": {"reframe": {"sinks": []}}}
    assert error_key(raw, tmp_path) == "[routes.reframe].sinks"


def test_an_unknown_route_key_names_itself(tmp_path: Path) -> None:
    raw = {"sinks": {"local": {"type": "disk"}}, "routes": {"r": {"sinks": ["local"], "x": 1}}}
    assert error_key(raw, tmp_path) == "[routes.r].x"


def test_a_duplicate_sink_in_a_route_names_the_routes_sinks(tmp_path: Path) -> None:
    raw = {"sinks": {"local": {"type": "disk"}}, "routes": {"r": {"sinks": ["local", "local"]}}}
    assert error_key(raw, tmp_path) == "[routes.r].sinks"


def test_after_naming_an_unknown_sink_names_after(tmp_path: Path) -> None:
    raw = {"sinks": {"team": {"type": "slack", "after": ["archive"]}}}
    assert error_key(raw, tmp_path) == "[sinks.team].after"


def test_after_naming_the_sink_itself_names_after(tmp_path: Path) -> None:
    raw = {"sinks": {"team": {"type": "slack", "after": ["team"]}}}
    assert error_key(raw, tmp_path) == "[sinks.team].after"


def test_after_forming_a_cycle_names_after(tmp_path: Path) -> None:
    raw = {
        "sinks": {
            "a": {"type": "x", "after": ["c"]},
            "b": {"type": "x", "after": ["a"]},
            "c": {"type": "x", "after": ["b"]},
        }
    }
    with pytest.raises(ConfigError) as err:
        from_dict(raw, base_dir=tmp_path)
    assert err.value.key in ("[sinks.a].after", "[sinks.b].after", "[sinks.c].after")
    assert "cycle" in str(err.value)


def test_after_naming_a_sink_the_route_lacks_names_the_routes_sinks(tmp_path: Path) -> None:
    raw = {
        "sinks": {"archive": {"type": "s3"}, "team": {"type": "slack", "after": ["archive"]}},
        "routes": {"reframe": {"sinks": ["team"]}},
    }
    assert error_key(raw, tmp_path) == "[routes.reframe].sinks"


def test_after_within_the_route_is_accepted(tmp_path: Path) -> None:
    raw = {
        "sinks": {"archive": {"type": "s3"}, "team": {"type": "slack", "after": ["archive"]}},
        "routes": {"reframe": {"sinks": ["team", "archive"]}},
    }
    s = from_dict(raw, base_dir=tmp_path)
    assert s.sinks["team"].after == ("archive",) and "after" not in s.sinks["team"].options


# --- which file ------------------------------------------------------------------------------


def test_the_config_flag_wins_over_falhook_config(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FALHOOK_CONFIG", "/etc/falhook/env.toml")
    assert config_path_from("/etc/falhook/flag.toml") == Path("/etc/falhook/flag.toml")


def test_falhook_config_names_the_file_without_the_flag(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FALHOOK_CONFIG", "/etc/falhook/env.toml")
    assert config_path_from(None) == Path("/etc/falhook/env.toml")


@pytest.mark.parametrize("env", [None, ""])
def test_neither_flag_nor_environment_means_embedded_defaults(
    env: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    if env is None:
        monkeypatch.delenv("FALHOOK_CONFIG", raising=False)
    else:
        monkeypatch.setenv("FALHOOK_CONFIG", env)
    assert config_path_from(None) is None


def test_a_config_file_is_loaded_and_remembered_as_the_source(tmp_path: Path) -> None:
    cfg = write(
        tmp_path / "falhook.toml",
        '[delivery]\nmax_attempts = 3\n[sinks.local]\ntype = "disk"\nroot = "out"\n'
        '[routes.reframe]\nsinks = ["local"]\n',
    )
    s = load_settings(cfg)
    assert s.delivery.max_attempts == 3 and s.routes["reframe"].sinks == ("local",)
    assert s.source == str(cfg)


def test_a_missing_config_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        load_settings(tmp_path / "missing.toml")


def test_invalid_toml_is_a_config_error(tmp_path: Path) -> None:
    bad = write(tmp_path / "bad.toml", "[receiver\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(bad)


@pytest.mark.parametrize("kind", ["directory", "not utf-8"])
def test_an_unreadable_config_file_is_a_config_error(kind: str, tmp_path: Path) -> None:
    if kind == "directory":
        path = tmp_path / "conf.d"
        path.mkdir()
    else:
        path = tmp_path / "latin1.toml"
        path.write_bytes(b'[receiver]\npublic_url = "https://caf\xe9.example"\n')
    with pytest.raises(ConfigError):
        load_settings(path)


def test_a_file_error_is_reported_with_its_key(tmp_path: Path) -> None:
    cfg = write(tmp_path / "falhook.toml", "[delivery]\nmax_attempts = 0\n")
    with pytest.raises(ConfigError, match=r"^\[delivery\]\.max_attempts: "):
        load_settings(cfg)


def test_submit_and_reconcile_sections_are_read(tmp_path: Path) -> None:
    s = from_dict(
        {
            "submit": {"schemas": {"my-org/ray": "text-to-video"}, "upload": "queue"},
            "reconcile": {"deadline": 30, "interval": 5},
        },
        base_dir=tmp_path,
    )
    assert s.submit.schemas == {"my-org/ray": "text-to-video"}
    assert s.submit.upload == "queue"
    assert (s.reconcile.deadline, s.reconcile.interval) == (30.0, 5.0)
