"""Small helpers shared by the end-to-end tests (no fixtures here: see conftest.py)."""

from __future__ import annotations

import json
import re
import time
import uuid
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, TypeVar

import httpx

T = TypeVar("T")

#: Model handles served by kit/fake_llm.py through Letta's OpenAI provider.
MODEL = "openai-proxy/gpt-4o-mini"
EMBEDDING = "openai/text-embedding-3-small"

#: Header the proxy adds to every proxied response: the name of the backend that answered.
BACKEND_HEADER = "x-letta-proxy-backend"
#: Header the proxy adds (or passes through) on every proxied response.
REQUEST_ID_HEADER = "x-request-id"
#: Prometheus counter family with one series per backend (and more labels).
BACKEND_COUNTER = "letta_proxy_backend_requests_total"


def unique(prefix: str) -> str:
    """A name no other test (or earlier run against the same database) uses."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def wait_until(predicate: Callable[[], T], *, timeout: float, interval: float = 0.25, what: str) -> T:
    """Poll `predicate` until it returns something truthy; fail with `what` after `timeout` seconds.

    Exceptions raised by the predicate count as "not yet" (the last one is reported).
    """
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:  # noqa: BLE001 - reported below if we time out
            last_error = exc
        if time.monotonic() >= deadline:
            detail = f" (last error: {last_error!r})" if last_error else ""
            raise AssertionError(f"timed out after {timeout}s waiting for {what}{detail}")
        time.sleep(interval)


def backend_counters(metrics_text: str) -> dict[str, float]:
    """Sum `letta_proxy_backend_requests_total` over all label sets, per `backend` label."""
    totals: dict[str, float] = {}
    pattern = re.compile(rf"^{BACKEND_COUNTER}\{{(?P<labels>[^}}]*)\}}\s+(?P<value>\S+)")
    for line in metrics_text.splitlines():
        match = pattern.match(line)
        if not match:
            continue
        labels = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', match["labels"]))
        backend = labels.get("backend")
        if backend is not None:
            totals[backend] = totals.get(backend, 0.0) + float(match["value"])
    return totals


@dataclass
class SseStream:
    """What a raw Server-Sent Events response carried, in arrival order."""

    status_code: int
    headers: httpx.Headers
    #: every `data:` payload, verbatim, in the order it arrived (including the final "[DONE]")
    data: list[str] = field(default_factory=list)
    #: time.monotonic() at which each payload of `data` was complete at the client
    arrivals: list[float] = field(default_factory=list)

    @property
    def events(self) -> list[dict]:
        """The JSON events (everything but the `[DONE]` sentinel)."""
        return [json.loads(d) for d in self.data if d != "[DONE]"]

    def of_type(self, message_type: str) -> list[dict]:
        return [e for e in self.events if e.get("message_type") == message_type]


def read_sse(lines: Iterable[str]) -> Iterator[str]:
    """Yield the `data:` payload of each SSE event (a blank-line-terminated block) as it completes."""
    buffer: list[str] = []
    for line in lines:
        if line == "":
            if buffer:
                yield "\n".join(buffer)
                buffer = []
            continue
        if line.startswith("data:"):
            buffer.append(line[5:].lstrip(" "))
        # comments (":"), "event:" and "id:" lines are not used by Letta's message streams
    if buffer:
        yield "\n".join(buffer)


def stream_post(http: httpx.Client, path: str, body: dict, headers: dict | None = None) -> SseStream:
    """POST `body` to `path` and read the SSE answer as it arrives, timing each event."""
    with http.stream("POST", path, json=body, headers=headers) as response:
        if response.status_code != 200:
            response.read()
            raise AssertionError(f"POST {path} answered {response.status_code}: {response.text[:500]}")
        stream = SseStream(response.status_code, response.headers)
        for payload in read_sse(response.iter_lines()):
            stream.arrivals.append(time.monotonic())
            stream.data.append(payload)
        return stream
