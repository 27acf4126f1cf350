"""Fixtures of the end-to-end suite: real Letta 0.16.8 servers behind letta-proxy, driven by the
official `letta-client` SDK and by raw httpx where the wire format itself is under test.

Environment (tests/e2e/run.sh sets all of it):
  LETTA_PROXY_URL          base URL under test (default http://127.0.0.1:8300). Point it at a Letta
                           server (http://127.0.0.1:8283) to run the Letta-only part of the suite;
                           tests marked `proxy_only` then skip.
  LETTA_E2E_REQUIRE_PROXY  "1": the target must be letta-proxy; nothing skips, a missing proxy fails.
  LETTA_E2E_BACKENDS       backend names and URLs as in config/e2e.toml
                           (default "letta-a=http://127.0.0.1:8283,letta-b=http://127.0.0.1:8284").
  LETTA_E2E_BASE           work dir of the Letta kit, tests/e2e/kit/letta.sh (default /tmp/letta-e2e).
  LETTA_E2E_KIT            path of the kit's letta.sh (default: tests/e2e/kit/letta.sh).
  LETTA_E2E_SECURE_PROXIES the two letta-proxy instances in front of the secure-mode Letta server
                           (comma-separated URLs), LETTA_E2E_SECURE_BACKEND that server and
                           LETTA_E2E_SECURE_PASSWORD its password: test_secure.py.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from letta_client import Letta

from helpers import EMBEDDING, MODEL, unique

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Backend:
    name: str
    url: str

    @property
    def netloc(self) -> str:
        return urlsplit(self.url).netloc

    @property
    def port(self) -> int:
        return urlsplit(self.url).port or 80


@dataclass(frozen=True)
class Target:
    """The base URL the tests talk to, and whether it is letta-proxy or a bare Letta server."""

    url: str
    is_proxy: bool
    backends: tuple[Backend, ...]

    @property
    def netloc(self) -> str:
        return urlsplit(self.url).netloc


def _backends_from_env() -> tuple[Backend, ...]:
    spec = os.environ.get("LETTA_E2E_BACKENDS", "letta-a=http://127.0.0.1:8283,letta-b=http://127.0.0.1:8284")
    pairs = [item.split("=", 1) for item in spec.split(",") if item.strip()]
    return tuple(Backend(name.strip(), url.strip().rstrip("/")) for name, url in pairs)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "proxy_only: needs letta-proxy as the target (skips against bare Letta)")
    config.addinivalue_line("markers", "disruptive: stops a Letta server; runs after every other test")


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    """Run `disruptive` tests last, so every other test sees both Letta servers."""
    items.sort(key=lambda item: item.get_closest_marker("disruptive") is not None)


@pytest.fixture(scope="session")
def target() -> Target:
    """The base URL under test; stops the session at once if nothing (or not the proxy, when the
    proxy is required) answers there."""
    url = os.environ.get("LETTA_PROXY_URL", "http://127.0.0.1:8300").rstrip("/")
    try:
        health = httpx.get(f"{url}/v1/health/", timeout=10)
    except httpx.HTTPError as exc:
        pytest.exit(f"nothing answers at LETTA_PROXY_URL={url}: {exc!r}", returncode=3)
    if health.status_code != 200:
        pytest.exit(f"{url}/v1/health/ answered {health.status_code}: {health.text[:300]}", returncode=3)
    # Letta has no /-/healthy (404); the proxy owns it.
    is_proxy = httpx.get(f"{url}/-/healthy", timeout=10).status_code == 200
    if os.environ.get("LETTA_E2E_REQUIRE_PROXY") == "1" and not is_proxy:
        pytest.exit(f"LETTA_E2E_REQUIRE_PROXY=1 but {url} is not letta-proxy (no /-/healthy)", returncode=3)
    return Target(url=url, is_proxy=is_proxy, backends=_backends_from_env())


@pytest.fixture(autouse=True)
def _skip_proxy_only(request: pytest.FixtureRequest, target: Target) -> None:
    if request.node.get_closest_marker("proxy_only") and not target.is_proxy:
        pytest.skip(f"needs letta-proxy as the target; {target.url} is a bare Letta server")


@pytest.fixture(scope="session")
def client(target: Target) -> Letta:
    """The official SDK, pointed at the target. Retries are off: a proxy error must show, not be
    papered over by the SDK's two automatic retries of 5xx answers."""
    return Letta(base_url=target.url, max_retries=0, timeout=60)


@pytest.fixture(scope="session")
def http(target: Target):
    """A plain HTTP client (no SDK headers: User-Agent python-httpx/…, no X-Stainless-*)."""
    with httpx.Client(base_url=target.url, timeout=60) as c:
        yield c


@pytest.fixture
def make_agent(client: Letta):
    """Factory: create an agent on the fake LLM; every agent it made is deleted afterwards."""
    created: list[str] = []

    def make(**overrides):
        params = dict(
            name=unique("e2e-agent"),
            model=MODEL,
            embedding=EMBEDDING,
            memory_blocks=[
                {"label": "human", "value": "The human's name is Ada."},
                {"label": "persona", "value": "I am a test agent behind letta-proxy."},
            ],
        )
        params.update(overrides)
        agent = client.agents.create(**params)
        created.append(agent.id)
        return agent

    yield make
    for agent_id in created:
        try:
            client.agents.delete(agent_id)
        except Exception:  # noqa: BLE001 - already deleted by the test, or the test broke the server
            pass


@pytest.fixture
def agent(make_agent):
    """One fresh agent for a test."""
    return make_agent()


@pytest.fixture(scope="session")
def letta_recipe() -> dict[str, Path]:
    """Where the Letta kit (tests/e2e/kit/letta.sh) lives and keeps its PID files (for the outage tests)."""
    script = Path(os.environ.get("LETTA_E2E_KIT", REPO / "tests" / "e2e" / "kit" / "letta.sh"))
    base = Path(os.environ.get("LETTA_E2E_BASE", "/tmp/letta-e2e"))
    return {"script": script, "base": base, "run": base / "run"}
