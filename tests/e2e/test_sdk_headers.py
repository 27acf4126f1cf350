"""The SDK's own headers reach Letta untouched, so behaviour Letta reserves for SDK clients works.

What Letta 0.16.8 does with them (letta/utils.py `is_1_0_sdk_version`, dependencies.py):
- `X-Stainless-Package-Version` present, or `User-Agent: letta-client/1.x`, marks a "v1.0+ SDK"
  client. Only such clients may send `"streaming": true` to POST …/messages (others get 422),
  and their agent lists leave out relationships (blocks, tools) unless asked for them.
  The Python SDK's own User-Agent (`Letta/Python 1.12.1`) does not qualify: the Stainless header
  is what makes Letta treat it as an SDK.
- `X-Project-Id` scopes tool listings to a project (plus the global tools).
- `X-Project` (a project slug) is only read by Letta Cloud's front end: the OSS server ignores it,
  so here it can only be checked not to break anything.
Every check below would fail if the proxy dropped, renamed or rewrote these headers, or if a cache
served one kind of client the answer meant for another.
"""

from __future__ import annotations

import pytest
from letta_client import Letta

from helpers import stream_post, unique

SDK_ONLY = "streaming=true is only supported for SDK v1.0+ clients."

PROBE_TOOL = '''
def {name}(x: int) -> int:
    """Return x plus one.

    Args:
        x: the number to increment

    Returns:
        int: x + 1
    """
    return x + 1
'''


def test_sdk_can_ask_for_a_streamed_reply_on_the_messages_route(client: Letta, agent):
    """`messages.create(..., streaming=True)` — POST …/messages with `"streaming": true` — is
    accepted from the SDK and answers an SSE stream with the agent's reply."""
    text = unique("sdk-streaming")
    events = list(client.agents.messages.create(agent.id, input=text, streaming=True))
    replies = [e.content for e in events if e.message_type == "assistant_message"]
    assert replies == [f"echo: {text}"]


def test_the_same_body_without_sdk_headers_is_refused(http, agent):
    """The identical request from a plain HTTP client (no X-Stainless-*, User-Agent python-httpx)
    gets Letta's 422: the SDK test above passes only because its headers reached Letta."""
    response = http.post(f"/v1/agents/{agent.id}/messages", json={"input": "plain", "streaming": True})
    assert response.status_code == 422
    assert response.json()["detail"] == SDK_ONLY


def test_user_agent_alone_is_passed_through(http, agent):
    """A plain client whose only SDK marker is `User-Agent: letta-client/1.12.1` is accepted too:
    the User-Agent itself reaches Letta unchanged."""
    text = unique("ua")
    stream = stream_post(http, f"/v1/agents/{agent.id}/messages",
                         {"input": text, "streaming": True},
                         headers={"User-Agent": "letta-client/1.12.1"})
    assert [e["content"] for e in stream.of_type("assistant_message")] == [f"echo: {text}"]
    assert stream.data[-1] == "[DONE]"


def test_agent_list_shape_follows_the_caller(client: Letta, http, agent):
    """GET /v1/agents/ answers SDK callers without relationships and plain callers with them,
    alternately and repeatedly: a shared cache must keep the two shapes apart."""
    for _ in range(3):
        raw = client.agents.with_raw_response.list(name=agent.name)
        sdk_view = raw.http_response.json()
        plain_view = http.get("/v1/agents/", params={"name": agent.name}).json()
        assert [a["id"] for a in sdk_view] == [a["id"] for a in plain_view] == [agent.id]
        assert sdk_view[0]["tools"] == [] and sdk_view[0]["blocks"] == []
        assert plain_view[0]["tools"], "plain clients get the agent's tools"
        assert {b["label"] for b in plain_view[0]["blocks"]} == {"human", "persona"}


@pytest.fixture
def project_tool(target):
    """A tool created by an SDK client of project A (X-Project-Id and X-Project set)."""
    name = unique("e2e_probe").replace("-", "_")
    project_a = Letta(base_url=target.url, max_retries=0, project_id=unique("project-a"),
                      project=unique("slug-a"))
    tool = project_a.tools.create(source_code=PROBE_TOOL.format(name=name))
    yield project_a, tool
    project_a.tools.delete(tool.id)


def test_project_header_scopes_tool_listings(target, project_tool):
    """A tool created with `X-Project-Id: A` belongs to project A: project A lists it, project B
    does not, and a caller without the header (no project filter) does, on repeated reads."""
    project_a, tool = project_tool
    assert tool.project_id == project_a.project_id
    project_b = Letta(base_url=target.url, max_retries=0, project_id=unique("project-b"),
                      project=unique("slug-b"))
    no_project = Letta(base_url=target.url, max_retries=0)
    for _ in range(3):
        assert [t.id for t in project_a.tools.list(name=tool.name)] == [tool.id]
        assert [t.id for t in project_b.tools.list(name=tool.name)] == []
        assert [t.id for t in no_project.tools.list(name=tool.name)] == [tool.id]
