"""Hold N keep-alive client connections open against a proxy and report its RSS.

usage: memory.py PORT N PID

Each connection sends one GET, reads the whole answer, then stays open and idle
(a client that keeps its connection, as the Letta SDK's HTTP pool does). Prints
one JSON line: RSS before, RSS while all N are held, and the connections held.
Bounded: 120 s for all connections, 500 connecting at once.
"""

import asyncio
import json
import resource
import sys

PATH = "/v1/agents/agent-00000000-0000-4000-8000-000000000001"


def rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    return None


async def one(port, conns):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {PATH} HTTP/1.1\r\nHost: bench\r\n\r\n".encode())
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    await reader.readexactly(length)
    conns.append(writer)


async def main(port, n, pid):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, n + 100)), hard))
    before = rss_mib(pid)
    conns, gate = [], asyncio.Semaphore(500)

    async def guarded():
        async with gate:
            await one(port, conns)

    await asyncio.wait_for(asyncio.gather(*(guarded() for _ in range(n))), 120)
    await asyncio.sleep(1)  # let the proxy settle (pool returns, timers)
    print(json.dumps({"held": len(conns), "rss_before_mib": before, "rss_held_mib": rss_mib(pid)}))
    for w in conns:
        w.close()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])))
