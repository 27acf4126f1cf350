"""A Letta server stops mid-run while clients keep reading through the proxy.

The server behind `letta-b` (port 8284) is stopped by the PID file the kit (kit/letta.sh) wrote, while
a reader thread keeps issuing GETs through the proxy. Every read must succeed: a refused (or
dropped idle) connection to the dead server is retried on the other one. The server is then
restarted with the kit and the proxy must route to it again.

Runs last (marker `disruptive`): everything else expects both servers.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections import Counter

import httpx
import pytest
from letta_client import Letta

from helpers import BACKEND_HEADER, wait_until

pytestmark = [pytest.mark.proxy_only, pytest.mark.disruptive]

RESTART_TIMEOUT = 240  # the kit re-runs its migrations check before starting the server


class Reader(threading.Thread):
    """Issues GETs through the proxy in a loop (SDK calls and a raw one) and records each outcome.
    Every read carries a unique query parameter: a cache must not answer it, a backend must."""

    def __init__(self, target_url: str, agent_id: str):
        super().__init__(daemon=True)
        self.sdk = Letta(base_url=target_url, max_retries=0, timeout=20)
        self.raw = httpx.Client(base_url=target_url, timeout=20)
        self.agent_id = agent_id
        self.stop = threading.Event()
        self.answered_by: list[str] = []  # backend name per successful read, in order
        self.failures: list[str] = []

    def run(self) -> None:
        def nonce():
            return {"e2e_nonce": time.monotonic_ns()}

        reads = [
            lambda: self.sdk.agents.with_raw_response.retrieve(self.agent_id, extra_query=nonce()),
            lambda: self.sdk.agents.blocks.with_raw_response.retrieve("human", agent_id=self.agent_id,
                                                                      extra_query=nonce()),
            lambda: self.raw.get("/v1/tools/", params={"limit": 1, **nonce()}),
        ]
        i = 0
        while not self.stop.is_set():
            try:
                response = reads[i % len(reads)]()  # the SDK raises on an error status itself
                if response.status_code != 200:
                    self.failures.append(f"read {i}: HTTP {response.status_code}")
                else:
                    self.answered_by.append(response.headers.get(BACKEND_HEADER))
            except Exception as exc:  # noqa: BLE001 - every failure is the finding
                self.failures.append(f"read {i}: {exc!r}")
            i += 1
            time.sleep(0.02)


def answered_by(http: httpx.Client) -> str | None:
    """The backend that answered one uncacheable health request."""
    response = http.get("/v1/health/", params={"e2e_nonce": time.monotonic_ns()})
    return response.headers.get(BACKEND_HEADER) if response.status_code == 200 else None


def backend_port(target, name: str) -> int:
    return next(b.port for b in target.backends if b.name == name)


def test_reads_survive_a_letta_server_stopping_and_it_rejoins(target, http, agent, letta_recipe):
    """Stop the server behind letta-b while reads run: no read fails and, once it is down, all of
    them are answered by letta-a. Restart it: the proxy sends traffic to letta-b again."""
    victim, survivor = "letta-b", "letta-a"
    port = backend_port(target, victim)
    pid_file = letta_recipe["run"] / f"letta-{port}.pid"
    assert pid_file.exists(), f"no PID file {pid_file}: was {victim} started by the kit (tests/e2e/kit/letta.sh)?"
    pid = int(pid_file.read_text().strip())

    # Both servers answer before the outage.
    seen = {answered_by(http) for _ in range(6)}
    assert seen == {victim, survivor}

    reader = Reader(target.url, agent.id)
    reader.start()
    try:
        time.sleep(1.0)  # reads flow to both servers
        os.kill(pid, signal.SIGTERM)
        wait_until(lambda: not _alive(pid), timeout=30, what=f"letta on port {port} (pid {pid}) to exit")
        # +1: a read answered just before the exit may be recorded just after it
        stopped_at = len(reader.answered_by) + 1
        time.sleep(4.0)  # keep reading with the server gone
        reader.stop.set()
        reader.join(timeout=30)

        after_stop = reader.answered_by[stopped_at:]
        assert not reader.failures, f"{len(reader.failures)} read(s) failed: {reader.failures[:5]}"
        assert len(after_stop) >= 20, f"too few reads while {victim} was down: {len(after_stop)}"
        assert set(after_stop) == {survivor}, Counter(after_stop)
    finally:
        reader.stop.set()
        _restart_letta(letta_recipe, target)  # always: later runs and the developer's stack need it

    def victim_serves_again():
        return answered_by(http) == victim

    wait_until(victim_serves_again, timeout=60, interval=0.5, what=f"the proxy to route to {victim} again")
    for _ in range(4):
        assert http.get(f"/v1/agents/{agent.id}").status_code == 200


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie (exited, not yet reaped by its parent) counts as gone
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _restart_letta(recipe, target) -> None:
    """Bring every configured server back with the kit (it skips those already up)."""
    ports = " ".join(str(b.port) for b in target.backends)
    env = {**os.environ, "BASE": str(recipe["base"]), "LETTA_PORTS": ports}
    for name in ("LETTA_SERVER_SECURE", "LETTA_SERVER_PASSWORD"):  # these servers run without a password
        env.pop(name, None)
    result = subprocess.run(["bash", str(recipe["script"]), "start"], env=env, capture_output=True, text=True,
                            timeout=RESTART_TIMEOUT)
    assert result.returncode == 0, f"the kit failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
