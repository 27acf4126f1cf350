"""The proxy's response cache with real Letta servers and the official SDK.

Every read below is made at least twice before a write (so a cache holds it: `x-cache: HIT`
through the proxy) and again after the write: each later read must show the write, whichever
replica and whichever cache tier answers. The two Letta servers share one database and the
proxy's Redis, so a stale answer could only come from a cache.

Against a bare Letta server the correctness checks still run; the `x-cache` checks are
`proxy_only`.
"""

from __future__ import annotations

import pytest
from letta_client import Letta

from helpers import unique

READS = 4


def x_cache(raw) -> str:
    return raw.headers.get("x-cache", "-")


def context(client: Letta, agent_id: str) -> dict:
    return client.get(f"/v1/agents/{agent_id}/context", cast_to=object)


def warm(read, times: int = 2):
    """Reads twice, so the second answer may come from a cache; returns the last value."""
    value = None
    for _ in range(times):
        value = read()
    return value


def test_a_message_changes_the_agent_its_context_and_history(client: Letta, agent):
    """A turn (POST …/messages) changes the agent's context window and message history: reads
    cached before the turn are not served after it."""
    before_ctx = warm(lambda: context(client, agent.id))
    before_history = warm(lambda: client.agents.messages.list(agent.id, limit=100).items)
    warm(lambda: client.agents.blocks.list(agent.id))

    text = unique("turn")
    client.agents.messages.create(agent.id, input=text)

    for _ in range(READS):
        ctx = context(client, agent.id)
        assert ctx["num_messages"] > before_ctx["num_messages"], "context window is from before the turn"
        history = client.agents.messages.list(agent.id, limit=100).items
        assert len(history) > len(before_history)
        assert any(text in str(getattr(m, "content", "")) for m in history)
        labels = {b.label for b in client.agents.blocks.list(agent.id)}
        assert labels == {"human", "persona"}


def test_a_block_update_changes_every_agent_holding_it(client: Letta, make_agent):
    """A block shared by two agents, read through both agents (and by id), then updated with
    `blocks.update`: every reader sees the new value at once."""
    shared = client.blocks.create(label="team", value="The team motto is 'ship it'.")
    try:
        first = make_agent(block_ids=[shared.id])
        second = make_agent(block_ids=[shared.id])
        readers = [
            lambda: {b.label: b.value for b in client.agents.blocks.list(first.id)}["team"],
            lambda: {b.label: b.value for b in client.agents.blocks.list(second.id)}["team"],
            lambda: client.agents.blocks.retrieve("team", agent_id=second.id).value,
            lambda: client.blocks.retrieve(shared.id).value,
            lambda: {b.label: b.value for b in client.agents.retrieve(first.id, include=["agent.blocks"]).memory.blocks}["team"],
        ]
        for read in readers:
            assert warm(read) == shared.value

        new_value = f"The team motto is now {unique('motto')!r}."
        client.blocks.update(shared.id, value=new_value)

        for _ in range(READS):
            for i, read in enumerate(readers):
                assert read() == new_value, f"reader {i} served the old value"
    finally:
        client.blocks.delete(shared.id)


def test_a_core_memory_write_by_label_is_seen_through_every_route(client: Letta, agent):
    """PATCH core-memory/blocks/{label} (the agent route) is seen by id (the global route) and
    in the agent's core memory, though all three were cached before."""
    block = warm(lambda: client.agents.blocks.retrieve("human", agent_id=agent.id))
    warm(lambda: client.blocks.retrieve(block.id))
    warm(lambda: client.get(f"/v1/agents/{agent.id}/core-memory", cast_to=object))

    new_value = f"The human's name is Grace ({unique('v')})."
    client.agents.blocks.update("human", agent_id=agent.id, value=new_value)

    for _ in range(READS):
        assert client.blocks.retrieve(block.id).value == new_value
        core = client.get(f"/v1/agents/{agent.id}/core-memory", cast_to=object)
        assert {b["label"]: b["value"] for b in core["blocks"]}["human"] == new_value


def test_agent_updates_and_deletes_are_seen_by_lists_and_reads(client: Letta, make_agent):
    """A rename changes the agent and the lists that find it by name; a delete removes it."""
    agent = make_agent()
    warm(lambda: client.agents.retrieve(agent.id))
    assert [a.id for a in warm(lambda: client.agents.list(name=agent.name).items)] == [agent.id]

    new_name = unique("e2e-renamed")
    client.agents.update(agent.id, name=new_name)
    for _ in range(READS):
        assert client.agents.retrieve(agent.id).name == new_name
        assert client.agents.list(name=agent.name).items == []
        assert [a.id for a in client.agents.list(name=new_name).items] == [agent.id]

    client.agents.delete(agent.id)
    for _ in range(READS):
        assert client.agents.list(name=new_name).items == []


@pytest.mark.proxy_only
def test_reads_are_cached_and_a_write_makes_them_misses(client: Letta, agent):
    """Through the proxy: the second identical read is a HIT with an `age`; after a write to
    the agent the next read is a MISS again."""
    first = client.agents.with_raw_response.retrieve(agent.id)
    second = client.agents.with_raw_response.retrieve(agent.id)
    assert (x_cache(first), x_cache(second)) == ("MISS", "HIT")
    assert int(second.headers["age"]) >= 0
    assert second.parse().id == agent.id

    client.agents.update(agent.id, description=unique("desc"))
    after = client.agents.with_raw_response.retrieve(agent.id)
    assert x_cache(after) == "MISS"


@pytest.mark.proxy_only
def test_two_api_keys_never_share_a_cached_answer(target, agent):
    """Two SDK users with different API keys read the same agent: each one's first read is a
    MISS though the other's answer is cached (in memory and in Redis), and each gets its own
    entry back afterwards."""
    alice = Letta(base_url=target.url, api_key=unique("key-alice"), max_retries=0, timeout=60)
    bob = Letta(base_url=target.url, api_key=unique("key-bob"), max_retries=0, timeout=60)

    a1 = alice.agents.with_raw_response.retrieve(agent.id)
    a2 = alice.agents.with_raw_response.retrieve(agent.id)
    assert (x_cache(a1), x_cache(a2)) == ("MISS", "HIT")

    b1 = bob.agents.with_raw_response.retrieve(agent.id)
    assert x_cache(b1) == "MISS", "bob was served alice's cached answer"
    b2 = bob.agents.with_raw_response.retrieve(agent.id)
    assert x_cache(b2) == "HIT"

    # A write by one user makes the agent stale for both.
    bob.agents.update(agent.id, description=unique("by-bob"))
    assert x_cache(alice.agents.with_raw_response.retrieve(agent.id)) == "MISS"
    assert x_cache(bob.agents.with_raw_response.retrieve(agent.id)) == "MISS"


@pytest.mark.proxy_only
def test_no_cache_bypasses_the_cache(client: Letta, agent):
    """`Cache-Control: no-cache` from the client skips the cache (BYPASS) and refreshes it."""
    client.agents.retrieve(agent.id)
    raw = client.agents.with_raw_response.retrieve(agent.id, extra_headers={"Cache-Control": "no-cache"})
    assert x_cache(raw) == "BYPASS"
    assert x_cache(client.agents.with_raw_response.retrieve(agent.id)) == "HIT"
