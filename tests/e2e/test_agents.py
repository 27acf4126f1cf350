"""Agents: create, list, get, update and delete through the target with the official SDK.

With two Letta servers on one database behind the proxy, consecutive calls land on different
servers, so each read-after-write here also checks that no replica (and no proxy cache) serves an
old answer.
"""

from __future__ import annotations

import pytest
from letta_client import Letta, NotFoundError

from helpers import BACKEND_HEADER, EMBEDDING, MODEL, unique

READS = 6  # enough consecutive reads to hit every backend under round robin, and a cache


def test_create_agent_returns_what_was_asked(make_agent):
    """POST /v1/agents/ creates a real agent: the SDK parses Letta's answer, the id has Letta's
    prefix, and the model, embedding and name we sent come back."""
    name = unique("e2e-create")
    agent = make_agent(name=name)
    assert agent.id.startswith("agent-")
    assert agent.name == name
    assert agent.llm_config.handle == MODEL
    assert agent.embedding_config.handle == EMBEDDING


def test_memory_blocks_given_at_creation_are_stored(client: Letta, make_agent):
    """The memory blocks of the create request are stored and readable by label."""
    agent = make_agent()
    blocks = {b.label: b.value for b in client.agents.blocks.list(agent.id)}
    assert blocks["human"] == "The human's name is Ada."
    assert blocks["persona"] == "I am a test agent behind letta-proxy."


def test_list_finds_the_new_agent_by_name(client: Letta, make_agent):
    """GET /v1/agents/?name=… finds an agent created a moment before, on every read."""
    agent = make_agent()
    for _ in range(READS):
        found = client.agents.list(name=agent.name).items
        assert [a.id for a in found] == [agent.id]


def test_get_answers_the_same_agent_from_every_replica(client: Letta, target, make_agent):
    """GET /v1/agents/{id} right after creation answers 200 with that agent on every call. Each
    call has a unique query parameter, so no cache can answer it: through the proxy the calls
    reach both Letta servers, and both already know the agent (they share one database)."""
    agent = make_agent()
    seen_backends = set()
    for _ in range(READS):
        raw = client.agents.with_raw_response.retrieve(agent.id, extra_query={"e2e_nonce": unique("n")})
        assert raw.parse().id == agent.id
        seen_backends.add(raw.headers.get(BACKEND_HEADER))
    if target.is_proxy:
        assert seen_backends == {b.name for b in target.backends}, seen_backends


def test_update_is_visible_on_every_following_read(client: Letta, make_agent):
    """PATCH /v1/agents/{id} then GET: every later read shows the new values, even though the agent
    was read (and may have been cached) before the write."""
    agent = make_agent()
    for _ in range(2):  # warm every replica and any cache with the old state
        assert client.agents.retrieve(agent.id).description in (None, "")
    new_name = unique("e2e-renamed")
    updated = client.agents.update(agent.id, name=new_name, description="patched through the proxy")
    assert updated.name == new_name
    for _ in range(READS):
        current = client.agents.retrieve(agent.id)
        assert (current.name, current.description) == (new_name, "patched through the proxy")


def test_deleted_agent_is_gone_for_every_reader(client: Letta, make_agent):
    """DELETE /v1/agents/{id}: every later GET is a 404 (the SDK raises NotFoundError), even
    though the agent was read just before."""
    agent = make_agent()
    for _ in range(2):
        client.agents.retrieve(agent.id)
    client.agents.delete(agent.id)
    for _ in range(READS):
        with pytest.raises(NotFoundError):
            client.agents.retrieve(agent.id)
    assert client.agents.list(name=agent.name).items == []
