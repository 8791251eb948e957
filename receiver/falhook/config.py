"""Configuration: TOML with ${ENV_VAR} interpolation, turned into typed, validated settings.

Every mistake raises ConfigError naming the offending key, so `falhook` refuses to start with a
message like ``[delivery].max_attempts: must be an integer >= 1``.
"""

from __future__ import annotations

import math
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from falhook.filters import Filter, FilterError

DEFAULT_JWKS_URL = "https://rest.alpha.fal.ai/.well-known/jwks.json"
DEFAULT_QUEUE_URL = "https://queue.fal.run"
DEFAULT_SIGN_URL = "https://api.fal.ai/v1/storage/files/sign"
DEFAULT_DATA_DIR = "falhook-data"
CONFIG_ENV = "FALHOOK_CONFIG"

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")
# A schema name falhook can put in search_path and a NOTIFY channel without quoting, short
# enough for the channel to stay under PostgreSQL's 63-byte identifiers (the store uses it too).
PG_SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,47}$")


class ConfigError(ValueError):
    """A configuration mistake; the message names the key."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"{key}: {problem}")
        self.key = key
        self.problem = problem


@dataclass(frozen=True)
class ReceiverSettings:
    public_url: str = "http://127.0.0.1:8000"
    jwks_url: str = DEFAULT_JWKS_URL
    jwks_refetch_interval: float = 60.0
    jwks_refresh_interval: float = 3600.0
    timestamp_tolerance: int = 300
    max_body_bytes: int = 10 * 1024 * 1024
    body_timeout: float = 10.0  # seconds any body may take to arrive ...
    body_min_rate: float = 65536.0  # ... plus one second per this many bytes
    max_buffered_bytes: int = 64 * 1024 * 1024  # unfinished bodies, all connections together
    allowed_user_ids: tuple[str, ...] = ()
    queue_url: str = DEFAULT_QUEUE_URL


@dataclass(frozen=True)
class StoreSettings:
    url: str = f"sqlite:///{DEFAULT_DATA_DIR}/events.db"
    schema: str = "falhook"  # PostgreSQL only: the schema falhook's tables live in
    history_days: float = 30.0  # attempts older than this leave the deliveries' history


@dataclass(frozen=True)
class DeliverySettings:
    max_attempts: int = 12
    lease_seconds: float = 60.0
    backoff_initial: float = 2.0
    backoff_max: float = 900.0
    concurrency: int = 8
    poll_interval: float = 1.0
    shutdown_grace: float = 20.0
    attempt_timeout: float = 900.0  # one sink's attempt (downloads have their own timeout)


@dataclass(frozen=True)
class DownloadSettings:
    allow_private_hosts: bool = False
    max_file_bytes: int = 4 * 1024**3
    timeout: float = 300.0  # seconds without an answer (connect, response head)
    deadline: float = 4 * 3600.0  # seconds one file may take in all
    min_rate: float = 16 * 1024.0  # bytes/s each file must average over every rate_window
    rate_window: float = 30.0  # seconds; also the longest silence allowed mid-body
    range_threshold: int = 64 * 1024**2  # files this large come in parallel ranges (0: never)
    range_size: int = 16 * 1024**2  # bytes per range
    range_parts: int = 4  # ranges fetched at once, each on its own connection
    spool_max_bytes: int = 10 * 1024**3  # files kept for later attempts, all events together
    spool_max_age: float = 7200.0  # seconds a kept event's files may go unused
    spool_dir: str = f"{DEFAULT_DATA_DIR}/spool"
    # Private fal files (an access rule forbids or hides them) are read through a signed URL
    # from fal's storage API, with FAL_KEY, when these hosts answer 401, 403 or 404.
    fal_media_hosts: tuple[str, ...] = ("fal.media",)  # each with its subdomains
    fal_sign_url: str = DEFAULT_SIGN_URL


@dataclass(frozen=True)
class SubmitSettings:
    timeout: float = 60.0  # seconds for one queue call (the submit POST included)
    upload: str = "auto"  # "fal" (fal-client), "queue" (the queue's upload path), "auto"
    schemas: dict[str, str] = field(default_factory=dict)  # endpoint id -> Ray schema name
    # false: submit with `X-Fal-Store-IO: 0` (fal keeps no payload history; it then keeps a
    # result on its queue for about an hour, 6 minutes when it is 10 KB or more), and the
    # reconciler looks at such submissions within that window. Never sent unless asked.
    store_io: bool = True


@dataclass(frozen=True)
class ReconcileSettings:
    enabled: bool = True  # `falhook serve` polls fal for overdue submissions (needs FAL_KEY)
    deadline: float = 900.0  # seconds after submit before a missing webhook is looked up
    interval: float = 60.0  # seconds between passes
    batch: int = 100  # submissions looked up per pass


@dataclass(frozen=True)
class ServerlessSettings:
    mode: str = "enqueue"  # "enqueue": store and answer; "inline": run the sinks before answering
    inline_deadline: float = 20.0  # seconds the sinks get within one invocation


@dataclass(frozen=True)
class TelemetrySettings:
    """Tracing (OpenTelemetry). `enabled` None: on when the standard OTEL_* variables ask for
    traces (falhook.telemetry decides); the other keys default to those variables too."""

    enabled: bool | None = None
    service_name: str = ""  # default: $OTEL_SERVICE_NAME, else "falhook"
    exporter: str = ""  # "otlp", "console" or "none"; default: $OTEL_TRACES_EXPORTER, else otlp
    endpoint: str = ""  # OTLP/HTTP base URL; default: $OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT


@dataclass(frozen=True)
class ConsoleSettings:
    enabled: bool = True  # the operator console at /console/ (false: 404)
    token: str = ""  # empty: loopback clients only; set it (from ${ENV}) for any other
    session_hours: float = 12.0  # how long a login lasts
    stream_interval: float = 0.5  # seconds between looks at the store for the live view
    page_size: int = 50  # events per page


@dataclass(frozen=True)
class SinkSettings:
    name: str
    type: str
    options: dict[str, Any]
    after: tuple[str, ...] = ()
    filter: Filter | None = None  # events it does not match get a `skipped` delivery


@dataclass(frozen=True)
class RouteSettings:
    name: str
    sinks: tuple[str, ...]
    on_dead: tuple[str, ...] = ()  # sinks that get an alert when a delivery goes dead


@dataclass(frozen=True)
class Settings:
    receiver: ReceiverSettings = field(default_factory=ReceiverSettings)
    store: StoreSettings = field(default_factory=StoreSettings)
    delivery: DeliverySettings = field(default_factory=DeliverySettings)
    downloads: DownloadSettings = field(default_factory=DownloadSettings)
    serverless: ServerlessSettings = field(default_factory=ServerlessSettings)
    submit: SubmitSettings = field(default_factory=SubmitSettings)
    reconcile: ReconcileSettings = field(default_factory=ReconcileSettings)
    telemetry: TelemetrySettings = field(default_factory=TelemetrySettings)
    console: ConsoleSettings = field(default_factory=ConsoleSettings)
    sinks: dict[str, SinkSettings] = field(default_factory=dict)
    routes: dict[str, RouteSettings] = field(default_factory=dict)
    base_dir: Path = field(default_factory=Path.cwd)
    source: str = "embedded defaults"

    def resolve_path(self, value: str | os.PathLike[str]) -> Path:
        """A path from the config, relative to the config file's folder."""
        path = Path(value).expanduser()
        return path if path.is_absolute() else (self.base_dir / path)

    @property
    def spool_path(self) -> Path:
        return self.resolve_path(self.downloads.spool_dir)

    def sqlite_path(self) -> Path | None:
        """The SQLite file named by ``[store].url``, or None for another engine."""
        url = self.store.url
        if not url.startswith("sqlite:///"):
            return None
        rest = url[len("sqlite:///") :]
        # sqlite:////abs/path.db keeps its leading slash; sqlite:///rel.db is relative.
        return Path(rest) if rest.startswith("/") else self.resolve_path(rest)


# --- loading ---------------------------------------------------------------------------------


def config_path_from(arg: str | None) -> Path | None:
    """--config wins, then $FALHOOK_CONFIG, else None (embedded defaults)."""
    chosen = arg or os.environ.get(CONFIG_ENV) or None
    return Path(chosen) if chosen else None


def config_named_by(arg: str | None) -> str | None:
    """What named the config a command runs on: "--config", "FALHOOK_CONFIG" or None."""
    if arg:
        return "--config"
    return CONFIG_ENV if os.environ.get(CONFIG_ENV) else None


def load_config(arg: str | None) -> Settings:
    """The settings a command runs on (`arg`: its --config); a file that is not there is
    blamed on whichever of --config and $FALHOOK_CONFIG named it."""
    return load_settings(config_path_from(arg), named_by=config_named_by(arg))


def load_settings(
    path: str | os.PathLike[str] | None = None, *, named_by: str | None = None
) -> Settings:
    """Read settings from a TOML file, or the embedded defaults when path is None."""
    if path is None:
        return embedded_defaults()
    file = Path(path)
    try:
        raw = tomllib.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(named_by or str(file), f"no such file: {file}") from None
    except UnicodeDecodeError:
        raise ConfigError(str(file), "is not UTF-8 text") from None
    except OSError as exc:  # a folder, no permission, ...
        raise ConfigError(str(file), f"cannot be read: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(file), f"not valid TOML: {exc}") from None
    return settings_from_dict(raw, base_dir=file.resolve().parent, source=str(file))


def embedded_defaults(base_dir: Path | None = None) -> Settings:
    """SQLite store and a disk sink under ./falhook-data/, one route `default`."""
    raw = {
        "sinks": {"local": {"type": "disk", "root": f"{DEFAULT_DATA_DIR}/files"}},
        "routes": {"default": {"sinks": ["local"]}},
    }
    return settings_from_dict(raw, base_dir=base_dir or Path.cwd(), source="embedded defaults")


def settings_from_dict(raw: dict[str, Any], *, base_dir: Path, source: str = "<dict>") -> Settings:
    raw = _interpolate(raw, ())
    known = {
        "receiver",
        "store",
        "delivery",
        "downloads",
        "serverless",
        "submit",
        "reconcile",
        "telemetry",
        "console",
        "sinks",
        "routes",
    }
    for key in raw:
        if key not in known:
            raise ConfigError(f"[{key}]", f"unknown section (expected one of {sorted(known)})")

    receiver = _section(raw, "receiver", ReceiverSettings, _check_receiver)
    store = _section(raw, "store", StoreSettings, _check_store)
    delivery = _section(raw, "delivery", DeliverySettings, _check_delivery)
    downloads = _section(raw, "downloads", DownloadSettings, _check_downloads)
    serverless = _section(raw, "serverless", ServerlessSettings, _check_serverless)
    submit = _section(raw, "submit", SubmitSettings, _check_submit)
    reconcile = _section(raw, "reconcile", ReconcileSettings, _check_reconcile)
    telemetry = _telemetry(raw.get("telemetry", {}))
    console = _section(raw, "console", ConsoleSettings, _check_console)
    sinks = _sinks(raw.get("sinks", {}))
    routes = _routes(raw.get("routes", {}), sinks)
    return Settings(
        receiver=receiver,
        store=store,
        delivery=delivery,
        downloads=downloads,
        serverless=serverless,
        submit=submit,
        reconcile=reconcile,
        telemetry=telemetry,
        console=console,
        sinks=sinks,
        routes=routes,
        base_dir=base_dir,
        source=source,
    )


def config_warnings(settings: Settings) -> list[str]:
    """Mistakes that do not stop falhook but leave it doing nothing useful."""
    found = []
    if not settings.routes:
        found.append(
            f"{settings.source}: no [routes.NAME] table, so every webhook is answered 404; "
            'add one, e.g. [routes.default] sinks = ["local"] with a [sinks.local] table'
        )
    return found


# --- helpers ---------------------------------------------------------------------------------


def _interpolate(value: Any, path: tuple[str, ...]) -> Any:
    if isinstance(value, str):

        def sub(match: re.Match[str]) -> str:
            name = match.group(1)
            if name not in os.environ:
                raise ConfigError(key_name(path), f"environment variable ${{{name}}} is not set")
            return os.environ[name]

        return _ENV_REF.sub(sub, value)
    if isinstance(value, dict):
        return {k: _interpolate(v, (*path, k)) for k, v in value.items()}
    if isinstance(value, list):
        return [_interpolate(v, (*path, f"[{i}]")) for i, v in enumerate(value)]
    return value


def key_name(path: tuple[str, ...]) -> str:
    """A config key as every message writes it: ``[sinks.team].webhook_url``,
    ``[receiver].allowed_user_ids[0]``; the table in brackets, then the key."""
    # Tables nest as [sinks.NAME] and [routes.NAME]; other sections are one level deep.
    depth = 2 if path[:1] in (("sinks",), ("routes",)) and len(path) > 2 else 1
    table, rest = path[:depth], path[depth:]
    key = ""
    for part in rest:
        key += part if part.startswith("[") else f".{part}"
    return f"[{'.'.join(table)}]{key}"


def _coerce(section: str, key: str, value: Any, default: Any) -> Any:
    where = f"[{section}].{key}"
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(where, "must be true or false")
        return value
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(where, "must be an integer")
        return value
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(where, "must be a number")
        if not math.isfinite(value):  # TOML allows nan and inf; no setting means them
            raise ConfigError(where, "must be a finite number")
        return float(value)
    if isinstance(default, str):
        if not isinstance(value, str):
            raise ConfigError(where, "must be a string")
        return value
    if isinstance(default, dict):
        if not isinstance(value, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()
        ):
            raise ConfigError(where, "must be a table of strings")
        return dict(value)
    if isinstance(default, tuple):
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(where, "must be a list of strings")
        return tuple(value)
    raise ConfigError(where, "unsupported value")  # pragma: no cover - guards new fields


def _section(raw: dict[str, Any], name: str, cls: type, check: Any) -> Any:
    values = raw.get(name, {})
    if not isinstance(values, dict):
        raise ConfigError(f"[{name}]", "must be a table")
    defaults = cls()
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        if not hasattr(defaults, key):
            raise ConfigError(f"[{name}].{key}", "unknown key")
        kwargs[key] = _coerce(name, key, value, getattr(defaults, key))
    settings = cls(**kwargs)
    check(settings)
    return settings


def _positive(
    section: str, key: str, value: float, minimum: float = 0, strict: bool = True
) -> None:
    if value < minimum or (strict and value == minimum):
        op = ">" if strict else ">="
        raise ConfigError(f"[{section}].{key}", f"must be {op} {minimum:g}")


def _check_url(section: str, key: str, value: str, schemes: tuple[str, ...]) -> None:
    if not any(value.startswith(s + "://") for s in schemes) or len(value.split("://", 1)[1]) == 0:
        raise ConfigError(
            f"[{section}].{key}", f"must be a URL starting with {' or '.join(schemes)}://"
        )


def _check_receiver(s: ReceiverSettings) -> None:
    _check_url("receiver", "public_url", s.public_url, ("http", "https"))
    _check_url("receiver", "jwks_url", s.jwks_url, ("http", "https"))
    _check_url("receiver", "queue_url", s.queue_url, ("http", "https"))
    _positive("receiver", "jwks_refetch_interval", s.jwks_refetch_interval, strict=False)
    _positive("receiver", "jwks_refresh_interval", s.jwks_refresh_interval)
    _positive("receiver", "timestamp_tolerance", s.timestamp_tolerance)
    _positive("receiver", "max_body_bytes", s.max_body_bytes)
    _positive("receiver", "body_timeout", s.body_timeout)
    _positive("receiver", "body_min_rate", s.body_min_rate)
    if s.max_buffered_bytes < s.max_body_bytes:
        raise ConfigError("[receiver].max_buffered_bytes", "must be >= max_body_bytes")


def _check_store(s: StoreSettings) -> None:
    rest = s.url.split("://", 1)[1] if "://" in s.url else ""
    if s.url.startswith("sqlite:///") and (not rest.strip("/") or rest.endswith("/")):
        raise ConfigError("[store].url", "names no database file (e.g. sqlite:///events.db)")
    if not (s.url.startswith("sqlite:///") or s.url.startswith(("postgresql://", "postgres://"))):
        raise ConfigError(
            "[store].url",
            "must start with sqlite:/// or postgresql:// (for example sqlite:///events.db)",
        )
    _positive("store", "history_days", s.history_days)
    if not PG_SCHEMA_NAME.match(s.schema):
        raise ConfigError(
            "[store].schema", "must be lower-case letters, digits and '_' (at most 48)"
        )


def _check_delivery(s: DeliverySettings) -> None:
    _positive("delivery", "max_attempts", s.max_attempts)
    _positive("delivery", "lease_seconds", s.lease_seconds, minimum=1, strict=False)
    _positive("delivery", "backoff_initial", s.backoff_initial)
    if s.backoff_max < s.backoff_initial:
        raise ConfigError("[delivery].backoff_max", "must be >= backoff_initial")
    _positive("delivery", "concurrency", s.concurrency)
    _positive("delivery", "poll_interval", s.poll_interval)
    _positive("delivery", "shutdown_grace", s.shutdown_grace, strict=False)
    _positive("delivery", "attempt_timeout", s.attempt_timeout)


def _check_downloads(s: DownloadSettings) -> None:
    _positive("downloads", "max_file_bytes", s.max_file_bytes)
    _positive("downloads", "timeout", s.timeout)
    _positive("downloads", "deadline", s.deadline)
    _positive("downloads", "min_rate", s.min_rate, strict=False)  # 0 turns it off
    _positive("downloads", "rate_window", s.rate_window)
    _positive("downloads", "range_threshold", s.range_threshold, strict=False)
    _positive("downloads", "range_size", s.range_size, minimum=64 * 1024, strict=False)
    _positive("downloads", "range_parts", s.range_parts)
    _positive("downloads", "spool_max_bytes", s.spool_max_bytes, strict=False)
    _positive("downloads", "spool_max_age", s.spool_max_age, strict=False)
    _check_url("downloads", "fal_sign_url", s.fal_sign_url, ("http", "https"))
    for host in s.fal_media_hosts:
        if not host or "/" in host or ":" in host.strip("[]"):
            raise ConfigError(
                "[downloads].fal_media_hosts", f"{host!r} is not a host name (e.g. fal.media)"
            )


def _check_serverless(s: ServerlessSettings) -> None:
    if s.mode not in ("enqueue", "inline"):
        raise ConfigError("[serverless].mode", 'must be "enqueue" or "inline"')
    _positive("serverless", "inline_deadline", s.inline_deadline)


def _check_submit(s: SubmitSettings) -> None:
    _positive("submit", "timeout", s.timeout)
    if s.upload not in ("auto", "fal", "queue"):
        raise ConfigError("[submit].upload", 'must be "auto", "fal" or "queue"')


def _check_reconcile(s: ReconcileSettings) -> None:
    _positive("reconcile", "deadline", s.deadline)
    _positive("reconcile", "interval", s.interval)
    _positive("reconcile", "batch", s.batch)


def _check_console(s: ConsoleSettings) -> None:
    if s.token and len(s.token) < 16:
        raise ConfigError("[console].token", "must be at least 16 characters (or empty)")
    _positive("console", "session_hours", s.session_hours)
    _positive("console", "stream_interval", s.stream_interval)
    if not 1 <= s.page_size <= 500:
        raise ConfigError("[console].page_size", "must be between 1 and 500")


def _sinks(raw: Any) -> dict[str, SinkSettings]:
    if not isinstance(raw, dict):
        raise ConfigError("[sinks]", "must be a table of [sinks.NAME] tables")
    sinks: dict[str, SinkSettings] = {}
    for name, table in raw.items():
        key = f"[sinks.{name}]"
        if not _NAME.match(name):
            raise ConfigError(key, "sink names use letters, digits, '_', '-' and '.'")
        if not isinstance(table, dict):
            raise ConfigError(key, "must be a table")
        options = dict(table)
        sink_type = options.pop("type", None)
        if not isinstance(sink_type, str) or not sink_type:
            raise ConfigError(f"{key}.type", "is required (disk, s3, slack, http, python, ...)")
        after = options.pop("after", [])
        if not isinstance(after, list) or not all(isinstance(a, str) for a in after):
            raise ConfigError(f"{key}.after", "must be a list of sink names")
        spec = options.pop("filter", None)
        try:
            matcher = None if spec is None else Filter.parse(spec)
        except FilterError as exc:
            raise ConfigError(f"{key}.filter", str(exc)) from None
        sinks[name] = SinkSettings(
            name=name, type=sink_type, options=options, after=tuple(after), filter=matcher
        )
    for sink in sinks.values():
        for other in sink.after:
            if other not in sinks:
                raise ConfigError(f"[sinks.{sink.name}].after", f"names unknown sink {other!r}")
            if other == sink.name:
                raise ConfigError(f"[sinks.{sink.name}].after", "a sink cannot run after itself")
    _check_no_cycles(sinks)
    return sinks


def _check_no_cycles(sinks: dict[str, SinkSettings]) -> None:
    state: dict[str, int] = {}

    def visit(name: str) -> None:
        if state.get(name) == 2:
            return
        if state.get(name) == 1:
            raise ConfigError(f"[sinks.{name}].after", "forms a cycle")
        state[name] = 1
        for other in sinks[name].after:
            visit(other)
        state[name] = 2

    for name in sinks:
        visit(name)


def _routes(raw: Any, sinks: dict[str, SinkSettings]) -> dict[str, RouteSettings]:
    if not isinstance(raw, dict):
        raise ConfigError("[routes]", "must be a table of [routes.NAME] tables")
    routes: dict[str, RouteSettings] = {}
    for name, table in raw.items():
        key = f"[routes.{name}]"
        if not _NAME.match(name):
            raise ConfigError(key, "route names use letters, digits, '_', '-' and '.'")
        if not isinstance(table, dict):
            raise ConfigError(key, "must be a table")
        for extra in table:
            if extra not in ("sinks", "on_dead"):
                raise ConfigError(f"{key}.{extra}", "unknown key")
        names = table.get("sinks")
        if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
            raise ConfigError(f"{key}.sinks", "must be a non-empty list of sink names")
        for sink in names:
            if sink not in sinks:
                raise ConfigError(f"{key}.sinks", f"names unknown sink {sink!r}")
        for sink in names:
            for other in sinks[sink].after:
                if other not in names:
                    raise ConfigError(
                        f"{key}.sinks", f"sink {sink!r} runs after {other!r}, which the route lacks"
                    )
        if len(set(names)) != len(names):
            raise ConfigError(f"{key}.sinks", "lists a sink twice")
        on_dead = _on_dead(key, table.get("on_dead", []), sinks)
        routes[name] = RouteSettings(name=name, sinks=tuple(names), on_dead=on_dead)
    return routes


def _on_dead(key: str, names: Any, sinks: dict[str, SinkSettings]) -> tuple[str, ...]:
    """The sinks that get an alert when a delivery of the route goes dead: any configured
    sink, in the route or not."""
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ConfigError(f"{key}.on_dead", "must be a list of sink names")
    for sink in names:
        if sink not in sinks:
            raise ConfigError(f"{key}.on_dead", f"names unknown sink {sink!r}")
    if len(set(names)) != len(names):
        raise ConfigError(f"{key}.on_dead", "lists a sink twice")
    return tuple(names)


_EXPORTERS = ("otlp", "console", "none")


def _telemetry(raw: Any) -> TelemetrySettings:
    if not isinstance(raw, dict):
        raise ConfigError("[telemetry]", "must be a table")
    enabled = raw.get("enabled")
    if enabled is not None and not isinstance(enabled, bool):
        raise ConfigError("[telemetry].enabled", "must be true or false")
    rest = {k: v for k, v in raw.items() if k != "enabled"}
    strings = _section({"telemetry": rest}, "telemetry", TelemetrySettings, lambda _: None)
    if strings.exporter and strings.exporter not in _EXPORTERS:
        raise ConfigError("[telemetry].exporter", f"must be one of {', '.join(_EXPORTERS)}")
    if strings.endpoint:
        _check_url("telemetry", "endpoint", strings.endpoint, ("http", "https"))
    return TelemetrySettings(
        enabled=enabled,
        service_name=strings.service_name,
        exporter=strings.exporter,
        endpoint=strings.endpoint,
    )
