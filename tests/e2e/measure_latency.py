#!/usr/bin/env python3
"""SDK-visible latency, direct to Letta vs through letta-proxy (a measurement, not a test).

Measures with the official `letta-client` SDK, one call at a time:
  - `client.agents.retrieve(id)`: direct; through the proxy with the same URL every time (cache
    hits once the first answer is cached); through the proxy with a unique query parameter per
    call (never the same cache key: every call goes to Letta, i.e. misses);
  - a streamed agent turn (`client.agents.messages.stream`): time to the first event and to the
    end of the stream, direct vs proxy (calls alternate between the two).
"Direct" alternates over the same Letta servers the proxy balances over (give --direct once per
server), so both sides see the same mix of servers. Prints medians and tails in a small table.
Needs Letta (tests/e2e/kit/letta.sh) and letta-proxy (config/e2e.toml) running:

  python tests/e2e/measure_latency.py \
      --direct http://127.0.0.1:8283 --direct http://127.0.0.1:8284 --proxy http://127.0.0.1:8300
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid
import warnings
from collections import Counter
from itertools import cycle

from letta_client import Letta

MODEL = "openai-proxy/gpt-4o-mini"
EMBEDDING = "openai/text-embedding-3-small"


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def row(label: str, samples: list[float], note: str = "") -> str:
    ms = [s * 1000 for s in samples]
    return (f"{label:<34} {len(ms):>5} {statistics.median(ms):>9.2f} {percentile(ms, 0.9):>9.2f} "
            f"{percentile(ms, 0.99):>9.2f}  {note}")


def time_retrieves(clients: list[Letta], agent_id: str, n: int, unique_query: bool) -> tuple[list[float], Counter]:
    """n sequential retrieves, taking the clients in turn; their durations and x-cache values."""
    durations, cache = [], Counter()
    for i, client in zip(range(n), cycle(clients)):
        extra = {"e2e_nonce": f"{uuid.uuid4().hex}-{i}"} if unique_query else None
        start = time.perf_counter()
        raw = client.agents.with_raw_response.retrieve(agent_id, extra_query=extra)
        raw.parse()  # what `client.agents.retrieve` returns: the parsed AgentState
        durations.append(time.perf_counter() - start)
        cache[raw.headers.get("x-cache", "-")] += 1
    return durations, cache


def time_stream(client: Letta, agent_id: str) -> tuple[float, float]:
    """(time to first event, time to end) of one streamed agent turn."""
    start = time.perf_counter()
    first = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # messages.stream is deprecated in 1.12
        for _event in client.agents.messages.stream(agent_id, input=f"latency probe {uuid.uuid4().hex[:6]}"):
            if first is None:
                first = time.perf_counter() - start
    return first, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--direct", action="append",
                        help="a Letta server behind the proxy; repeat for each (default 8283 and 8284)")
    parser.add_argument("--proxy", default="http://127.0.0.1:8300", help="letta-proxy in front of it")
    parser.add_argument("-n", type=int, default=200, help="retrieves per series (default 200)")
    parser.add_argument("--streams", type=int, default=20, help="streamed turns per target (default 20)")
    args = parser.parse_args()

    direct = [Letta(base_url=url, max_retries=0, timeout=120)
              for url in args.direct or ["http://127.0.0.1:8283", "http://127.0.0.1:8284"]]
    proxy = [Letta(base_url=args.proxy, max_retries=0, timeout=120)]
    agent = direct[0].agents.create(name=f"latency-{uuid.uuid4().hex[:8]}", model=MODEL, embedding=EMBEDDING,
                                 memory_blocks=[{"label": "human", "value": "latency probe"}])
    try:
        for clients in (direct, proxy):  # warm connections, caches and Letta's own code paths
            time_retrieves(clients, agent.id, 10, unique_query=False)
            time_retrieves(clients, agent.id, 10, unique_query=True)

        direct_times, _ = time_retrieves(direct, agent.id, args.n, unique_query=False)
        miss_times, miss_cache = time_retrieves(proxy, agent.id, args.n, unique_query=True)
        hit_times, hit_cache = time_retrieves(proxy, agent.id, args.n, unique_query=False)

        first = {"direct": [], "proxy": []}
        total = {"direct": [], "proxy": []}
        for i in range(args.streams):
            for name, clients in (("direct", direct), ("proxy", proxy)):
                f, t = time_stream(clients[i % len(clients)], agent.id)
                first[name].append(f)
                total[name].append(t)
    finally:
        direct[0].agents.delete(agent.id)

    def cache_note(counter: Counter) -> str:
        return "x-cache: " + ", ".join(f"{k} {v}" for k, v in sorted(counter.items()))

    print(f"\n{'SDK call (sequential)':<34} {'n':>5} {'median ms':>9} {'p90 ms':>9} {'p99 ms':>9}")
    print(row("agents.retrieve direct", direct_times, f"alternating over {len(direct)} server(s)"))
    print(row("agents.retrieve proxy, miss", miss_times, cache_note(miss_cache)))
    print(row("agents.retrieve proxy, same URL", hit_times, cache_note(hit_cache)))
    print(row("stream: first event, direct", first["direct"]))
    print(row("stream: first event, proxy", first["proxy"]))
    print(row("stream: whole turn, direct", total["direct"]))
    print(row("stream: whole turn, proxy", total["proxy"]))
    d, m, h = (statistics.median(x) * 1000 for x in (direct_times, miss_times, hit_times))
    print(f"\nproxy overhead on a miss: {m - d:+.2f} ms median; same-URL series vs direct: {h - d:+.2f} ms")


if __name__ == "__main__":
    main()
