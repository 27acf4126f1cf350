"""The official SDK over HTTPS: letta-proxy's TLS listener (`[server.tls]`) in front of real Letta.

tests/e2e/run.sh makes a CA and a certificate for localhost with openssl and starts one letta-proxy
from tests/e2e/e2e-tls.toml (the backends of config/e2e.toml, HTTPS on a free port, the plain-HTTP
redirect listener on another), then passes:
  LETTA_E2E_TLS_PROXY     https://localhost:<port>
  LETTA_E2E_TLS_CA        the CA file the certificate chains to
  LETTA_E2E_TLS_REDIRECT  http://localhost:<port> of the redirect listener

Letta itself only ever sees plain HTTP: the proxy must tell it the client used HTTPS
(`X-Forwarded-Proto`) and keep Letta's own redirects on https.
"""

from __future__ import annotations

import os
import ssl
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx
import pytest
from letta_client import Letta

from helpers import BACKEND_HEADER, EMBEDDING, MODEL, unique

pytestmark = pytest.mark.proxy_only


@dataclass(frozen=True)
class Tls:
    url: str
    ca: str
    redirect: str

    @property
    def netloc(self) -> str:
        return urlsplit(self.url).netloc

    def trust(self) -> ssl.SSLContext:
        """A client context that trusts the test CA and nothing else."""
        return ssl.create_default_context(cafile=self.ca)


@pytest.fixture(scope="module")
def tls() -> Tls:
    url = os.environ.get("LETTA_E2E_TLS_PROXY", "").rstrip("/")
    ca = os.environ.get("LETTA_E2E_TLS_CA", "")
    redirect = os.environ.get("LETTA_E2E_TLS_REDIRECT", "").rstrip("/")
    if not (url and ca and redirect):
        message = ("needs LETTA_E2E_TLS_PROXY, LETTA_E2E_TLS_CA and LETTA_E2E_TLS_REDIRECT, "
                   "as tests/e2e/run.sh sets them")
        if os.environ.get("LETTA_E2E_REQUIRE_PROXY") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return Tls(url=url, ca=ca, redirect=redirect)


@pytest.fixture(scope="module")
def sdk(tls: Tls):
    """The official SDK against https://, trusting the test CA (and nothing else)."""
    with httpx.Client(verify=tls.trust(), timeout=60) as http_client:
        yield Letta(base_url=tls.url, http_client=http_client, max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def agent(sdk: Letta):
    agent = sdk.agents.create(
        name=unique("e2e-tls"),
        model=MODEL,
        embedding=EMBEDDING,
        memory_blocks=[
            {"label": "human", "value": "The human's name is Ada."},
            {"label": "persona", "value": "I am a test agent behind letta-proxy over HTTPS."},
        ],
    )
    yield agent
    try:
        sdk.agents.delete(agent.id)
    except Exception:  # noqa: BLE001 - the test may have broken the server
        pass


def test_the_sdk_talks_to_letta_over_https(sdk: Letta, agent):
    assert sdk.agents.retrieve(agent.id).id == agent.id
    response = sdk.agents.messages.create(agent.id, input=unique("hello over tls"))
    kinds = [m.message_type for m in response.messages]
    assert "assistant_message" in kinds, kinds
    listed = [a.id for a in sdk.agents.list(name=agent.name)]
    assert listed == [agent.id]


@pytest.mark.filterwarnings("ignore:deprecated:DeprecationWarning")
def test_the_sdk_streams_a_reply_over_https(sdk: Letta, agent):
    text = unique("stream over tls")
    events = list(sdk.agents.messages.stream(agent.id, input=text))
    kinds = [e.message_type for e in events if e.message_type != "ping"]
    assert kinds == ["assistant_message", "stop_reason", "usage_statistics"], kinds
    assert events[[e.message_type for e in events].index("assistant_message")].content == f"echo: {text}"


def test_http2_is_negotiated_and_letta_is_told_the_client_used_https(tls: Tls, agent):
    with httpx.Client(base_url=tls.url, verify=tls.trust(), http2=True, timeout=60) as http:
        r = http.get(f"/v1/agents/{agent.id}")
        assert r.status_code == 200, r.text
        assert r.http_version == "HTTP/2"
        assert r.headers.get(BACKEND_HEADER) in {"letta-a", "letta-b"}
        # Letta answers a collection path without its slash with a 307 it builds from the request
        # (plain HTTP, as it saw it): the client must stay on https.
        r = http.get("/v1/agents", params={"limit": 1})
        assert r.status_code == 307, r.text
        assert r.headers["location"] == f"https://{tls.netloc}/v1/agents/?limit=1"
        followed = http.get(r.headers["location"])
        assert followed.status_code == 200


def test_the_redirect_listener_sends_plain_http_to_https_keeping_the_method(tls: Tls):
    r = httpx.post(f"{tls.redirect}/v1/agents/", json={}, timeout=30, follow_redirects=False)
    assert r.status_code == 308, r.text
    assert r.headers["location"] == f"https://localhost:{urlsplit(tls.url).port}/v1/agents/"


def test_a_client_that_does_not_trust_the_certificate_is_refused(tls: Tls):
    # The system roots do not know the test CA: the handshake fails, nothing is sent.
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{tls.url}/v1/agents/?limit=1", timeout=30)
