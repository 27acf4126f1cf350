"""HTTP-level behaviour of the proxy in front of real Letta servers: trailing-slash redirects,
the spread of traffic over both servers, per-backend metrics and the proxy's own endpoints.
"""

from __future__ import annotations

from collections import Counter
from urllib.parse import urlsplit

import pytest
from letta_client import Letta

from helpers import BACKEND_HEADER, REQUEST_ID_HEADER, backend_counters, unique

SPREAD_REQUESTS = 20


def test_collection_without_slash_redirects_to_the_target_itself(http, target):
    """GET /v1/agents (no slash) answers 307 whose Location is the collection `/v1/agents/` on the
    host:port the client used — never a backend's address, which the client may not reach."""
    response = http.get("/v1/agents", params={"limit": 1}, follow_redirects=False)
    assert response.status_code == 307
    location = urlsplit(response.headers["location"])
    assert (location.path, location.query) == ("/v1/agents/", "limit=1")
    if location.netloc:  # an absolute URL (Letta builds one from Host)
        assert location.netloc == target.netloc
        if target.is_proxy:
            assert location.netloc not in {b.netloc for b in target.backends}


def test_item_with_slash_redirects_to_the_item(http, target, agent):
    """GET /v1/agents/{id}/ (extra slash) answers 307 to /v1/agents/{id} on the target."""
    response = http.get(f"/v1/agents/{agent.id}/", follow_redirects=False)
    assert response.status_code == 307
    location = urlsplit(response.headers["location"])
    assert location.path == f"/v1/agents/{agent.id}"
    assert location.netloc in ("", target.netloc)


def test_redirect_is_followed_to_the_right_answer(http, client: Letta, agent):
    """Following the 307 (httpx and the SDK both do) ends in the real collection answer."""
    followed = http.get("/v1/agents", params={"name": agent.name}, follow_redirects=True)
    assert followed.status_code == 200
    assert [a["id"] for a in followed.json()] == [agent.id]
    assert [r.status_code for r in followed.history] == [307]
    via_sdk = client.get("/v1/agents", cast_to=object, options={"params": {"name": agent.name}})
    assert [a["id"] for a in via_sdk] == [agent.id]


def test_redirected_post_creates_exactly_one_block(http, client: Letta):
    """POST /v1/blocks (no slash) is answered 307 and re-sent by the client to /v1/blocks/: the
    block exists exactly once — the non-idempotent POST was not executed twice along the way."""
    label = unique("e2e-redirect")
    response = http.post("/v1/blocks", json={"label": label, "value": "made through a 307"},
                         follow_redirects=True)
    assert [r.status_code for r in response.history] == [307]
    assert response.status_code == 200, response.text
    block_id = response.json()["id"]
    try:
        assert [b.id for b in client.blocks.list(label=label)] == [block_id]
    finally:
        client.blocks.delete(block_id)


@pytest.mark.proxy_only
def test_every_proxied_response_names_its_backend_and_request(http, target):
    """Every proxied answer carries `x-letta-proxy-backend` (a configured backend name) and an
    `x-request-id`, unique per request."""
    names = {b.name for b in target.backends}
    ids = set()
    for i in range(6):
        response = http.get("/v1/tools/", params={"limit": 1, "e2e_nonce": unique(str(i))})
        assert response.status_code == 200
        assert response.headers.get(BACKEND_HEADER) in names
        ids.add(response.headers.get(REQUEST_ID_HEADER))
    assert None not in ids and len(ids) == 6


@pytest.mark.proxy_only
def test_traffic_is_spread_over_both_servers_and_counted(http, target):
    """~20 uncacheable GETs (a unique query each) are answered by both Letta servers, and the
    per-backend counters in /metrics grow by at least what each backend answered."""
    before = backend_counters(http.get("/metrics").text)
    answered_by = Counter()
    for i in range(SPREAD_REQUESTS):
        response = http.get("/v1/tools/", params={"limit": 1, "e2e_nonce": unique(str(i))})
        assert response.status_code == 200
        answered_by[response.headers[BACKEND_HEADER]] += 1
    after = backend_counters(http.get("/metrics").text)

    names = {b.name for b in target.backends}
    assert set(answered_by) == names, answered_by
    assert min(answered_by.values()) >= 3, f"one server got almost nothing: {answered_by}"
    for name in names:
        grew = after.get(name, 0.0) - before.get(name, 0.0)
        assert grew >= answered_by[name], f"{name}: counter grew {grew}, answered {answered_by[name]}"


@pytest.mark.proxy_only
def test_metrics_endpoint_is_prometheus_text(http, target):
    """GET /metrics is the proxy's own Prometheus text (not forwarded to Letta), with one
    request counter series per configured backend."""
    for _ in range(2 * len(target.backends)):
        http.get("/v1/health/")
    response = http.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    assert "# TYPE letta_proxy_backend_requests_total counter" in response.text
    assert set(backend_counters(response.text)) >= {b.name for b in target.backends}


@pytest.mark.proxy_only
def test_health_endpoints_belong_to_the_proxy(http):
    """/-/healthy and /-/ready are answered by the proxy itself (Letta has neither): 200 while the
    proxy runs with usable backends."""
    assert http.get("/-/healthy").status_code == 200
    assert http.get("/-/ready").status_code == 200
