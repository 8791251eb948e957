"""Shared fixtures: a test signer and its JWKS served on loopback, a file server, falhook apps
in the test's own process (`inprocess`), and `falhook serve` processes configured per test
(`falhook_factory`, for what needs a process: signals, kill -9, the command line, scale-out).

Stand-ins for outside services: moto's S3 server (`moto`, `s3`) and its fake credentials
(`aws_env`), Slack (`slack`), and fal's emulator on one loopback server per test module
(`fal_host`; each module's own `fal` fixture puts a fresh Emulator behind it).

Every test that uses `store_backend` (directly, or through `store_section`, `inprocess`,
`falhook_factory` or `falhook`) runs once per store backend (SQLite and PostgreSQL), each on
its own data: a SQLite file under tmp_path, or a PostgreSQL schema of its own, dropped after
the test. A test whose outcome does not depend on the store says so with
`@pytest.mark.one_store("why")` and runs on SQLite only; `one_store("why",
backend="postgres")` marks a test about PostgreSQL.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from falhook.testing import FalSigner, JWKSServer
from tests.support.emulator import SharedEmulator
from tests.support.falhook_server import Falhook, base_config
from tests.support.fileserver import FileServer
from tests.support.inprocess import InProcessFactory, inprocess_apps
from tests.support.moto import AWS_ENV, BUCKET, MotoServer, boto3_client
from tests.support.slack_stub import SlackStub
from tests.support.stores import STORE_BACKENDS, drop_pg_schemas
from tests.support.stores import store_section as make_section


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "one_store(reason, backend='sqlite'): run the test on that store backend only (its"
        " outcome does not depend on the store, or it is about that store)",
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "store_backend" not in metafunc.fixturenames:
        return
    one = metafunc.definition.get_closest_marker("one_store")
    if one is None:
        metafunc.parametrize("store_backend", STORE_BACKENDS)
        return
    if not (one.args and isinstance(one.args[0], str) and one.args[0]):
        raise pytest.UsageError(f"{metafunc.definition.nodeid}: one_store needs a reason")
    backend = one.kwargs.get("backend", "sqlite")
    if backend not in STORE_BACKENDS:
        raise pytest.UsageError(f"{metafunc.definition.nodeid}: no store backend {backend!r}")
    metafunc.parametrize("store_backend", [backend])


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """With FALHOOK_NO_SKIP=1 (set by .ci/run) a skipped test fails: CI must run them all."""
    outcome = yield
    report = outcome.get_result()
    if (
        os.environ.get("FALHOOK_NO_SKIP") == "1"
        and report.skipped
        and call.when in ("setup", "call")
    ) and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = f"skipped in CI, where every test must run: {report.longrepr}"


@pytest.fixture
def signer() -> FalSigner:
    return FalSigner(user_id="user-1")


@pytest.fixture
def jwks(signer: FalSigner) -> Iterator[JWKSServer]:
    server = JWKSServer()
    server.set_jwks(signer.jwks())
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def files() -> Iterator[FileServer]:
    with FileServer() as server:
        yield server


@pytest.fixture
def store_backend() -> str:
    """The store backend this test runs on (parametrised by pytest_generate_tests)."""
    return "sqlite"


@pytest.fixture
def store_section(store_backend: str, tmp_path: Path) -> Iterator[dict[str, str]]:
    """The `[store]` table of this test's falhook configs; a PostgreSQL schema is dropped once
    the test (and every falhook process it started) is done."""
    section = make_section(store_backend, tmp_path)
    yield section
    if "schema" in section:
        drop_pg_schemas([section["schema"]])


@pytest.fixture
async def inprocess(
    tmp_path: Path, jwks: JWKSServer, store_section: dict[str, str]
) -> AsyncIterator[InProcessFactory]:
    """Build and start falhook apps in this process on this test's store (`await
    inprocess(**config_overrides)`); all are closed at the end of the test."""
    async with inprocess_apps(tmp_path, jwks.url, store_section) as factory:
        yield factory


@pytest.fixture
def falhook_factory(
    tmp_path: Path, jwks: JWKSServer, store_section: dict[str, str]
) -> Iterator[Callable[..., Falhook]]:
    """Build (not start) falhook processes on this test's store; all are stopped at the end of
    the test."""
    made: list[Falhook] = []

    def make(
        name: str = "falhook", command: tuple[str, ...] = ("serve",), **overrides: Any
    ) -> Falhook:
        overrides["store"] = {**store_section, **overrides.get("store", {})}
        config = overrides.pop("config", None) or base_config(tmp_path, jwks.url, **overrides)
        proc = Falhook(tmp_path, config, command=command, name=name)
        made.append(proc)
        return proc

    yield make
    for proc in made:
        proc.close()


@pytest.fixture
def falhook(falhook_factory: Callable[..., Falhook]) -> Falhook:
    return falhook_factory().start()


@pytest.fixture(scope="session")
def moto_server() -> Iterator[MotoServer]:
    """One moto server for the session: stopping it takes half a second (werkzeug's poll)."""
    with MotoServer() as server:
        yield server


@pytest.fixture
def moto(moto_server: MotoServer) -> MotoServer:
    """moto's S3-protocol server on loopback, restartable (stop/start keeps its state),
    running and empty at the start of each test."""
    if not moto_server.running:  # a test that stopped it failed before starting it again
        moto_server.start()
    moto_server.reset()
    return moto_server


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """moto's fake AWS credentials and region (AWS_ENV) in this test's environment, where
    boto3's standard chain reads them, and never the developer's own AWS files."""
    for key, value in AWS_ENV.items():
        monkeypatch.setenv(key, value)


@pytest.fixture
def s3(moto: MotoServer) -> Any:
    """A boto3 client for assertions, with BUCKET created."""
    client = boto3_client(moto.url)
    client.create_bucket(Bucket=BUCKET)
    return client


@pytest.fixture(scope="module")
def fal_host() -> Iterator[SharedEmulator]:
    """fal's emulator server, one per test module (starting and stopping one costs): a test
    module's `fal` fixture puts its own fresh Emulator behind it with `fal_host.use(...)`."""
    with SharedEmulator() as host:
        yield host


@pytest.fixture
def slack() -> Iterator[SlackStub]:
    """A loopback stand-in for Slack (tests/support/slack_stub.py), recording every request."""
    with SlackStub() as stub:
        yield stub
