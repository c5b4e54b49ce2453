"""Benchmark: the cost the platform adds to an MCP tool call.

    .venv/bin/python tests/services.py -- .venv/bin/python tests/benchmarks/bench_mcp.py

One run, same machine, same upstream (the fastmcp test server over Streamable HTTP on loopback):
the baseline is the MCP SDK's own client calling the tool directly on one open session; the
platform's path is `POST /api/v1/mcp/configurations/{id}/tools/call/` through Django (API key
authentication, tenant scope, row-level security, breaker, concurrency limit, pooled session, audit
record, metrics), in process. Printed: median per call and the ratio. It also counts handshakes at
the server during the platform's calls (steady state: zero).
"""

import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
os.environ["DJANGO_SETTINGS_MODULE"] = "agentapi.settings.test"
os.environ["OUTBOUND_ALLOWED_NETWORKS"] = "127.0.0.0/8"
N = int(os.environ.get("BENCH_CALLS", "300"))


def direct(url: str) -> list[float]:
    import anyio

    from mcp import Client

    timings = []

    async def run():
        async with Client(url, cache=None) as client:
            for _ in range(20):
                await client.call_tool("echo", {"text": "warm"})
            for i in range(N):
                started = time.perf_counter()
                await client.call_tool("echo", {"text": str(i)})
                timings.append(time.perf_counter() - started)

    anyio.run(run)
    return timings


def through_platform(url: str, server) -> tuple[list[float], int]:
    from django.test import Client as HttpClient

    from mcp import pool
    from tenants import scoping, services

    organization = services.organization_create(slug=f"bench-mcp-{os.getpid()}", name="Bench")
    with scoping.organization_scope(organization):
        owner = services.membership_create(organization=organization, email=f"{organization.slug}@b.test", role="owner")
        _, key = services.api_key_create(membership=owner, name="bench")
    http = HttpClient(headers={"Authorization": f"Bearer {key}"})
    created = http.post("/api/v1/mcp/configurations/", {"name": "bench", "url": url}, content_type="application/json")
    path = f"/api/v1/mcp/configurations/{created.json()['id']}/tools/call/"
    for _ in range(20):
        assert (
            http.post(
                path, {"name": "echo", "arguments": {"text": "warm"}}, content_type="application/json"
            ).status_code
            == 200
        )
    handshakes = server.handshakes()
    timings = []
    for i in range(N):
        started = time.perf_counter()
        response = http.post(path, {"name": "echo", "arguments": {"text": str(i)}}, content_type="application/json")
        timings.append(time.perf_counter() - started)
        assert response.status_code == 200
    pool.shutdown()
    return timings, server.handshakes() - handshakes


def main():
    import django

    django.setup()
    from tests.mcp.conftest import RunningServer

    server = RunningServer()
    try:
        baseline = direct(server.url)
        platform, handshakes = through_platform(server.url, server)
    finally:
        server.stop()
    base, mine = statistics.median(baseline) * 1000, statistics.median(platform) * 1000
    print(f"\n{'path':34}{'p50 per call':>14}{'p90':>10}")
    for name, values in (("MCP SDK client, direct", baseline), ("platform: POST .../tools/call/", platform)):
        ordered = sorted(values)
        print(
            f"{name:34}{statistics.median(values) * 1000:>11.2f} ms{ordered[int(len(ordered) * 0.9)] * 1000:>7.2f} ms"
        )
    print(f"\nplatform / direct p50: {mine / base:.2f}x  (+{mine - base:.2f} ms per call)")
    print(f"handshakes at the server during {N} platform calls: {handshakes}")


if __name__ == "__main__":
    main()
