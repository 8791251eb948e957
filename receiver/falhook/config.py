"""Configuration: TOML with ${ENV_VAR} interpolation, turned into typed, validated settings.

Each ``[section]`` is a msgspec Struct (`Section`): the type, bounds and default beside each
key, rules across keys in its ``check()``. The file is read by falhook_sinks.tables, the loader
that reads sinks' options too, so every mistake raises ConfigError naming the key the same
way: ``[delivery].max_attempts: must be an integer >= 1, not 0``.
"""

from __future__ import annotations

import functools
import os
import re
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from falhook.filters import Filter, FilterError
from falhook_sinks.tables import Invalid, Place, Table, read_table

DEFAULT_JWKS_URL = "https://rest.alpha.fal.ai/.well-known/jwks.json"
DEFAULT_QUEUE_URL = "https://queue.fal.run"
DEFAULT_SIGN_URL = "https://api.fal.ai/v1/storage/files/sign"
DEFAULT_DATA_DIR = "falhook-data"
CONFIG_ENV = "FALHOOK_CONFIG"

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
# A schema name falhook can put in search_path and a NOTIFY channel without quoting, short
# enough for the channel to stay under PostgreSQL's 63-byte identifiers (the store uses it too).
PG_SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,47}$")


class ConfigError(ValueError):
    """A configuration mistake; the message names the key."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"{key}: {problem}")
        self.key = key
        self.problem = problem


# Field types that say their bounds and, where the type cannot, their shape in words.
Positive = Annotated[float, Meta(gt=0)]
NonNegative = Annotated[float, Meta(ge=0)]
Count = Annotated[int, Meta(ge=1)]
NonNegativeInt = Annotated[int, Meta(ge=0)]
HttpUrl = Annotated[
    str, Meta(pattern=r"^https?://[^/\s]", description="a URL starting with http:// or https://")
]
HostName = Annotated[str, Meta(pattern=r"^[^/:\s]+$", description="a host name (e.g. fal.media)")]
SinkNames = Annotated[tuple[str, ...], Meta(description="a list of sink names")]
Name = Annotated[
    str,
    Meta(
        pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$",
        description="1 to 64 letters, digits, '_', '-' or '.', not starting with '-' or '.'",
    ),
]


class Section(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """One ``[section]`` of the config file. A new section is a subclass (``class
    RetentionSettings(Section, frozen=True)``: mypy wants each frozen Struct to say so) and one
    line in `Settings`: its fields' types, bounds and defaults are the whole declaration, and
    rules across its fields go in ``check()``, raising ``Invalid(field, problem)``."""

    def check(self) -> None:
        """Rules across fields; raise Invalid(field, problem)."""


class ReceiverSettings(Section, frozen=True):
    public_url: HttpUrl = "http://127.0.0.1:8000"
    jwks_url: HttpUrl = DEFAULT_JWKS_URL
    jwks_refetch_interval: NonNegative = 60.0
    jwks_refresh_interval: Positive = 3600.0
    timestamp_tolerance: Count = 300
    max_body_bytes: Count = 10 * 1024 * 1024
    body_timeout: Positive = 10.0  # seconds any body may take to arrive ...
    body_min_rate: Positive = 65536.0  # ... plus one second per this many bytes
    max_buffered_bytes: int = 64 * 1024 * 1024  # unfinished bodies, all connections together
    allowed_user_ids: tuple[str, ...] = ()
    queue_url: HttpUrl = DEFAULT_QUEUE_URL

    def check(self) -> None:
        if self.max_buffered_bytes < self.max_body_bytes:
            raise Invalid("max_buffered_bytes", "must be >= max_body_bytes")


class StoreSettings(Section, frozen=True):
    url: str = f"sqlite:///{DEFAULT_DATA_DIR}/events.db"
    # PostgreSQL only: the schema falhook's tables live in.
    schema: Annotated[
        str,
        Meta(
            pattern=PG_SCHEMA_NAME.pattern,
            description="lower-case letters, digits and '_' (at most 48; no digit first)",
        ),
    ] = "falhook"
    history_days: Positive = 30.0  # attempts older than this leave the deliveries' history

    def check(self) -> None:
        url = self.url
        rest = url.split("://", 1)[1] if "://" in url else ""
        if url.startswith("sqlite:///") and (not rest.strip("/") or rest.endswith("/")):
            raise Invalid("url", "names no database file (e.g. sqlite:///events.db)")
        if not url.startswith(("sqlite:///", "postgresql://", "postgres://")):
            raise Invalid(
                "url",
                "must start with sqlite:/// or postgresql:// (for example sqlite:///events.db)",
            )


class DeliverySettings(Section, frozen=True):
    max_attempts: Count = 12
    lease_seconds: Annotated[float, Meta(ge=1)] = 60.0
    backoff_initial: Positive = 2.0
    backoff_max: float = 900.0
    concurrency: Count = 8
    poll_interval: Positive = 1.0
    shutdown_grace: NonNegative = 20.0
    attempt_timeout: Positive = 900.0  # one sink's attempt (downloads have their own timeout)
    # Deliveries leased per store call, outcomes recorded per commit and events per call of a
    # sink that takes batches, at most; and how long such a sink's next batch may wait for
    # company while one is in flight (a lone event goes at once).
    batch_size: Count = 64
    linger: NonNegative = 0.002

    def check(self) -> None:
        if self.backoff_max < self.backoff_initial:
            raise Invalid("backoff_max", "must be >= backoff_initial")


class DownloadSettings(Section, frozen=True):
    allow_private_hosts: bool = False
    max_file_bytes: Count = 4 * 1024**3
    timeout: Positive = 300.0  # seconds without an answer (connect, response head)
    deadline: Positive = 4 * 3600.0  # seconds one file may take in all
    min_rate: NonNegative = 16 * 1024.0  # bytes/s each file must average per rate_window; 0: off
    rate_window: Positive = 30.0  # seconds; also the longest silence allowed mid-body
    range_threshold: NonNegativeInt = 64 * 1024**2  # files this large come in ranges (0: never)
    range_size: Annotated[int, Meta(ge=64 * 1024)] = 16 * 1024**2  # bytes per range
    range_parts: Count = 4  # ranges fetched at once, each on its own connection
    spool_max_bytes: NonNegativeInt = 10 * 1024**3  # files kept for later attempts, all events
    spool_max_age: NonNegative = 7200.0  # seconds a kept event's files may go unused
    spool_dir: str = f"{DEFAULT_DATA_DIR}/spool"
    # Private fal files (an access rule forbids or hides them) are read through a signed URL
    # from fal's storage API, with FAL_KEY, when these hosts answer 401, 403 or 404.
    fal_media_hosts: tuple[HostName, ...] = ("fal.media",)  # each with its subdomains
    fal_sign_url: HttpUrl = DEFAULT_SIGN_URL


class SubmitSettings(Section, frozen=True):
    timeout: Positive = 60.0  # seconds for one queue call (the submit POST included)
    # "fal" (fal-client), "queue" (the queue's upload path), "auto"
    upload: Literal["auto", "fal", "queue"] = "auto"
    schemas: dict[str, str] = {}  # endpoint id -> Ray schema name
    # false: submit with `X-Fal-Store-IO: 0` (fal keeps no payload history; it then keeps a
    # result on its queue for about an hour, 6 minutes when it is 10 KB or more), and the
    # reconciler looks at such submissions within that window. Never sent unless asked.
    store_io: bool = True


class ReconcileSettings(Section, frozen=True):
    enabled: bool = True  # `falhook serve` polls fal for overdue submissions (needs FAL_KEY)
    deadline: Positive = 900.0  # seconds after submit before a missing webhook is looked up
    interval: Positive = 60.0  # seconds between passes
    batch: Count = 100  # submissions looked up per pass


class ServerlessSettings(Section, frozen=True):
    # "enqueue": store and answer; "inline": run the sinks before answering
    mode: Literal["enqueue", "inline"] = "enqueue"
    inline_deadline: Positive = 20.0  # seconds the sinks get within one invocation


class TelemetrySettings(Section, frozen=True):
    """Tracing (OpenTelemetry). `enabled` None: on when the standard OTEL_* variables ask for
    traces (falhook.telemetry decides); the other keys default to those variables too."""

    enabled: bool | None = None
    service_name: str = ""  # default: $OTEL_SERVICE_NAME, else "falhook"
    # default (""): $OTEL_TRACES_EXPORTER, else otlp
    exporter: Literal["", "otlp", "console", "none"] = ""
    # OTLP/HTTP base URL; default: $OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT
    endpoint: Annotated[
        str,
        Meta(pattern=r"^$|^https?://[^/\s]", description="a URL starting with http:// or https://"),
    ] = ""


class ConsoleSettings(Section, frozen=True):
    enabled: bool = True  # the operator console at /console/ (false: 404)
    token: str = ""  # empty: loopback clients only; set it (from ${ENV}) for any other
    session_hours: Positive = 12.0  # how long a login lasts
    stream_interval: Positive = 0.5  # seconds between looks at the store for the live view
    page_size: Annotated[int, Meta(ge=1, le=500)] = 50  # events per page

    def check(self) -> None:
        if self.token and len(self.token) < 16:
            raise Invalid("token", "must be at least 16 characters (or empty)")


class SinkSettings(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    type: str
    options: dict[str, Any]
    after: tuple[str, ...] = ()
    filter: Filter | None = None  # events it does not match get a `skipped` delivery


class RouteSettings(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    sinks: tuple[str, ...]
    on_dead: tuple[str, ...] = ()  # sinks that get an alert when a delivery goes dead


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    """The whole configuration. Each field of a `Section` type is the ``[section]`` of the
    same name: adding one here is all the loader needs."""

    receiver: ReceiverSettings = ReceiverSettings()
    store: StoreSettings = StoreSettings()
    delivery: DeliverySettings = DeliverySettings()
    downloads: DownloadSettings = DownloadSettings()
    serverless: ServerlessSettings = ServerlessSettings()
    submit: SubmitSettings = SubmitSettings()
    reconcile: ReconcileSettings = ReconcileSettings()
    telemetry: TelemetrySettings = TelemetrySettings()
    console: ConsoleSettings = ConsoleSettings()
    sinks: dict[str, SinkSettings] = {}
    routes: dict[str, RouteSettings] = {}
    base_dir: Path = msgspec.field(default_factory=Path.cwd)
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

    def check(self) -> None:
        """What sinks and routes say of each other: `after`, a route's sinks, `on_dead`."""
        for sink in self.sinks.values():
            key = f"[sinks.{sink.name}].after"
            for other in sink.after:
                if other not in self.sinks:
                    raise ConfigError(key, f"names unknown sink {other!r}")
                if other == sink.name:
                    raise ConfigError(key, "a sink cannot run after itself")
        _check_no_cycles(self.sinks)
        for route in self.routes.values():
            key = f"[routes.{route.name}]"
            for name in (*route.sinks, *route.on_dead):
                if name not in self.sinks:
                    which = "sinks" if name in route.sinks else "on_dead"
                    raise ConfigError(f"{key}.{which}", f"names unknown sink {name!r}")
            for name in route.sinks:
                for other in self.sinks[name].after:
                    if other not in route.sinks:
                        problem = f"sink {name!r} runs after {other!r}, which the route lacks"
                        raise ConfigError(f"{key}.sinks", problem)


# --- the file's own tables -------------------------------------------------------------------


class SinkTable(Table, forbid_unknown_fields=False):
    """falhook's keys of a ``[sinks.NAME]`` table; the others are the sink type's options."""

    type: Annotated[
        str, Meta(min_length=1, examples=["disk", "s3", "slack", "http", "python", "exec"])
    ]
    after: SinkNames = ()
    filter: Any = None


class RouteTable(Table):
    sinks: Annotated[
        tuple[str, ...], Meta(min_length=1, description="a non-empty list of sink names")
    ]
    on_dead: SinkNames = ()  # sinks that get an alert when a delivery goes dead

    def check(self) -> None:
        for key, names in (("sinks", self.sinks), ("on_dead", self.on_dead)):
            if len(set(names)) != len(names):
                raise Invalid(key, "lists a sink twice")


@functools.cache
def file_table() -> type[msgspec.Struct]:
    """The config file as a Struct: every `Section` field of `Settings`, and the named
    ``[sinks.NAME]`` and ``[routes.NAME]`` tables."""
    sections = [
        (f.name, f.type, f.default)
        for f in msgspec.structs.fields(Settings)
        if isinstance(f.type, type) and issubclass(f.type, Section)
    ]
    sinks = Annotated[dict[Name, SinkTable], Meta(description="a table of [sinks.NAME] tables")]
    routes = Annotated[dict[Name, RouteTable], Meta(description="a table of [routes.NAME] tables")]
    fields = [*sections, ("sinks", sinks, {}), ("routes", routes, {})]
    return msgspec.defstruct("ConfigFile", fields, bases=(Table,), kw_only=True)


class _FilePlace(Place):
    """Keys as the file writes them: ``[delivery].max_attempts``, ``[sinks.team].after``."""

    def key(self, path: tuple[str, ...]) -> str:
        return key_name(path)

    def noun(self, path: tuple[str, ...]) -> str:
        return "section" if len(path) == 1 else "key"

    def shown(self, path: tuple[str, ...]) -> str:
        return key_name(path) if len(path) == 1 else path[-1]

    def listing(self, path: tuple[str, ...], known: Sequence[str]) -> str:
        return f" (known: {', '.join(sorted(known))})" if len(path) == 1 else ""

    def error(self, key: str, problem: str) -> Exception:
        return ConfigError(key, problem)


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
    file = read_table(raw, file_table(), _FilePlace())
    sections = {f.name: getattr(file, f.name) for f in msgspec.structs.fields(file)}
    tables: dict[str, SinkTable] = sections.pop("sinks")
    sinks = {name: _sink(name, table, raw["sinks"][name]) for name, table in tables.items()}
    routes = {
        name: RouteSettings(name=name, sinks=table.sinks, on_dead=table.on_dead)
        for name, table in sections.pop("routes").items()
    }
    settings = Settings(**sections, sinks=sinks, routes=routes, base_dir=base_dir, source=source)
    settings.check()
    return settings


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
    if not path:
        return "the config"
    # Tables nest as [sinks.NAME] and [routes.NAME]; other sections are one level deep.
    depth = 2 if path[:1] in (("sinks",), ("routes",)) and len(path) > 1 else 1
    table, rest = path[:depth], path[depth:]
    key = ""
    for part in rest:
        key += part if part.startswith("[") else f".{part}"
    return f"[{'.'.join(table)}]{key}"


def _sink(name: str, table: SinkTable, raw: dict[str, Any]) -> SinkSettings:
    try:
        matcher = None if table.filter is None else Filter.parse(table.filter)
    except FilterError as exc:
        raise ConfigError(f"[sinks.{name}].filter", str(exc)) from None
    options = {k: v for k, v in raw.items() if k not in SinkTable.__struct_fields__}
    return SinkSettings(
        name=name, type=table.type, options=options, after=table.after, filter=matcher
    )


def _check_no_cycles(sinks: Mapping[str, SinkSettings]) -> None:
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
