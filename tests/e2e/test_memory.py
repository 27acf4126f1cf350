"""Memory blocks and core memory: read and modify them through the target.

A block can be reached by two routes, `/v1/agents/{id}/core-memory/blocks/{label}` and
`/v1/blocks/{block_id}`; a write through one must be visible through the other on every replica.
"""

from __future__ import annotations

from letta_client import Letta

from helpers import unique

READS = 6


def test_read_block_by_label_and_by_id(client: Letta, agent):
    """The same block read by label (agent route) and by id (global route) is one object."""
    by_label = client.agents.blocks.retrieve("human", agent_id=agent.id)
    assert by_label.id.startswith("block-")
    by_id = client.blocks.retrieve(by_label.id)
    assert (by_id.id, by_id.label, by_id.value) == (by_label.id, "human", "The human's name is Ada.")


def test_block_update_by_label_is_seen_by_every_reader(client: Letta, agent):
    """PATCH core-memory/blocks/{label}: the new value is read back on every following GET, by
    label and by block id, though both were read (and possibly cached) before the write."""
    block = client.agents.blocks.retrieve("human", agent_id=agent.id)
    client.blocks.retrieve(block.id)  # warm the second route too

    new_value = f"The human's name is Grace ({unique('v')})."
    updated = client.agents.blocks.update("human", agent_id=agent.id, value=new_value)
    assert updated.value == new_value

    for _ in range(READS):
        assert client.agents.blocks.retrieve("human", agent_id=agent.id).value == new_value
        assert client.blocks.retrieve(block.id).value == new_value


def test_block_update_by_id_changes_the_agents_core_memory(client: Letta, agent):
    """PATCH /v1/blocks/{id} (global route) changes what the agent's core memory shows: the block
    list of the agent and its raw core-memory view both carry the new value."""
    persona = client.agents.blocks.retrieve("persona", agent_id=agent.id)
    assert {b.label for b in client.agents.blocks.list(agent.id)} == {"human", "persona"}

    new_value = f"I am a patched persona ({unique('v')})."
    client.blocks.update(persona.id, value=new_value)

    for _ in range(READS):
        values = {b.label: b.value for b in client.agents.blocks.list(agent.id)}
        assert values["persona"] == new_value
    core = client.get(f"/v1/agents/{agent.id}/core-memory", cast_to=object)
    assert {b["label"]: b["value"] for b in core["blocks"]}["persona"] == new_value


def test_agent_with_blocks_included_shows_the_current_value(client: Letta, agent):
    """GET /v1/agents/{id}?include=agent.blocks after a block write: the agent's embedded
    memory is the new one (the SDK omits relationships unless asked)."""
    before = client.agents.retrieve(agent.id, include=["agent.blocks"])
    assert {b.label for b in before.memory.blocks} == {"human", "persona"}

    new_value = f"Core memory rewritten ({unique('v')})."
    client.agents.blocks.update("human", agent_id=agent.id, value=new_value)

    for _ in range(READS):
        after = client.agents.retrieve(agent.id, include=["agent.blocks"])
        assert {b.label: b.value for b in after.memory.blocks}["human"] == new_value
