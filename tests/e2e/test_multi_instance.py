"""Three letta-proxy instances on one Redis behave as one, in front of the two real Letta servers.

A deployment that runs several proxy instances (behind a TCP load balancer or a Kubernetes
Service) sends a client's requests to any of them. tests/e2e/run.sh starts three instances from
config/e2e-multi.toml (the same two Letta servers as the main proxy, one Redis of their own,
`max_in_flight_per_backend = 2`, `lease_ttl = 3s`, cache off) and passes them in
LETTA_E2E_MULTI_* variables. Here:

- 6 concurrent turns to one agent, sent round-robin to the three instances: every turn is kept in
  the agent's context (Letta alone keeps 1 of 6: test_races.py's baseline);
- 10 concurrent PATCHes of one block over the three: none answers 409 (Letta alone: most do);
- the per-backend cap of 2 is shared by the three instances: with letta-b drained, concurrent
  turns to different agents make at most 2 LLM calls at once (the fake LLM counts them; only
  Letta calls it), where the same turns sent straight to letta-a make more;
- an instance killed (SIGKILL) while its stream holds an agent's write lease: the agent's next
  write, through another instance, goes through within the lease TTL;
- Redis killed: every request is still answered, and each instance orders its own writes.

The last two are destructive for this module's instances and Redis (nothing else uses them), so
they run last, in this order. Letta's state is read back straight from a Letta server.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import httpx
import pytest
from letta_client import APIStatusError, Letta

from helpers import unique, wait_until
from test_backend_outage import _alive
from test_races import BLOCK_ROUTES, context_turns, direct_client, user_turns

pytestmark = pytest.mark.proxy_only

TURNS = 6
PATCHES = 10
LEASE_TTL = 3.0  # config/e2e-multi.toml redis.lease_ttl
CAP = 2  # config/e2e-multi.toml limits.max_in_flight_per_backend
SLOW = "[llm_delay_ms=1500]"  # the fake LLM answers these turns 1.5 s late
METRIC = re.compile(r'^letta_proxy_coord_leases_total\{outcome="(?P<outcome>\w+)"\}\s+(?P<value>\S+)', re.M)


@dataclass(frozen=True)
class Multi:
    urls: tuple[str, ...]
    admins: tuple[str, ...]
    pids: tuple[int, ...]
    redis_pid: int
    redis_port: int
    fake_llm: str

    def live(self) -> list[int]:
        """Indexes of the instances still running."""
        return [i for i, pid in enumerate(self.pids) if _alive(pid)]


def stats(url: str) -> dict:
    return httpx.get(f"{url}/-/stats", timeout=10).json()


def leases(url: str) -> Counter:
    """letta_proxy_coord_leases_total of one instance, by outcome."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return Counter({m["outcome"]: float(m["value"]) for m in METRIC.finditer(text)})


def sdk(url: str) -> Letta:
    return Letta(base_url=url, max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def multi() -> Multi:
    env = os.environ
    urls = tuple(u.strip().rstrip("/") for u in env.get("LETTA_E2E_MULTI_PROXIES", "").split(",") if u.strip())
    if len(urls) != 3:
        message = "needs LETTA_E2E_MULTI_* (three instances, their admin URLs and PIDs, their Redis), as run.sh sets them"
        if env.get("LETTA_E2E_REQUIRE_PROXY") == "1":
            pytest.fail(message)
        pytest.skip(message)
    m = Multi(
        urls=urls,
        admins=tuple(u.strip().rstrip("/") for u in env["LETTA_E2E_MULTI_ADMINS"].split(",")),
        pids=tuple(int(p) for p in env["LETTA_E2E_MULTI_PIDS"].split(",")),
        redis_pid=int(env["LETTA_E2E_MULTI_REDIS_PID"]),
        redis_port=int(env["LETTA_E2E_MULTI_REDIS_PORT"]),
        fake_llm=env.get("LETTA_E2E_FAKE_LLM", "http://127.0.0.1:8787").rstrip("/"),
    )
    # Every instance coordinates: Redis up, wake-up channel subscribed, all three in its view.
    for url in m.urls:
        def ready(url=url):
            c = stats(url)["coordination"]
            return (c and c["write_ordering"] == "redis" and c["lease_wakeups"] and c["membership_fresh"]
                    and len(c["instances"]) == 3)
        wait_until(ready, timeout=30, what=f"{url} to coordinate with the other two")
    return m


@pytest.fixture
def human_block(client: Letta, agent) -> str:
    return client.agents.blocks.retrieve("human", agent_id=agent.id).id


def fake_llm_stats(m: Multi) -> dict:
    r = httpx.get(f"{m.fake_llm}/__stats", timeout=10)
    assert r.status_code == 200, (f"{m.fake_llm}/__stats answered {r.status_code}: a fake LLM from an older kit "
                                  "is running; stop it (tests/e2e/kit/letta.sh stop fake_llm) and run again")
    return r.json()


def send_turns(clients: list[Letta], agent_ids: list[str], texts: list[str]) -> list[tuple[int, list[str]]]:
    """One message per text, all released at once: text i to agent_ids[i] through clients[i];
    (status, assistant replies) of each."""
    start = threading.Barrier(len(texts))

    def send(i: int) -> tuple[int, list[str]]:
        start.wait()
        try:
            raw = clients[i].agents.messages.with_raw_response.create(agent_ids[i], input=texts[i])
        except APIStatusError as exc:
            return exc.status_code, [str(exc.body)[:200]]
        replies = [m.content for m in raw.parse().messages if m.message_type == "assistant_message"]
        return raw.status_code, replies

    with ThreadPoolExecutor(len(texts)) as pool:
        return list(pool.map(send, range(len(texts))))


def assert_every_turn_kept(direct: Letta, agent_id: str, texts: list[str], results) -> None:
    """Every call answered 200 with its own echo; every turn is once in the history and in the
    context window, each followed by its own reply (the turns ran one at a time)."""
    assert [status for status, _ in results] == [200] * len(texts), results
    for text, (_, replies) in zip(texts, results):
        assert replies == [f"echo: {text}"], (text, replies)
    history = Counter(user_turns(direct, agent_id))
    assert {t: history[t] for t in texts} == {t: 1 for t in texts}, history
    context = context_turns(direct, agent_id)
    in_context = [text for kind, text in context if kind == "user_message"]
    assert sorted(set(in_context) & set(texts)) == sorted(texts), (
        f"{len(set(in_context) & set(texts))} of {len(texts)} turns kept in the agent's context: {context}")
    for i in range(0, len(context), 2):
        user, reply = context[i], context[i + 1] if i + 1 < len(context) else None
        assert user[0] == "user_message" and reply == ("assistant_message", f"echo: {user[1]}"), context


# ---------------------------------------------------------------- 1. turns over three instances

def test_concurrent_turns_to_one_agent_over_three_instances_are_all_kept(multi: Multi, target, agent):
    """TURNS messages to one agent at the same instant, sent round-robin to the three instances
    (each of which alternates between the two Letta servers): all kept, in turn, one at a time."""
    clients = [sdk(url) for url in multi.urls]
    before = sum((leases(u) for u in multi.urls), Counter())
    tag = unique("multi")
    texts = [f"{tag} turn {i}" for i in range(TURNS)]

    results = send_turns([clients[i % 3] for i in range(TURNS)], [agent.id] * TURNS, texts)

    after = sum((leases(u) for u in multi.urls), Counter())
    kept = {t for kind, t in context_turns(direct_client(target), agent.id) if kind == "user_message"} & set(texts)
    print(f"{TURNS} concurrent turns over three instances: answers "
          f"{dict(Counter(s for s, _ in results))}, {len(kept)} of {TURNS} kept in context; leases "
          f"acquired {after['acquired'] - before['acquired']:.0f}, fallback {after['fallback'] - before['fallback']:.0f}")
    assert_every_turn_kept(direct_client(target), agent.id, texts, results)
    assert after["acquired"] - before["acquired"] >= TURNS, "each turn took the agent's lease in Redis"
    assert after["fallback"] == before["fallback"], "no write fell back to per-instance ordering"


# ---------------------------------------------------------------- 2. PATCHes over three instances

@pytest.mark.parametrize("route", list(BLOCK_ROUTES))
def test_concurrent_patches_of_one_block_over_three_instances_none_conflicts(multi: Multi, agent, human_block, route):
    """PATCHES updates of one block at the same instant over the three instances (SDK retries off):
    all 200 with their own value, none 409."""
    clients = [sdk(url) for url in multi.urls]
    updaters = [BLOCK_ROUTES[route](clients[i % 3], agent, human_block) for i in range(PATCHES)]
    values = [f"value {i} ({unique('v')})" for i in range(PATCHES)]
    start = threading.Barrier(PATCHES)

    def patch(i: int) -> tuple[int, str]:
        start.wait()
        try:
            raw = updaters[i](values[i])
        except APIStatusError as exc:
            return exc.status_code, str(exc.body)[:200]
        return raw.status_code, raw.parse().value

    with ThreadPoolExecutor(PATCHES) as pool:
        results = list(pool.map(patch, range(PATCHES)))

    statuses = Counter(status for status, _ in results)
    print(f"{PATCHES} concurrent PATCHes ({route}) over three instances: {dict(statuses)}, "
          f"{statuses[409]} answered 409")
    assert statuses == Counter({200: PATCHES}), f"{dict(statuses)}: {[r for r in results if r[0] != 200][:3]}"
    assert [answered for _, answered in results] == values


# ---------------------------------------------------------------- 3. a cap shared by the three

def test_a_backend_cap_is_shared_by_the_three_instances(multi: Multi, target, make_agent):
    """letta-b drained on every instance, so every turn runs on letta-a, whose cap (2) the three
    instances split 1 + 1 + 0. Turns to different agents, each waiting 1.5 s for the fake LLM,
    sent at once through the two instances that hold a share: the fake LLM (called by Letta
    only) never sees more than 2 at once. The instance without a share answers 503 no_backend
    at once rather than exceed the cap. Baseline: the same turns straight to letta-a do run more
    than 2 at once (so the count above can see it)."""
    agents = [make_agent() for _ in range(6)]
    shares = [next(b["share"] for b in stats(u)["backends"] if b["name"] == "letta-a") for u in multi.urls]
    assert sorted(shares) == [0, 1, 1], f"letta-a's cap split over the instances: {shares}"
    holders = [multi.urls[i] for i, s in enumerate(shares) if s > 0]
    idle = multi.urls[shares.index(0)]

    # Baseline, no proxy: straight to letta-a.
    fake_llm_stats(multi)
    httpx.post(f"{multi.fake_llm}/__stats/reset", timeout=10)
    tag = unique("cap-direct")
    direct = send_turns([direct_client(target)] * len(agents), [a.id for a in agents],
                        [f"{tag} {i} {SLOW}" for i in range(len(agents))])
    direct_peak = fake_llm_stats(multi)["chat_peak"]

    for admin in multi.admins:
        assert httpx.post(f"{admin}/-/backends/letta-b/drain", timeout=10).status_code == 200
    try:
        httpx.post(f"{multi.fake_llm}/__stats/reset", timeout=10)
        tag = unique("cap")
        started = time.monotonic()
        results = send_turns([sdk(holders[i % 2]) for i in range(len(agents))], [a.id for a in agents],
                             [f"{tag} {i} {SLOW}" for i in range(len(agents))])
        took = time.monotonic() - started
        peak = fake_llm_stats(multi)["chat_peak"]
        refused = httpx.get(f"{idle}/v1/agents/{agents[0].id}", timeout=30)
    finally:
        for admin in multi.admins:
            httpx.post(f"{admin}/-/backends/letta-b/undrain", timeout=10)

    print(f"cap {CAP} on letta-a over three instances (shares {shares}): {len(agents)} slow turns at once "
          f"-> at most {peak} LLM call(s) at once, {took:.1f} s; straight to letta-a: {direct_peak} at once "
          f"(answers {dict(Counter(s for s, _ in direct))}); the instance without a share answered "
          f"{refused.status_code}")
    assert [s for s, _ in results] == [200] * len(agents), results
    assert peak <= CAP, f"letta-a ran {peak} turns at once through three instances capped at {CAP}"
    assert peak == CAP, f"the load never reached the cap ({peak}): the check above proves little"
    assert direct_peak > CAP, f"straight to letta-a only {direct_peak} turns overlapped: the count cannot tell"
    assert refused.status_code == 503 and refused.json()["error"]["kind"] == "no_backend", refused.text


# ---------------------------------------------------------------- 4. an instance killed holding a lease

def lease_waiters(m: Multi, key: str) -> int:
    out = subprocess.run(["redis-cli", "-p", str(m.redis_port), "ZCARD", f"{{letta-proxy:lease:{key}}}:q"],
                         capture_output=True, text=True, timeout=10)
    return int(out.stdout.strip() or 0)


def test_an_instance_killed_holding_a_lease_delays_the_next_write_at_most_the_ttl(multi: Multi, agent, target):
    """A streamed turn through instance 0 holds the agent's lease (the fake LLM answers it late);
    a PATCH of the agent's block through instance 1 waits for it in Redis. Instance 0 is killed
    (SIGKILL, no release): the PATCH goes through within the lease TTL. The two survivors then
    drop the dead instance from their view within a few heartbeats."""
    victim, other = multi.urls[0], multi.urls[1]
    stream_done = threading.Event()

    def stream() -> None:
        try:
            with httpx.stream("POST", f"{victim}/v1/agents/{agent.id}/messages/stream",
                              json={"input": f"{unique('held')} [llm_delay_ms=10000]"}, timeout=60) as r:
                for _ in r.iter_raw():
                    pass
        except httpx.HTTPError:
            pass  # cut by the kill
        finally:
            stream_done.set()

    threading.Thread(target=stream, daemon=True).start()
    wait_until(lambda: stats(victim)["coordination"]["leases_held"] == 1, timeout=30,
               what="the stream to hold the agent's lease")
    outcome: dict = {}

    def patch() -> None:
        try:
            raw = sdk(other).agents.blocks.with_raw_response.update("human", agent_id=agent.id,
                                                                     value=unique("after-kill"))
            outcome["status"] = raw.status_code
        except APIStatusError as exc:
            outcome["status"] = exc.status_code
        outcome["at"] = time.monotonic()

    writer = threading.Thread(target=patch, daemon=True)
    writer.start()
    wait_until(lambda: lease_waiters(multi, agent.id) == 1, timeout=30, what="the PATCH to wait for the lease")
    assert writer.is_alive() and not stream_done.is_set(), "the PATCH waits behind the stream"

    killed = time.monotonic()
    os.kill(multi.pids[0], signal.SIGKILL)
    writer.join(timeout=60)
    waited = outcome["at"] - killed
    print(f"instance killed holding the lease: the next write went through {waited:.2f} s later "
          f"(lease_ttl {LEASE_TTL} s), answer {outcome['status']}")
    assert outcome["status"] == 200
    assert waited <= LEASE_TTL + 2.0, f"the agent stayed blocked {waited:.2f} s after its holder died"

    started = time.monotonic()
    for url in multi.urls[1:]:
        wait_until(lambda url=url: len(stats(url)["coordination"]["instances"]) == 2, timeout=15,
                   what=f"{url} to drop the killed instance")
    print(f"the survivors dropped the killed instance {time.monotonic() - started + waited:.1f} s after the kill")


# ---------------------------------------------------------------- 5. Redis killed

def test_with_redis_killed_every_request_is_answered_and_each_instance_orders_its_writes(
        multi: Multi, target, make_agent):
    """Redis of the three instances killed (SIGKILL). Through the surviving instances at once:
    TURNS concurrent turns to one agent through one instance, concurrent PATCHes of another
    agent's block through another, and reads through all. Every request is answered 200; the
    turns are all kept and no PATCH conflicts (each instance still orders its own writes); the
    instances say `write_ordering: local` and count the fallbacks."""
    live = [multi.urls[i] for i in multi.live()]
    assert len(live) >= 2, live
    turned, patched = make_agent(), make_agent()
    os.kill(multi.redis_pid, signal.SIGKILL)
    wait_until(lambda: not _alive(multi.redis_pid), timeout=10, what="Redis to exit")

    tag = unique("no-redis")
    texts = [f"{tag} turn {i}" for i in range(TURNS)]
    values = [unique("no-redis-v") for _ in range(5)]
    reads: list[int] = []
    patches: list[int] = []

    def read_all() -> None:
        for i in range(12):
            url = live[i % len(live)]
            reads.append(httpx.get(f"{url}/v1/agents/{turned.id}", params={"i": i}, timeout=60).status_code)

    def patch_all() -> None:
        client = sdk(live[1])
        start = threading.Barrier(len(values))

        def one(v: str) -> int:
            start.wait()
            try:
                return client.agents.blocks.with_raw_response.update("human", agent_id=patched.id,
                                                                      value=v).status_code
            except APIStatusError as exc:
                return exc.status_code
        with ThreadPoolExecutor(len(values)) as pool:
            patches.extend(pool.map(one, values))

    side = [threading.Thread(target=read_all), threading.Thread(target=patch_all)]
    for t in side:
        t.start()
    results = send_turns([sdk(live[0])] * TURNS, [turned.id] * TURNS, texts)
    for t in side:
        t.join(timeout=300)

    fallbacks = {url: leases(url)["fallback"] for url in live}
    ordering = {url: stats(url)["coordination"]["write_ordering"] for url in live}
    print(f"Redis killed: turns {dict(Counter(s for s, _ in results))}, PATCHes {dict(Counter(patches))}, "
          f"reads {dict(Counter(reads))}; write_ordering {sorted(ordering.values())}, fallbacks "
          f"{sorted(fallbacks.values())}")
    assert_every_turn_kept(direct_client(target), turned.id, texts, results)
    assert patches == [200] * len(values), patches
    assert reads == [200] * 12, reads
    assert set(ordering.values()) == {"local"}, ordering
    assert fallbacks[live[0]] >= TURNS and fallbacks[live[1]] >= len(values), fallbacks
