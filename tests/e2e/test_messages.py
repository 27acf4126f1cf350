"""Agent turns: send a message, stream a message (SDK and raw SSE), read the history back.

The fake LLM (kit/fake_llm.py) answers every user message with `echo: <message>`
(plain text for Letta 0.16.8's default `letta_v1_agent`, which Letta returns as an
`assistant_message`), so every reply is known in advance.
"""

from __future__ import annotations

import pytest
from letta_client import Letta

from helpers import BACKEND_HEADER, REQUEST_ID_HEADER, stream_post, unique

# Long enough that the fake LLM streams it in many pieces (it cuts tool arguments every 16 chars).
LONG_TEXT = (
    "The quick brown fox jumps over the lazy dog; then the dog wakes up, chases the fox twice "
    "around the yard, and both of them fall asleep in the sun. " + "0123456789" * 4
)
#: Minimum time between the first event and `[DONE]` for a stream relayed as it is produced
#: (direct from Letta 0.16.8 with the fake LLM it is 60-100 ms; a buffered stream shows < 1 ms).
MIN_GAP_S = 0.010


def assistant_texts(messages) -> list[str]:
    return [m.content for m in messages if m.message_type == "assistant_message"]


def test_send_message_returns_the_agents_reply(client: Letta, agent):
    """POST /v1/agents/{id}/messages runs one real agent turn: the reply is the fake LLM's echo,
    and the run ends normally."""
    text = unique("hello")
    response = client.agents.messages.create(agent.id, input=text)
    assert assistant_texts(response.messages) == [f"echo: {text}"]
    assert response.stop_reason.stop_reason == "end_turn"


def test_history_shows_the_new_turn_on_every_read(client: Letta, agent):
    """After a turn, GET /v1/agents/{id}/messages shows the user message and the reply, on every
    read, though the history was read (and possibly cached) before the turn."""
    before = client.agents.messages.list(agent.id, limit=50, order="asc").items
    text = unique("remember")
    client.agents.messages.create(agent.id, input=text)
    for _ in range(4):
        history = client.agents.messages.list(agent.id, limit=50, order="asc").items
        assert len(history) > len(before)
        users = [m for m in history if m.message_type == "user_message"]
        assert any(text in str(m.content) for m in users), "the user message is missing"
        assert assistant_texts(history)[-1] == f"echo: {text}"


@pytest.mark.filterwarnings("ignore:deprecated:DeprecationWarning")
def test_sdk_stream_yields_each_event_in_order(client: Letta, agent):
    """POST …/messages/stream via the SDK (`messages.stream`, deprecated in letta-client 1.12 in
    favour of `messages.create(streaming=True)` but still what many clients call): the events
    arrive parsed and in Letta's order (assistant message, then stop reason, then usage), with
    the expected reply."""
    text = unique("stream")
    events = list(client.agents.messages.stream(agent.id, input=text))
    kinds = [e.message_type for e in events if e.message_type != "ping"]
    assert kinds == ["assistant_message", "stop_reason", "usage_statistics"], kinds
    assert assistant_texts(events) == [f"echo: {text}"]


def test_raw_token_stream_is_complete_ordered_and_ends_with_done(http, target, agent):
    """Raw SSE from POST …/messages/stream with stream_tokens: the reply arrives in many chunks
    whose concatenation is exactly the reply (nothing lost, duplicated or reordered), every
    `data:` payload but the last is JSON, and the very last one is `[DONE]`."""
    stream = stream_post(http, f"/v1/agents/{agent.id}/messages/stream",
                         {"input": LONG_TEXT, "stream_tokens": True})

    assert stream.headers["content-type"].startswith("text/event-stream")
    assert stream.data[-1] == "[DONE]"
    assert stream.data.count("[DONE]") == 1

    chunks = [e["content"] for e in stream.of_type("assistant_message")]
    assert len(chunks) >= 5, f"expected a token stream, got {len(chunks)} chunk(s)"
    assert "".join(chunks) == f"echo: {LONG_TEXT}"

    kinds = [e["message_type"] for e in stream.events if e["message_type"] != "ping"]
    first_after_reply = kinds.index("stop_reason")
    assert set(kinds[:first_after_reply]) == {"assistant_message"}
    assert kinds[first_after_reply:] == ["stop_reason", "usage_statistics"]
    if target.is_proxy:
        assert stream.headers.get(BACKEND_HEADER) in {b.name for b in target.backends}
        assert stream.headers.get(REQUEST_ID_HEADER)


def test_streamed_reply_is_stored_in_history(client: Letta, http, agent):
    """The reply streamed through the target is the one Letta stored: the last assistant message
    in the history equals the concatenated chunks."""
    stream = stream_post(http, f"/v1/agents/{agent.id}/messages/stream",
                         {"input": LONG_TEXT, "stream_tokens": True})
    streamed = "".join(e["content"] for e in stream.of_type("assistant_message"))
    history = client.agents.messages.list(agent.id, limit=50, order="asc").items
    assert assistant_texts(history)[-1] == streamed


def test_stream_is_relayed_as_produced_not_buffered(http, agent):
    """The first SSE event (Letta's `ping`, sent before it even calls the LLM) reaches the client
    well before `[DONE]`: the stream is relayed event by event, not collected and sent at the end.

    Letta spends tens of milliseconds between its ping and the end of the turn (context
    compilation, the LLM call); a buffering hop would deliver everything within a millisecond.
    The best of three streams must show a gap of at least MIN_GAP_S.
    """
    gaps = []
    for _ in range(3):
        stream = stream_post(http, f"/v1/agents/{agent.id}/messages/stream",
                             {"input": unique("timing"), "stream_tokens": True})
        assert stream.events[0]["message_type"] == "ping" and stream.data[-1] == "[DONE]"
        gaps.append(stream.arrivals[-1] - stream.arrivals[0])
    assert max(gaps) >= MIN_GAP_S, f"first event and [DONE] arrived together: gaps {gaps}"
