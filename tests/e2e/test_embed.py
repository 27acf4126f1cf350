"""examples/embed.rs with the official SDK: letta-proxy's gateway nested under `/letta` in an axum
application, behind the application's bearer-token check, in front of the real Letta servers.

tests/e2e/run.sh builds the example, starts it on a free port with config/e2e.toml (the same two
Letta servers, the main proxy's Redis) and passes:
  LETTA_E2E_EMBED_URL    http://127.0.0.1:<port> (the application's root)
  LETTA_E2E_EMBED_TOKEN  the token it requires (the SDK's api_key)
"""

from __future__ import annotations

import os

import httpx
import pytest
from letta_client import AuthenticationError, Letta

from helpers import BACKEND_HEADER, EMBEDDING, MODEL, unique

pytestmark = pytest.mark.proxy_only


@pytest.fixture(scope="module")
def embed() -> tuple[str, str]:
    url = os.environ.get("LETTA_E2E_EMBED_URL", "").rstrip("/")
    token = os.environ.get("LETTA_E2E_EMBED_TOKEN", "")
    if not (url and token):
        message = "needs LETTA_E2E_EMBED_URL and LETTA_E2E_EMBED_TOKEN, as tests/e2e/run.sh sets them"
        if os.environ.get("LETTA_E2E_REQUIRE_PROXY") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return url, token


@pytest.fixture(scope="module")
def sdk(embed) -> Letta:
    url, token = embed
    return Letta(base_url=f"{url}/letta", api_key=token, max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def agent(sdk: Letta):
    agent = sdk.agents.create(
        name=unique("e2e-embed"),
        model=MODEL,
        embedding=EMBEDDING,
        memory_blocks=[
            {"label": "human", "value": "The human's name is Ada."},
            {"label": "persona", "value": "I am a test agent inside an application."},
        ],
    )
    yield agent
    try:
        sdk.agents.delete(agent.id)
    except Exception:  # noqa: BLE001 - the test may have broken the server
        pass


def test_the_sdk_works_under_the_mount_point(sdk: Letta, agent):
    assert sdk.agents.retrieve(agent.id).name == agent.name
    text = unique("hello from the application")
    response = sdk.agents.messages.create(agent.id, input=text)
    kinds = [m.message_type for m in response.messages]
    assert "assistant_message" in kinds, kinds
    history = sdk.agents.messages.list(agent.id, limit=10)
    assert any(getattr(m, "content", None) == f"echo: {text}" for m in history.items), history


@pytest.mark.filterwarnings("ignore:deprecated:DeprecationWarning")
def test_the_sdk_streams_through_the_application(sdk: Letta, agent):
    events = list(sdk.agents.messages.stream(agent.id, input=unique("stream")))
    kinds = [e.message_type for e in events if e.message_type != "ping"]
    assert kinds == ["assistant_message", "stop_reason", "usage_statistics"], kinds


def test_a_wrong_token_is_refused_by_the_application(embed, agent):
    url, _ = embed
    stranger = Letta(base_url=f"{url}/letta", api_key="not-the-token", max_retries=0, timeout=60)
    with pytest.raises(AuthenticationError):
        stranger.agents.retrieve(agent.id)


def test_letta_redirects_keep_the_mount_point(embed):
    url, token = embed
    r = httpx.get(f"{url}/letta/v1/agents", params={"limit": 1}, headers={"Authorization": f"Bearer {token}"},
                  timeout=30, follow_redirects=False)
    assert r.status_code == 307, r.text
    assert r.headers["location"] == f"{url}/letta/v1/agents/?limit=1"
    r = httpx.get(r.headers["location"], headers={"Authorization": f"Bearer {token}"}, timeout=30)
    assert r.status_code == 200
    assert r.headers.get(BACKEND_HEADER) in {"letta-a", "letta-b"}
