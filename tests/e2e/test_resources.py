"""Folders, sources and tools: the lookups clients repeat most, through the target.

In Letta 0.16.8 a folder *is* a source: `client.folders.create` returns an id `source-…` that
`/v1/sources/{id}` serves too.
"""

from __future__ import annotations

import io

import pytest
from letta_client import Letta

from helpers import EMBEDDING, unique, wait_until

READS = 4


@pytest.fixture
def folder(client: Letta):
    created = client.folders.create(name=unique("e2e-folder"), embedding=EMBEDDING)
    yield created
    client.folders.delete(created.id)


def test_folder_list_and_get(client: Letta, folder):
    """A new folder is in the folder list and readable by id, on every read."""
    for _ in range(READS):
        assert folder.id in {f.id for f in client.folders.list()}
        assert client.folders.retrieve(folder.id).name == folder.name


def test_folder_is_served_as_a_source(http, folder):
    """GET /v1/sources/{id} and /v1/sources/ (the older API, no SDK method in 1.12) serve the
    folder: same id, same name, same embedding handle."""
    for _ in range(READS):
        source = http.get(f"/v1/sources/{folder.id}")
        assert source.status_code == 200, source.text
        assert (source.json()["name"], source.json()["embedding_config"]["handle"]) == (folder.name, EMBEDDING)
        listed = http.get("/v1/sources/")
        assert listed.status_code == 200
        assert folder.id in {s["id"] for s in listed.json()}


def test_file_upload_to_folder_is_processed_and_listed(client: Letta, folder):
    """A multipart upload through the target reaches Letta whole: Letta parses and embeds the
    file (via the fake LLM's embeddings), and the folder then lists it as completed."""
    upload = client.folders.files.upload(
        folder.id, file=("notes.txt", io.BytesIO(b"letta-proxy e2e notes\nline two\n"), "text/plain"))
    assert upload.id.startswith("file-")

    def completed():
        files = list(client.folders.files.list(folder.id))
        return files if files and files[0].processing_status == "completed" else None

    files = wait_until(completed, timeout=30, what="the uploaded file to be processed")
    assert [f.id for f in files] == [upload.id]
    assert files[0].file_name == "notes.txt"
    assert files[0].processing_status == "completed"


def test_tool_list_and_get(client: Letta):
    """GET /v1/tools/ lists Letta's built-in tools; each listed id reads back as the same tool."""
    tools = list(client.tools.list(limit=100))
    names = {t.name for t in tools}
    assert {"send_message", "memory_insert", "conversation_search"} <= names, sorted(names)
    sample = next(t for t in tools if t.name == "send_message")
    for _ in range(READS):
        assert client.tools.retrieve(sample.id).name == "send_message"


def test_agent_tools_match_the_tool_catalogue(client: Letta, agent):
    """GET /v1/agents/{id}/tools: the agent's tools are real catalogue entries."""
    attached = list(client.agents.tools.list(agent.id))
    assert attached, "a new agent has its base tools attached"
    for tool in attached:
        assert client.tools.retrieve(tool.id).name == tool.name
