"""No cached answer crosses a credential: the cache against a password-protected Letta server.

Letta 0.16.8 started with `LETTA_SERVER_SECURE=true LETTA_SERVER_PASSWORD=<pw>` answers every
call but health with 401 unless the request carries `Authorization: Bearer <pw>` **or**
`X-BARE-PASSWORD: password <pw>` (`letta/server/rest_api/middleware/check_password.py`; the ADE
sends the second). tests/e2e/run.sh starts such a server (kit call of its own, port 8285) and two
letta-proxy instances in front of it only (config/e2e-secure.toml), cache on, both on one Redis.

Every case reads a real agent through the proxy with valid credentials (a backend answer the
cache stores), then sends the SAME request (same path and query, same other headers) without
them, with a wrong password, or with the other header carrying a wrong value: the server would
answer 401, so the proxy must too. Once through the instance that stored the answer (its
in-process tier, L1), once through the other instance after the answer reached Redis (L2).
The headers that Letta or a gateway in front of it may use to tell callers apart (`Cookie`,
`Proxy-Authorization`, `X-Organization-Id`) must likewise never share an answer across values.
Finally the official SDK with the password works end to end through the proxy.

Each case uses its own query parameter (`e2e_case`), so it starts from an empty cache entry.
"""

from __future__ import annotations

import os
import re
import uuid
from dataclasses import dataclass

import httpx
import pytest
from letta_client import AuthenticationError, Letta

from helpers import EMBEDDING, MODEL, unique, wait_until

pytestmark = pytest.mark.proxy_only

#: Headers every raw request of this module carries, so that only credentials differ between the
#: request that fills the cache and the one that must not be served from it.
BASE_HEADERS = {"User-Agent": "letta-proxy-e2e/secure", "Accept": "application/json"}
STORES = re.compile(r'^letta_proxy_cache_stores_total\{(?P<labels>[^}]*)\}\s+(?P<value>\S+)', re.M)


@dataclass(frozen=True)
class Secure:
    """The secure-mode setup run.sh made: two proxy instances (one Redis), the server, its password."""

    a: str
    b: str
    backend: str
    password: str


@pytest.fixture(scope="module")
def secure() -> Secure:
    proxies = [u.strip().rstrip("/") for u in os.environ.get("LETTA_E2E_SECURE_PROXIES", "").split(",") if u.strip()]
    backend = os.environ.get("LETTA_E2E_SECURE_BACKEND", "").rstrip("/")
    password = os.environ.get("LETTA_E2E_SECURE_PASSWORD", "")
    if len(proxies) != 2 or not backend or not password:
        message = ("needs LETTA_E2E_SECURE_PROXIES (two URLs), LETTA_E2E_SECURE_BACKEND and "
                   "LETTA_E2E_SECURE_PASSWORD, as tests/e2e/run.sh sets them")
        if os.environ.get("LETTA_E2E_REQUIRE_PROXY") == "1":
            pytest.fail(message)
        pytest.skip(message)
    s = Secure(proxies[0], proxies[1], backend, password)
    # The premise: the server itself refuses a caller without the password, and both instances are up.
    assert httpx.get(f"{backend}/v1/agents/?limit=1", headers=BASE_HEADERS, timeout=30).status_code == 401, \
        f"{backend} is not in secure mode"
    for proxy in (s.a, s.b):
        assert httpx.get(f"{proxy}/-/ready", timeout=10).status_code == 200, f"{proxy} is not ready"
    return s


@pytest.fixture(scope="module")
def agent_id(secure: Secure) -> str:
    """One agent on the secure server, made directly (not through a proxy), deleted afterwards."""
    sdk = Letta(base_url=secure.backend, api_key=secure.password, max_retries=0, timeout=60)
    agent = sdk.agents.create(name=unique("e2e-secure"), model=MODEL, embedding=EMBEDDING,
                              memory_blocks=[{"label": "human", "value": "A secret about the human."}])
    yield agent.id
    try:
        sdk.agents.delete(agent.id)
    except Exception:  # noqa: BLE001 - best effort
        pass


# ----------------------------------------------------------------------------- helpers ----

#: Valid credentials, by the header that carries them.
def good(kind: str, password: str) -> dict[str, str]:
    return {"bearer": {"Authorization": f"Bearer {password}"},
            "bare": {"X-BARE-PASSWORD": f"password {password}"}}[kind]


#: What must get Letta's 401 after a cached 200, by name. `other-header-wrong` puts a wrong value in
#: the header the filling request did NOT use.
def bad(variant: str, kind: str) -> dict[str, str]:
    wrong = "not-the-password"
    if variant == "none":
        return {}
    if variant == "wrong-password":
        return good(kind, wrong)
    if variant == "other-header-wrong":
        return good("bare" if kind == "bearer" else "bearer", wrong)
    raise ValueError(variant)


def get(base: str, path: str, headers: dict[str, str]) -> httpx.Response:
    return httpx.get(f"{base}{path}", headers={**BASE_HEADERS, **headers}, timeout=60)


def describe(r: httpx.Response) -> str:
    return f"HTTP {r.status_code}, x-cache {r.headers.get('x-cache', '-')}, body {r.text[:120]!r}"


def l2_stores(proxy: str) -> float:
    """letta_proxy_cache_stores_total{tier="l2"} of one instance."""
    text = httpx.get(f"{proxy}/metrics", timeout=10).text
    total = 0.0
    for m in STORES.finditer(text):
        if 'tier="l2"' in m["labels"]:
            total += float(m["value"])
    return total


def fill(secure: Secure, path: str, headers: dict[str, str], *, into_l2: bool) -> httpx.Response:
    """The filling read through instance A: 200 from the backend (a MISS). With `into_l2`, waits
    until A has stored an entry in Redis, so that instance B can only answer it through L2."""
    before = l2_stores(secure.a) if into_l2 else 0.0
    first = get(secure.a, path, headers)
    assert first.status_code == 200, f"valid credentials through the proxy: {describe(first)}"
    assert first.headers.get("x-cache") == "MISS", f"the first read of a fresh key must be a MISS: {describe(first)}"
    if into_l2:
        wait_until(lambda: l2_stores(secure.a) > before, timeout=15, interval=0.05,
                   what=f"instance A to store {path} in Redis (letta_proxy_cache_stores_total{{tier=\"l2\"}})")
    return first


def case_path(agent_id: str) -> str:
    return f"/v1/agents/{agent_id}?e2e_case={uuid.uuid4().hex[:12]}"


# ------------------------------------------------------------------------ the 401 cases ---

CREDENTIALS = ["bearer", "bare"]
VARIANTS = ["none", "wrong-password", "other-header-wrong"]


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("kind", CREDENTIALS)
def test_l1_a_cached_answer_never_reaches_a_caller_the_server_refuses(secure, agent_id, kind, variant):
    """Instance A stores the answer to a caller with the password (proven: the same read again is
    a HIT); the same read without valid credentials through A gets Letta's 401, not the entry."""
    path = case_path(agent_id)
    fill(secure, path, good(kind, secure.password), into_l2=False)
    again = get(secure.a, path, good(kind, secure.password))
    assert (again.status_code, again.headers.get("x-cache")) == (200, "HIT"), \
        f"control: the answer must be cached for its own caller: {describe(again)}"

    refused = get(secure.a, path, bad(variant, kind))
    assert refused.status_code == 401, \
        f"{kind} filled the cache; {variant} through the same instance must get Letta's 401: {describe(refused)}"
    assert refused.headers.get("x-cache") != "HIT"

    # A refusal is not stored and does not disturb the entry of the caller with the password.
    still = get(secure.a, path, good(kind, secure.password))
    assert (still.status_code, still.headers.get("x-cache")) == (200, "HIT"), describe(still)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("kind", CREDENTIALS)
def test_l2_a_shared_answer_never_reaches_a_caller_the_server_refuses(secure, agent_id, kind, variant):
    """Instance A stores the answer in Redis; instance B, which never saw the key, is asked the same
    read without valid credentials: Letta's 401. Then B serves the caller with the password from
    Redis (a HIT), which proves the entry was there to be (wrongly) served."""
    path = case_path(agent_id)
    fill(secure, path, good(kind, secure.password), into_l2=True)

    refused = get(secure.b, path, bad(variant, kind))
    assert refused.status_code == 401, \
        f"{kind} filled Redis through A; {variant} through B must get Letta's 401: {describe(refused)}"
    assert refused.headers.get("x-cache") != "HIT"

    shared = get(secure.b, path, good(kind, secure.password))
    assert (shared.status_code, shared.headers.get("x-cache")) == (200, "HIT"), \
        f"control: B must serve the caller with the password from Redis: {describe(shared)}"


def test_a_refusal_is_never_cached(secure, agent_id):
    """401 answers are not stored: the same refused read twice reaches the server twice, and a
    caller with the password right after gets the agent."""
    path = case_path(agent_id)
    for attempt in range(2):
        r = get(secure.a, path, {})
        assert r.status_code == 401, describe(r)
        assert r.headers.get("x-cache") != "HIT", f"attempt {attempt}: a 401 was served from the cache"
    ok = get(secure.a, path, good("bearer", secure.password))
    assert ok.status_code == 200 and ok.json()["id"] == agent_id, describe(ok)


# -------------------------------------------------------- other headers naming the caller ---

#: Headers that tell callers apart for Letta (X-Organization-Id: its git routes) or for a gateway
#: in front of it (Cookie sessions, Proxy-Authorization): two values never share an answer.
CALLER_HEADERS = {
    "Cookie": ("session=caller-one", "session=caller-two"),
    "Proxy-Authorization": ("Basic Y2FsbGVyOm9uZQ==", "Basic Y2FsbGVyOnR3bw=="),
    "X-Organization-Id": ("org-00000000-0000-4000-8000-000000000001", "org-00000000-0000-4000-8000-000000000002"),
}


@pytest.mark.parametrize("tier", ["l1", "l2"])
@pytest.mark.parametrize("header", list(CALLER_HEADERS))
def test_headers_naming_the_caller_never_share_an_answer(secure, agent_id, header, tier):
    """With the password in both requests, an answer stored for `header: one` is not served to
    `header: two`, nor to a request without the header (through A, or through B from Redis)."""
    one, two = CALLER_HEADERS[header]
    path = case_path(agent_id)
    creds = good("bearer", secure.password)
    fill(secure, path, {**creds, header: one}, into_l2=tier == "l2")
    reader = secure.a if tier == "l1" else secure.b
    for other in ({**creds, header: two}, creds):
        r = get(reader, path, other)
        assert r.status_code == 200, describe(r)
        x_cache = r.headers.get("x-cache")
        assert x_cache != "HIT", \
            f"the answer stored for {header}: {one} was served ({tier}) to {other.get(header, 'no ' + header)}: {describe(r)}"
    same = get(reader, path, {**creds, header: one})
    assert (same.status_code, same.headers.get("x-cache")) == (200, "HIT"), \
        f"control: the same caller again must be a HIT ({tier}): {describe(same)}"


# ------------------------------------------------------------------------------- the SDK ---

@pytest.mark.filterwarnings("ignore:deprecated:DeprecationWarning")
def test_sdk_with_the_password_works_end_to_end(secure):
    """letta-client with `api_key=<password>` through the proxy: create an agent, read it (the second
    read may be a HIT), send a message, stream one, read the history; through the other instance
    too. Without the password, or with a wrong one, the SDK gets 401 (AuthenticationError) on the
    very read that was just cached."""
    sdk = Letta(base_url=secure.a, api_key=secure.password, max_retries=0, timeout=60)
    agent = sdk.agents.create(name=unique("e2e-secure-sdk"), model=MODEL, embedding=EMBEDDING,
                              memory_blocks=[{"label": "human", "value": "The human's name is Ada."}])
    try:
        for _ in range(2):
            assert sdk.agents.retrieve(agent.id).id == agent.id

        text = unique("hello")
        reply = sdk.agents.messages.create(agent.id, input=text)
        assert [m.content for m in reply.messages if m.message_type == "assistant_message"] == [f"echo: {text}"]

        text = unique("stream")
        events = list(sdk.agents.messages.stream(agent.id, input=text))  # deprecated in 1.12, still used
        kinds = [e.message_type for e in events if e.message_type != "ping"]
        assert kinds == ["assistant_message", "stop_reason", "usage_statistics"], kinds

        history = sdk.agents.messages.list(agent.id, limit=50).items
        assert any(text in str(getattr(m, "content", "")) for m in history)

        other = Letta(base_url=secure.b, api_key=secure.password, max_retries=0, timeout=60)
        assert other.agents.retrieve(agent.id).id == agent.id

        for base in (secure.a, secure.b):
            for key in (None, "not-the-password"):
                intruder = Letta(base_url=base, api_key=key, max_retries=0, timeout=60)
                with pytest.raises(AuthenticationError):
                    intruder.agents.retrieve(agent.id)
    finally:
        sdk.agents.delete(agent.id)


def test_sdk_with_the_ade_password_header_does_not_open_the_cache_to_others(secure, agent_id):
    """The ADE's way, `X-BARE-PASSWORD`, as an SDK default header: the SDK reads the agent twice
    through A (the second may be a HIT); an SDK client without credentials then gets 401 for the
    same read, through A and through B."""
    ade = Letta(base_url=secure.a, default_headers={"X-BARE-PASSWORD": f"password {secure.password}"},
                max_retries=0, timeout=60)
    before = l2_stores(secure.a)
    for _ in range(2):
        assert ade.agents.retrieve(agent_id).id == agent_id
    wait_until(lambda: l2_stores(secure.a) > before, timeout=15, interval=0.05,
               what="instance A to store the SDK's read in Redis")
    for base in (secure.a, secure.b):
        with pytest.raises(AuthenticationError):
            Letta(base_url=base, max_retries=0, timeout=60).agents.retrieve(agent_id)
