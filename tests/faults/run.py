"""The fault suite (issue #12): the platform under load while its parts fail, checked for what a
user would notice: an error that is not the platform's to give, a write acknowledged and lost or
made twice, a run that never ends, a platform that does not come back by itself.

    make faults                    (owns its PostgreSQL and Redis, so that it can kill them)

The stack is the load suite's (tests/load/run.py), production settings: gunicorn with two uvicorn
workers, a Celery worker and beat, PostgreSQL as the application role with row-level security,
Redis, the fastmcp test server, fastmcp's OAuth authorization server and the model double (a
hosted model cannot run here). Clients (one per user, each with its own API key, sessions and
OAuth connection) send a steady mix of writes and reads through every fault:

    creating a session   POST /api/v1/sessions/                      Idempotency-Key, in the ledger
    sending a message    POST /api/v1/sessions/{id}/messages/        Idempotency-Key, in the ledger
    a tool call          POST /api/v1/sessions/{id}/tools/call/
    reads                GET  /agentapi/sessions/{id}/status, GET /api/v1/sessions/{id}/messages/
    a token refresh      POST /api/v1/oauth/tokens/{id}/refresh/

A write is retried with its key (after Retry-After, or at once after a lost connection) until it is
acknowledged with a 2xx; the ledger keeps every key a client made. The faults, one after another,
each under that load:

    redis       SIGKILL, restarted empty 5 s later (the broker's queued tasks are gone with it)
    postgres    a fast shutdown (every connection cut), started again 5 s later
    worker      SIGKILL of the Celery worker and its children while runs are mid-way, a new one started
    mcp-hang    the MCP server stopped (SIGSTOP: connections accepted, nothing answered) for 6 s
    oauth-hang  the OAuth provider stopped the same way while tokens are refreshed

Asserted, and printed as a report (var/faults/report.md):
- no 500 and no other 5xx than 502, 503 and 504; every 503 carries Retry-After; the web
  processes never drop a connection;
- recovery within 10 s of the part returning, without restarting a web process: readiness 200 with
  rate limits and the breaker shared through Redis again, a tool call, a message answered by the
  agent, a token refreshed (measured per fault);
- every acknowledged write present exactly once afterwards, every unacknowledged one at most once;
- no run left running: each ends answered, or failed with a reason (a run whose worker was killed);
- the audit chain verifies.
Exits 1 when any of it does not hold.
"""

import asyncio
import base64
import json
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests import services  # noqa: E402

OUT = ROOT / "var" / "faults"
USERS = int(os.environ.get("FAULT_USERS", "10"))
RECOVERY_TARGET = 10.0  # seconds from the part's return to everything working
DOWN_SECONDS = 5.0
# Tunings that make the suite take a minute rather than ten (the defaults are minutes for some):
# how soon a run without a worker is failed, how soon the breaker probes again, a call's deadline.
STACK_SETTINGS = {
    "AGENT_RUN_HEARTBEAT_SECONDS": "1",
    "AGENT_RUN_LOST_SECONDS": "5",
    "AGENT_RUN_REQUEUE_SECONDS": "3",
    "AGENT_RUN_REAP_INTERVAL": "2",
    "MCP_CALL_TIMEOUT": "3",
    "MCP_BREAKER_RESET_TIMEOUT": "3",
    "OUTBOUND_TIMEOUT": "3",
}


class Stack:
    """PostgreSQL, Redis and the platform's processes, each one that can be killed and started."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.postgres, pg_env = services.start_postgres(workdir)
        self.redis, redis_env = services.start_redis(workdir)
        self.port = services.free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.env = {
            **os.environ,
            **pg_env,
            **redis_env,
            **STACK_SETTINGS,
            "DJANGO_SETTINGS_MODULE": "tests.load.settings",
            "SECRET_KEY": secrets.token_urlsafe(50),
            "FIELD_ENCRYPTION_KEYS": "v1:" + base64.urlsafe_b64encode(secrets.token_bytes(32)).decode(),
            "ALLOWED_HOSTS": "127.0.0.1",
            "OUTBOUND_ALLOWED_NETWORKS": "127.0.0.0/8",
            "AGENTAPI_VAR_DIR": str(workdir / "var"),
            "PROMETHEUS_MULTIPROC_DIR": str(workdir / "prometheus"),
            "WEB_CONCURRENCY": "2",
            "LOG_LEVEL": "WARNING",
            "OAUTH_REDIRECT_URI": f"{self.base}/oauth/callback/",
            "PYTHONPATH": str(ROOT),
            "FASTMCP_SHOW_SERVER_BANNER": "false",
            "FASTMCP_CHECK_FOR_UPDATES": "off",
        }
        (workdir / "prometheus").mkdir()
        self.processes: dict[str, subprocess.Popen] = {}

    def name_worker(self) -> str:
        self.worker_name = f"w{uuid.uuid4().hex[:6]}@{socket.gethostname()}"
        return self.worker_name

    def start(self, role: str) -> None:
        argv = {
            "web": [sys.executable, "-m", "gunicorn", "-c", "docker/gunicorn.conf.py", "agentapi.asgi:application"],
            "worker": [sys.executable, "-m", "celery", "-A", "agentapi", "worker", "--pool=prefork", "--concurrency=2",
                       "--loglevel=WARNING", "--without-gossip", "--without-mingle", "-n", self.name_worker()],
            "beat": [sys.executable, "-m", "celery", "-A", "agentapi", "beat", "--loglevel=WARNING",
                     f"--schedule={self.workdir / 'beat-schedule'}"],
        }[role]  # fmt: skip
        env = {**self.env, "BIND": f"127.0.0.1:{self.port}"}
        log = open(OUT / f"{role}.log", "ab")
        # Its own process group: SIGKILL reaches the worker's children too.
        self.processes[role] = subprocess.Popen(
            argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def wait_for_worker(self, timeout: float = 60) -> None:
        from agentapi.celery import app

        deadline = time.monotonic() + timeout
        while not app.control.ping(destination=[self.worker_name], timeout=0.5):
            if time.monotonic() > deadline:
                sys.exit("the new worker did not start:\n" + (OUT / "worker.log").read_text()[-3000:])

    def kill(self, role: str) -> None:
        process = self.processes[role]
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)

    def restart_redis(self, down: float) -> None:
        argv = self.redis.args
        self.redis.kill()
        self.redis.wait(10)
        time.sleep(down)
        self.redis = subprocess.Popen(argv, stdout=open(self.workdir / "redis.log", "ab"), stderr=subprocess.STDOUT)

    def restart_postgres(self, down: float) -> None:
        argv = self.postgres.args
        self.postgres.send_signal(signal.SIGINT)  # fast shutdown: every session is ended
        self.postgres.wait(30)
        time.sleep(down)
        self.postgres = subprocess.Popen(argv, stdout=open(self.workdir / "postgres.log", "ab"),
                                         stderr=subprocess.STDOUT, cwd=self.workdir, **services.as_postgres())  # fmt: skip

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
        services.stop(self.redis, signal.SIGTERM)
        services.stop(self.postgres)


def wait_ready(base: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(f"{base}/health/ready/", timeout=2).read()
            return
        except OSError:
            if time.monotonic() > deadline:
                sys.exit("the web processes did not start:\n" + (OUT / "web.log").read_text()[-3000:])
            time.sleep(0.3)


def prepare(upstream, oauth, double, base: str) -> dict:
    """The organization, its users (an API key, two sessions and an OAuth connection each), the MCP
    configuration, the agent backend and the OAuth provider."""
    from mcp import services as mcp_services
    from oauth import services as oauth_services
    from sessions_app import agents
    from sessions_app import services as session_services
    from tenants import scoping
    from tenants import services as tenant_services
    from tenants.authentication import api_key_authenticate
    from tests.benchmarks.bench_api import BENCH_SETTINGS
    from tests.oauth.conftest import register_client

    organization = tenant_services.organization_create(
        slug=f"faults-{secrets.token_hex(3)}",
        name="Faults",
        settings={**BENCH_SETTINGS, "max_sessions_per_user": 1000, "max_api_keys": USERS + 10},
    )
    client = register_client(oauth, redirect_uri=f"{base}/oauth/callback/")
    users = []
    with scoping.organization_scope(organization):
        owner = tenant_services.membership_create(
            organization=organization, email=f"owner@{organization.slug}.test", role="owner"
        )
        _, owner_key = tenant_services.api_key_create(membership=owner, name="faults")
        principal = api_key_authenticate(owner_key)
        configuration = mcp_services.mcp_configuration_create(
            organization=organization, principal=principal, shared=True, name="tools", url=upstream.url
        )
        backend = agents.agent_create(principal=principal, platform=False, name="double", kind="openai",
                                      base_url=f"{double.url}/v1", model="double-1", api_key="sk-faults-double")  # fmt: skip
        provider = oauth_services.provider_create(
            organization=organization, name="loopback", kind="oauth2", client_id=client["client_id"],
            client_secret=client["client_secret"], authorization_endpoint=f"{oauth.base}/authorize",
            token_endpoint=f"{oauth.base}/token", revocation_endpoint=f"{oauth.base}/revoke",
        )  # fmt: skip
        for i in range(USERS + 1):  # the last one is the recovery probe's
            membership = tenant_services.membership_create(
                organization=organization, email=f"user{i}@{organization.slug}.test", role="member"
            )
            _, key = tenant_services.api_key_create(membership=membership, name="faults")
            member = api_key_authenticate(key)
            sessions = [
                str(session_services.session_create(principal=member, name=f"s{n}", agent=backend.pk,
                                                    mcp_configurations=[configuration.pk])[0].pk)
                for n in range(2)
            ]  # fmt: skip
            users.append({"key": key, "sessions": sessions, "session": sessions[0]})
    return {"organization": organization.pk, "users": users, "configuration": configuration.pk,
            "provider": provider.pk, "backend": backend.pk, "owner_key": owner_key}  # fmt: skip


class Observations:
    """Every answer the clients got, the ledger of keyed writes, and what broke the rules."""

    def __init__(self):
        self.started = time.monotonic()
        self.answers: list[tuple[float, str, int]] = []  # (seconds since start, operation, status)
        self.violations: list[str] = []
        self.ledger: dict[str, dict] = {}  # key -> {"kind", "session", "acknowledged"}
        self.phase = "warm-up"
        self.by_phase: dict[str, dict[str, int]] = {}
        self.held_by: dict[str, str] = {}  # fault -> what still failed last before recovery

    def note(self, operation: str, response) -> None:
        status = response.status_code
        self.answers.append((time.monotonic() - self.started, operation, status))
        counts = self.by_phase.setdefault(self.phase, {})
        counts[str(status)] = counts.get(str(status), 0) + 1
        if status >= 500 and status not in (502, 503, 504):
            self.violations.append(f"{self.phase}: {operation} answered {status}: {response.text[:300]}")
        if status == 503 and "retry-after" not in response.headers:
            self.violations.append(f"{self.phase}: {operation} answered 503 without Retry-After: {response.text[:200]}")

    def lost_connection(self, operation: str, exc: Exception) -> None:
        counts = self.by_phase.setdefault(self.phase, {})
        counts["no answer"] = counts.get("no answer", 0) + 1
        import httpx

        if not isinstance(exc, httpx.TimeoutException):
            self.violations.append(f"{self.phase}: {operation}: the connection was lost ({type(exc).__name__}: {exc})")


RETRYABLE = {409, 429, 502, 503, 504}


async def keyed_write(client, obs: Observations, operation: str, path: str, body: dict, headers: dict, key: str,
                      give_up: float = 120.0) -> dict | None:  # fmt: skip
    """Send until acknowledged, always with the same key; None when it never was."""
    import httpx

    deadline = time.monotonic() + give_up
    while time.monotonic() < deadline:
        try:
            response = await client.post(path, json=body, headers={**headers, "Idempotency-Key": key})
        except httpx.HTTPError as exc:
            obs.lost_connection(operation, exc)
            await asyncio.sleep(0.2)
            continue
        obs.note(operation, response)
        if response.status_code < 300:
            obs.ledger[key]["acknowledged"] = True
            return response.json()
        if response.status_code not in RETRYABLE:
            obs.violations.append(
                f"{obs.phase}: {operation} refused for good: {response.status_code} {response.text[:300]}"
            )
            return None
        await asyncio.sleep(min(float(response.headers.get("retry-after", "0.5") or 0.5), 2.0))
    return None


async def client_loop(user: dict, data: dict, base: str, obs: Observations, stop: asyncio.Event) -> None:
    import httpx

    headers = {"Authorization": f"Bearer {user['key']}"}
    rng = random.Random(user["key"])
    async with httpx.AsyncClient(base_url=base, timeout=30) as client:
        while not stop.is_set():
            choice = rng.random()
            session = rng.choice(user["sessions"])
            try:
                if choice < 0.15:
                    key = uuid.uuid4().hex
                    obs.ledger[key] = {"kind": "session", "name": f"f-{key}", "acknowledged": False}
                    await keyed_write(client, obs, "create session", "/api/v1/sessions/",
                                      {"name": f"f-{key}", "mcp_configurations": [data["configuration"]]}, headers, key)  # fmt: skip
                elif choice < 0.35:
                    key = uuid.uuid4().hex
                    obs.ledger[key] = {
                        "kind": "message",
                        "session": session,
                        "content": f"m-{key}",
                        "acknowledged": False,
                    }
                    await keyed_write(client, obs, "send message", f"/api/v1/sessions/{session}/messages/",
                                      {"content": f"m-{key}"}, headers, key)  # fmt: skip
                elif choice < 0.60:
                    response = await client.post(f"/api/v1/sessions/{session}/tools/call/", headers=headers,
                                                 json={"name": data["tool"], "arguments": {"text": "fault"}})  # fmt: skip
                    obs.note("tool call", response)
                elif choice < 0.75:
                    obs.note("status", await client.get(f"/agentapi/sessions/{session}/status", headers=headers))
                elif choice < 0.90:
                    obs.note(
                        "read messages", await client.get(f"/api/v1/sessions/{session}/messages/", headers=headers)
                    )
                else:
                    response = await client.post(
                        f"/api/v1/oauth/tokens/{user['token']}/refresh/", json={}, headers=headers
                    )
                    obs.note("token refresh", response)
            except httpx.HTTPError as exc:
                obs.lost_connection("request", exc)
            await asyncio.sleep(rng.uniform(0.05, 0.25))


async def recovered(base: str, probe: dict, data: dict, what: str, since: float, obs, budget: float = 60.0) -> float:
    """Seconds from `since` until the platform does everything again: readiness 200 with the limits
    and breaker shared, a tool call, a token refreshed, a message answered by the agent. After
    `budget` seconds without it, a violation naming what still failed."""
    import httpx

    headers = {"Authorization": f"Bearer {probe['key']}"}
    deadline, why = since + budget, ""
    async with httpx.AsyncClient(base_url=base, timeout=10) as client:
        while time.monotonic() < deadline:
            try:
                why = await unhealthy(client, headers, probe, data)
            except httpx.HTTPError as exc:
                why = f"{type(exc).__name__}: {exc}"
            if not why:
                return time.monotonic() - since
            obs.held_by[what] = why[:160]  # the last thing that was not working yet
            await asyncio.sleep(0.25)
    obs.violations.append(f"{what}: not recovered {budget:.0f} s after it returned; still: {why}")
    return float("inf")


async def unhealthy(client, headers: dict, probe: dict, data: dict) -> str:
    """What does not work yet ("" when everything does)."""
    ready = await client.get("/health/ready/")
    body = ready.json() if ready.headers.get("content-type", "").startswith("application/json") else {}
    if ready.status_code != 200 or body.get("rate_limits") != "shared" or body.get("breakers") != "shared":
        return f"readiness {ready.status_code} {ready.text[:300]}"
    call = await client.post(f"/api/v1/sessions/{probe['sessions'][0]}/tools/call/", headers=headers,
                             json={"name": data["tool"], "arguments": {"text": "probe"}})  # fmt: skip
    if call.status_code != 200:
        return f"tool call {call.status_code} {call.text[:300]}"
    refresh = await client.post(f"/api/v1/oauth/tokens/{probe['token']}/refresh/", json={}, headers=headers)
    if refresh.status_code != 200:  # 200: the provider gave new tokens (502 refresh_failed: it did not)
        return f"token refresh {refresh.status_code} {refresh.text[:300]}"
    # A message answered by the agent, within the probe's own four seconds.
    session = probe["sessions"][1]
    sent = await client.post(f"/api/v1/sessions/{session}/messages/", json={"content": "probe"}, headers=headers)
    if sent.status_code != 202:
        return f"message {sent.status_code} {sent.text[:300]}"
    run = sent.json()["run"]["id"]
    for _ in range(40):
        await asyncio.sleep(0.1)
        status = await client.get(f"/api/v1/sessions/{session}/runs/{run}/", headers=headers)
        if status.status_code == 200 and status.json()["status"] != "running":
            return "" if status.json()["status"] == "completed" else f"run {status.text[:300]}"
    return f"run {run} still running after 4 s"


async def verify(base: str, data: dict, obs: Observations) -> dict:
    """The ledger against what the platform has, through its API: each acknowledged key once, every
    other at most once."""
    import httpx

    found: dict[str, int] = {}
    owners = {session: user["key"] for user in data["users"] for session in user["sessions"]}
    async with httpx.AsyncClient(base_url=base, timeout=30) as client:

        async def pages(path: str, key: str):
            url = f"{path}?page_size=500"
            while url:
                response = await client.get(url, headers={"Authorization": f"Bearer {key}"})
                response.raise_for_status()
                body = response.json()
                for row in body["results"]:
                    yield row
                url = body.get("next")

        for user in data["users"]:
            async for session in pages("/api/v1/sessions/", user["key"]):
                if session["name"].startswith("f-"):
                    found[session["name"][2:]] = found.get(session["name"][2:], 0) + 1
        for session, key in owners.items():
            async for message in pages(f"/api/v1/sessions/{session}/messages/", key):
                content = message.get("content")
                if message.get("role") == "user" and isinstance(content, str) and content.startswith("m-"):
                    found[content[2:]] = found.get(content[2:], 0) + 1
    acknowledged = [key for key, entry in obs.ledger.items() if entry["acknowledged"]]
    for key, entry in obs.ledger.items():
        count = found.get(key, 0)
        if entry["acknowledged"] and count != 1:
            obs.violations.append(f"ledger: acknowledged {entry['kind']} {key} is there {count} times")
        elif not entry["acknowledged"] and count > 1:
            obs.violations.append(f"ledger: unacknowledged {entry['kind']} {key} is there {count} times")
    return {"writes": len(obs.ledger), "acknowledged": len(acknowledged)}


def runs_left_running(organization_id: int) -> list[str]:
    from django.db import connections

    connections.close_all()  # this process's own connection did not live through the restart
    from sessions_app.models import AgentRun, RunStatus
    from tenants import scoping
    from tenants.models import Organization

    with scoping.organization_scope(Organization.objects.get(pk=organization_id)):
        return [str(pk) for pk in AgentRun.objects.filter(status=RunStatus.RUNNING).values_list("pk", flat=True)]


def run_outcomes(organization_id: int) -> dict:
    from django.db import connections

    connections.close_all()  # this process's own connection did not live through the restart
    from django.db.models import Count

    from sessions_app.models import AgentRun
    from tenants import scoping
    from tenants.models import Organization

    with scoping.organization_scope(Organization.objects.get(pk=organization_id)):
        rows = AgentRun.objects.values("status", "error__code", "error__message").annotate(n=Count("id"))
        return {row["status"] + (f" ({row['error__code']}: {str(row['error__message'])[:120]})" if row["error__code"] else ""): row["n"] for row in rows}  # fmt: skip


def audit_verified(base: str, owner_key: str) -> dict:
    """The organization's audit chain, verified through the API (the owner's key)."""
    request = urllib.request.Request(f"{base}/api/v1/audit/verify/", headers={"Authorization": f"Bearer {owner_key}"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.load(response)


async def exercise(stack: Stack, data: dict, upstream, oauth, double) -> dict:
    obs = Observations()
    stop = asyncio.Event()
    clients = [asyncio.create_task(client_loop(user, data, stack.base, obs, stop)) for user in data["users"][:-1]]
    probe = data["users"][-1]
    loop = asyncio.get_running_loop()
    recovery: dict[str, float] = {}

    async def fault(name: str, inject, restore=None, settle: float = 0.0):
        obs.phase = name
        print(f"fault {name}...", flush=True)
        await loop.run_in_executor(None, inject)
        if restore is not None:
            await asyncio.sleep(DOWN_SECONDS)
            await loop.run_in_executor(None, restore)
        returned = time.monotonic()
        recovery[name] = await recovered(stack.base, probe, data, name, returned, obs)
        print(f"  recovered in {recovery[name]:.1f} s", flush=True)
        obs.phase = f"after {name}"
        await asyncio.sleep(settle)

    await asyncio.sleep(5)  # the load settles
    obs.phase = "steady"
    recovery["none (steady)"] = await recovered(stack.base, probe, data, "steady", time.monotonic(), obs)
    await asyncio.sleep(3)

    # Redis: killed, restarted empty; the broker's queued tasks are lost with it.
    await fault("redis", lambda: stack.restart_redis(DOWN_SECONDS), settle=3)
    # PostgreSQL: every connection cut at once, back after DOWN_SECONDS.
    await fault("postgres", lambda: stack.restart_postgres(DOWN_SECONDS), settle=3)

    # The worker, killed while runs are mid-way (the model answers slowly meanwhile).
    def kill_worker():
        double.delay = 1.5
        time.sleep(2.5)
        stack.kill("worker")

    def new_worker():
        double.delay = 0.0
        stack.start("worker")
        stack.wait_for_worker()  # it is back once it answers; its start-up is not the platform's recovery

    await fault("worker", kill_worker, new_worker, settle=3)

    # The MCP server and the OAuth provider, stopped: connections accepted, nothing answered.
    await fault("mcp-hang", lambda: os.kill(upstream.process.pid, signal.SIGSTOP),
                lambda: os.kill(upstream.process.pid, signal.SIGCONT), settle=3)  # fmt: skip
    await fault("oauth-hang", lambda: os.kill(oauth.process.pid, signal.SIGSTOP),
                lambda: os.kill(oauth.process.pid, signal.SIGCONT), settle=3)  # fmt: skip

    obs.phase = "end"
    stop.set()
    await asyncio.gather(*clients)
    # Runs still going finish; runs whose worker was killed are failed by the reaper.
    deadline = time.monotonic() + 30
    while (
        left := await loop.run_in_executor(None, runs_left_running, data["organization"])
    ) and time.monotonic() < deadline:
        await asyncio.sleep(1)
    if left:
        obs.violations.append(f"runs left running 30 s after the load: {left[:5]} ({len(left)})")
    for role, process in stack.processes.items():
        if process.poll() is not None:
            obs.violations.append(f"the {role} process died (exit {process.returncode}); see var/faults/{role}.log")
    ledger = await verify(stack.base, data, obs)
    await asyncio.sleep(3)  # the sequencer chains the last events
    audit = await loop.run_in_executor(None, audit_verified, stack.base, data["owner_key"])
    if not audit.get("ok", audit.get("valid")):
        obs.violations.append(f"the audit chain does not verify: {audit}")
    return {"obs": obs, "recovery": recovery, "ledger": ledger, "audit": audit}


def report(result: dict, web_pids: list[int], stack: Stack, data: dict) -> str:
    obs, recovery, ledger = result["obs"], result["recovery"], result["ledger"]
    lines = ["# Fault report", "", f"{USERS} clients; {len(obs.answers)} answers; command: `make faults`.", "",
             "| phase | answers by status |", "| --- | --- |"]  # fmt: skip
    for phase, counts in obs.by_phase.items():
        lines.append(f"| {phase} | " + ", ".join(f"{status}: {n}" for status, n in sorted(counts.items())) + " |")
    lines += ["", "| fault | recovered after the part returned (target <= 10 s) | the last thing still failing |",
              "| --- | ---: | --- |"]  # fmt: skip
    for name, seconds in recovery.items():
        lines.append(f"| {name} | {seconds:.1f} s | {obs.held_by.get(name, '-').replace('|', '/')} |")
    lines += ["", f"Ledger: {ledger['writes']} keyed writes, {ledger['acknowledged']} acknowledged; each "
              "acknowledged one checked present exactly once, the others at most once.",
              "", f"Runs: {run_outcomes(data['organization'])}", "", f"Audit chain: {json.dumps(result['audit'])}",
              "", f"Web processes restarted: {'no' if web_pids == gunicorn_workers(stack) else 'YES'}", ""]  # fmt: skip
    if obs.violations:
        lines += ["## Violations", ""] + [f"- {violation}" for violation in obs.violations[:50]]
        if len(obs.violations) > 50:
            lines.append(f"- ... and {len(obs.violations) - 50} more")
    else:
        lines.append("No violations.")
    return "\n".join(lines)


def gunicorn_workers(stack: Stack) -> list[int]:
    master = stack.processes["web"].pid
    children = Path(f"/proc/{master}/task/{master}/children")
    return sorted(int(pid) for pid in children.read_text().split()) if children.exists() else []


def main() -> int:
    shutil.rmtree(OUT, ignore_errors=True)
    OUT.mkdir(parents=True)
    workdir = Path(tempfile.mkdtemp(prefix="agentapi-faults-"))
    workdir.chmod(0o755)
    stack = upstream = oauth = None
    try:
        services.ensure_redis()
        stack = Stack(workdir)
        os.environ.update({key: value for key, value in stack.env.items() if key not in os.environ or key in (
            "DATABASE_URL", "DATABASE_OWNER_URL", "REDIS_URL", "FIELD_ENCRYPTION_KEYS", "SECRET_KEY")})  # fmt: skip
        os.environ["DJANGO_SETTINGS_MODULE"] = "agentapi.settings.test"
        subprocess.run([sys.executable, "manage.py", "migrate", "-v", "0"], check=True, cwd=ROOT,
                       env={**stack.env, "DJANGO_SETTINGS_MODULE": "agentapi.settings.test"})  # fmt: skip
        import django

        django.setup()
        from tests.mcp.conftest import RunningServer
        from tests.sessions.model_doubles import ModelDouble

        upstream, oauth, double = RunningServer(), RunningServer("--oauth"), ModelDouble()
        oauth.base = f"http://127.0.0.1:{oauth.port}"
        data = prepare(upstream, oauth, double, stack.base)
        for role in ("web", "worker", "beat"):
            stack.start(role)
        wait_ready(stack.base)
        from tests.load.run import connect_everyone  # each user's OAuth connection, as the load suite makes them

        connect_everyone(data, stack.base)
        web_pids = gunicorn_workers(stack)
        result = asyncio.run(exercise(stack, data, upstream, oauth, double))
        text = report(result, web_pids, stack, data)
    finally:
        if stack is not None:
            stack.stop()
        for server in (upstream, oauth):
            if server is not None:
                os.kill(server.process.pid, signal.SIGCONT)
                server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    (OUT / "report.md").write_text(text + "\n")
    print(text)
    slow = {name: seconds for name, seconds in result["recovery"].items() if seconds > RECOVERY_TARGET}
    if slow:
        print(f"\nrecovery over {RECOVERY_TARGET:g} s: {slow}")
    return 1 if result["obs"].violations or slow or "restarted: YES" in text else 0


if __name__ == "__main__":
    sys.exit(main())
