"""agentapi backends started per session from an operator's template (sessions_app.terminals), on
real parts: two Celery worker nodes, a web process serving the session's MCP endpoint, the fastmcp
test server, PostgreSQL and Redis. The terminal agent is a double (tests/sessions/
terminal_agent_double.py: coder/agentapi's contract, and an agent that calls the platform's tools
with the URL and token it was handed), started by the platform as an operator's template says."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from django.conf import settings

from audit.models import AuditEvent
from mcp.models import StdioTemplate
from sessions_app import services
from sessions_app.models import AgentSession, SessionStatus
from tenants import scoping
from tenants.models import Organization
from tests.conftest import committed, error_of
from tests.mcp.conftest import configure
from tests.sessions.test_conversations import SESSIONS, finished, open_session, send
from tests.sessions.test_mcp_endpoint import start_web

pytestmark = committed
ROOT = Path(__file__).resolve().parents[2]
DOUBLE = ROOT / "tests" / "sessions" / "terminal_agent_double.py"
KEY = "sk-terminal-key-never-shown-9876543210"
IDLE_SECONDS = 10


@pytest.fixture(scope="module")
def web():
    process, base = start_web()
    yield base
    process.kill()
    process.wait(10)


def start_node(name: str, web: str, **overrides) -> subprocess.Popen:
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "agentapi.settings.test", "OUTBOUND_ALLOWED_NETWORKS": "127.0.0.0/8",
           "AGENT_TERMINAL_PLATFORM_URL": web, "AGENT_TERMINAL_CHECK_SECONDS": "0.5",
           "AGENT_TERMINAL_LEASE_SECONDS": "3", "AGENT_TERMINAL_IDLE_SECONDS": str(IDLE_SECONDS),
           "AGENT_RUN_HEARTBEAT_SECONDS": "0.5", **overrides}  # fmt: skip
    return subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "agentapi", "worker", "--pool=solo", "--loglevel=INFO",
         "-n", f"{name}@%h", "--without-heartbeat", "--without-gossip", "--without-mingle"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


@pytest.fixture(scope="module")
def nodes(web):
    started = [start_node("one", web), start_node("two", web)]
    yield started
    logs = []
    for process in started:
        process.terminate()
        logs.append(process.communicate(timeout=30)[0])
    # Every run went through these workers, their logs at INFO: the backend's key never appears,
    # nor any terminal agent's token.
    assert all(KEY not in log and not re.search(r"\bast_[A-Za-z0-9_-]{20,}", log) for log in logs)
    assert any("terminal agent started" in log for log in logs), logs[0][-2000:]
    # Runs taken by the node that does not own a session's terminal were handed to the one that does.
    assert any("agent run handed to the node of its terminal agent" in log for log in logs)


@pytest.fixture
def template(db):
    # An operator's template: no shell, the double by path, its port from the platform; the
    # backend's key handed over as an environment variable; one option the tenant may set.
    made = StdioTemplate.objects.create(
        name="terminal-double", command=sys.executable, arguments=[str(DOUBLE), "--port", "{port}"],
        allowed_arguments=["--chunk-delay"], env={"DOUBLE_API_KEY": "{api_key}"},
    )  # fmt: skip
    yield made
    # A test's terminals stop once their worker notices their session ended (within a check), not
    # only when they idle out: end the sessions the test left open, as their users would.
    for organization in Organization.objects.all():
        with scoping.organization_scope(organization):
            for session in AgentSession.objects.filter(status=SessionStatus.ACTIVE):
                services.session_close(session=session)
    deadline = time.monotonic() + 15
    while _double_processes() and time.monotonic() < deadline:
        time.sleep(0.2)


def _double_processes() -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if str(DOUBLE) in (entry / "cmdline").read_bytes().decode(errors="replace"):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def terminal_backend(api, template, name="terminal", **extra) -> dict:
    created = api.post("/api/v1/agents/", {"name": name, "kind": "agentapi", "template": template.name,
                                           "api_key": KEY, **extra})  # fmt: skip
    assert created.status_code == 201, created.content
    return created.json()


def reply_of(api, session) -> str:
    return api.get(f"{SESSIONS}{session['id']}/messages/").json()["results"][-1]["content"]


def ask(api, session, content: str) -> tuple[dict, str]:
    run = finished(api, session, send(api, session, content)["run"]["id"], timeout=90)
    return run, reply_of(api, session)


def whoami(api, session) -> dict:
    run, reply = ask(api, session, "whoami")
    assert run["status"] == "completed", run
    return json.loads(reply)


def registry(session_id: str) -> dict:
    import redis

    client = redis.Redis.from_url(settings.REDIS_URL)
    return {k.decode(): v.decode() for k, v in client.hgetall(f"agentapi:terminal:{session_id}").items()}


def gone(pid: int, timeout: float = 15) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


def mcp_call(web: str, session_id: str, token: str) -> int:
    """The status of an MCP initialize at a session's endpoint with a token."""
    response = httpx.post(
        f"{web}/mcp/sessions/{session_id}/",
        headers={"Authorization": f"Bearer {token}", "Accept": "application/json, text/event-stream"},
        json={
            "jsonrpc": "2.0",
            "id": 1,
            "method": "initialize",
            "params": {
                "protocolVersion": "2025-06-18",
                "capabilities": {},
                "clientInfo": {"name": "test", "version": "1"},
            },
        },  # fmt: skip
        timeout=10,
    )
    return response.status_code


def test_a_stopping_worker_stops_its_terminal_agents_and_clears_their_tokens(
    alice_api, acme, template, web, mcp_settings
):
    # The module's first test: its worker is the only one running, so it owns the terminal.
    node = start_node("lone", web)
    try:
        session = open_session(alice_api, terminal_backend(alice_api, template))
        me = whoami(alice_api, session)
        assert registry(session["id"])["node"].startswith("lone@")
    finally:
        node.terminate()
        log = node.communicate(timeout=30)[0]
    assert gone(me["pid"], timeout=5), log[-2000:]
    assert registry(session["id"]) == {}
    with scoping.organization_scope(acme):
        assert AgentSession.objects.get(pk=session["id"]).agent_token_hash == ""
        stops = AuditEvent.objects.filter(action="agent.terminal.stop")
        assert [e.details["reason"] for e in stops] == ["worker_stopped"]


def test_a_terminal_whose_worker_died_is_started_again_by_the_next_run(
    alice_api, acme, template, web, mcp_settings, request
):
    # Before the module's two nodes run: this test's node takes the first run.
    lease = {"AGENT_TERMINAL_LEASE_SECONDS": "120"}  # the dead owner's record outlives these steps
    doomed = start_node("doomed", web, **lease)
    try:
        session = open_session(alice_api, terminal_backend(alice_api, template))
        first = whoami(alice_api, session)
    finally:
        doomed.send_signal(signal.SIGKILL)
        doomed.communicate(timeout=30)
    assert gone(first["pid"], timeout=5)  # it died with its worker (setpriv --pdeathsig)
    assert registry(session["id"])["node"].startswith("doomed@")  # no one cleared its record
    # The same node restarted: the record names a process that is gone, so a new terminal starts.
    again = start_node("doomed", web, **lease)
    try:
        second = whoami(alice_api, session)
    finally:
        again.send_signal(signal.SIGKILL)
        again.communicate(timeout=30)
    assert second["pid"] != first["pid"] and gone(second["pid"], timeout=5)
    # Other nodes: the owner's node does not answer a ping, so the run is not handed to it.
    request.getfixturevalue("nodes")
    third = whoami(alice_api, session)
    assert third["pid"] not in (first["pid"], second["pid"])
    assert not registry(session["id"])["node"].startswith("doomed@")


def test_a_session_gets_its_own_terminal_agent_which_uses_the_platforms_tools(
    alice_api, acme, template, nodes, web, http_server, mcp_settings
):
    plain = configure(alice_api, name="plain", url=http_server.url)
    agent = terminal_backend(alice_api, template, template_arguments={"arguments": {"--chunk-delay": "0.01"}})
    assert agent["template"] == "terminal-double" and agent["base_url"] == "" and agent["has_api_key"]
    session = open_session(alice_api, agent, plain["id"])
    me = whoami(alice_api, session)
    # Started as the template says: in the session's workspace, from a clean environment that
    # holds the session's MCP endpoint, its token and the backend's key, and nothing of the platform's.
    workspace = Path(settings.SESSION_WORKSPACE_ROOT) / str(acme.pk) / session["id"]
    assert Path(me["cwd"]).resolve() == workspace.resolve()
    assert set(me["env"]) - {"LC_CTYPE"} == {"PATH", "HOME", "LANG", "PLATFORM_MCP_URL", "PLATFORM_MCP_TOKEN",
                                             "PLATFORM_SESSION_ID", "DOUBLE_API_KEY"}  # fmt: skip
    assert me["mcp_config_names_endpoint"]
    config = json.loads((workspace / ".mcp.json").read_text())["mcpServers"]["platform"]
    assert config["url"] == f"{web}/mcp/sessions/{session['id']}/"
    assert oct((workspace / ".mcp.json").stat().st_mode & 0o777) == "0o600"
    token = config["headers"]["Authorization"].removeprefix("Bearer ")
    with open(f"/proc/{me['pid']}/limits") as limits:
        assert any(line.startswith("Max open files") and " 256 " in line for line in limits)
    # The agent calls a tool through the platform: its proxy, with the session named in the audit.
    run, reply = ask(alice_api, session, 'call plain__add {"a": 2, "b": 3}')
    assert run["status"] == "completed" and reply.startswith("result: ") and '"sum":5' in reply.replace(" ", ""), reply
    with scoping.organization_scope(acme):
        calls = AuditEvent.objects.filter(action="mcp.tool.call")
        assert [(e.details["tool"], e.details["session"]) for e in calls] == [("add", session["id"])]
        assert AuditEvent.objects.filter(action="agent.terminal.start").count() == 1
    # Its token is good at this session's endpoint only.
    other = open_session(alice_api, agent)
    assert mcp_call(web, session["id"], token) == 200
    assert mcp_call(web, other["id"], token) in (401, 403, 404)
    # Kept between runs, whichever node takes a run: node one stops taking new work from the
    # shared queue, so node two gets the next runs and hands them to the owner's node.
    owner = registry(session["id"])
    assert owner["url"].startswith("http://127.0.0.1:") and owner["node"].split("@")[0] in ("one", "two")
    from agentapi.celery import app

    app.control.cancel_consumer("celery", destination=[owner["node"]], reply=True, timeout=5)
    try:
        pids = {whoami(alice_api, session)["pid"] for _ in range(3)}
    finally:
        app.control.add_consumer("celery", destination=[owner["node"]], reply=True, timeout=5)
    assert pids == {me["pid"]}
    # The session ends: the process stops, its token no longer works, its record is gone.
    closed = alice_api.delete(f"{SESSIONS}{session['id']}/")
    assert closed.status_code == 204, closed.content
    assert mcp_call(web, session["id"], token) == 401
    assert gone(me["pid"]), "the terminal agent outlived its session"
    deadline = time.monotonic() + 10
    while registry(session["id"]) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert registry(session["id"]) == {}
    with scoping.organization_scope(acme):
        stops = AuditEvent.objects.filter(action="agent.terminal.stop", target_id=session["id"])
        assert [e.details["reason"] for e in stops] == ["session_ended"]
        assert AgentSession.objects.get(pk=session["id"]).agent_token_hash == ""
        assert KEY not in json.dumps(list(AuditEvent.objects.values_list("details", flat=True)))


def test_a_terminal_that_dies_or_whose_backend_changes_is_started_again_with_a_new_token(
    alice_api, acme, template, nodes, web, mcp_settings
):
    agent = terminal_backend(alice_api, template)
    session = open_session(alice_api, agent)
    first = whoami(alice_api, session)
    workspace = Path(first["cwd"])
    first_token = json.loads((workspace / ".mcp.json").read_text())["mcpServers"]["platform"]["headers"]
    os.kill(first["pid"], signal.SIGKILL)
    second = whoami(alice_api, session)
    assert second["pid"] != first["pid"]
    assert mcp_call(web, session["id"], first_token["Authorization"].removeprefix("Bearer ")) == 401
    # A changed backend (its template's arguments) restarts it, once it is not running.
    changed = alice_api.patch(f"/api/v1/agents/{agent['id']}/",
                              {"template_arguments": {"arguments": {"--chunk-delay": "0.02"}}})  # fmt: skip
    assert changed.status_code == 200, changed.content
    assert gone(second["pid"])
    third = whoami(alice_api, session)
    assert third["pid"] not in (first["pid"], second["pid"])
    with scoping.organization_scope(acme):
        reasons = [e.details["reason"] for e in AuditEvent.objects.filter(action="agent.terminal.stop")]
    assert "exited" in reasons and "backend_changed" in reasons


def test_a_run_is_cancelled_with_an_escape_and_an_idle_terminal_is_stopped(
    alice_api, acme, template, nodes, web, mcp_settings
):
    agent = terminal_backend(alice_api, template, template_arguments={"arguments": {"--chunk-delay": "0.3"}})
    session = open_session(alice_api, agent)
    me = whoami(alice_api, session)  # 0.3 s a word: a few words
    sent = send(alice_api, session, "echo " + " ".join(f"w{i}" for i in range(40)))
    time.sleep(2.0)
    cancelled = alice_api.post(f"{SESSIONS}{session['id']}/runs/{sent['run']['id']}/cancel/")
    assert cancelled.json()["status"] == "cancelled"
    # The terminal was sent an Escape: it stops talking, and the next message is answered.
    time.sleep(1.0)
    run, reply = ask(alice_api, session, "hello")
    assert run["status"] == "completed" and reply == "echo: hello", (run, reply)
    # Left alone past its idle time, it is stopped, and its token cleared.
    assert gone(me["pid"], timeout=IDLE_SECONDS + 10)
    with scoping.organization_scope(acme):
        assert AgentSession.objects.get(pk=session["id"]).agent_token_hash == ""
        reasons = [e.details["reason"] for e in AuditEvent.objects.filter(action="agent.terminal.stop")]
    assert reasons == ["idle"]


def test_a_terminal_that_cannot_start_fails_the_run_with_its_reason(alice_api, acme, nodes, web, mcp_settings):
    broken = StdioTemplate.objects.create(
        name="terminal-broken", command=sys.executable, arguments=["-c", "import sys; sys.exit('no agent here')",
                                                                  "{port}"],
    )  # fmt: skip
    session = open_session(alice_api, terminal_backend(alice_api, broken, name="broken"))
    run, _ = ask(alice_api, session, "hello")
    assert run["status"] == "failed" and run["error"]["code"] == "agent_unavailable", run
    assert "exited" in run["error"]["message"] and "no agent here" in run["error"]["message"]


def test_templates_and_backends_are_checked(alice_api, template, mcp_settings):
    agents = "/api/v1/agents/"
    cases = [
        ({"kind": "agentapi", "template": template.name, "base_url": "http://127.0.0.1:9/"}, "base_url"),
        ({"kind": "agentapi"}, "base_url"),
        ({"kind": "openai", "base_url": "http://127.0.0.1:9/v1", "model": "m", "template": template.name}, "template"),
        ({"kind": "agentapi", "template": template.name, "template_arguments": {"arguments": {"--evil": "1"}}},
         "stdio_arguments"),
        ({"kind": "agentapi", "template": template.name, "template_arguments": {"env": {"LD_PRELOAD": "/x.so"}}},
         "stdio_arguments"),
        ({"kind": "agentapi", "template": "no-such-template"}, "template"),
    ]  # fmt: skip
    for body, field in cases:
        response = alice_api.post(agents, {"name": "checked", **body})
        assert response.status_code == 400, (body, response.content)
        assert field in error_of(response).get("details", {}), (body, response.content)
    server_like = StdioTemplate.objects.create(name="plain-server", command=sys.executable, arguments=["-V"])
    refused = alice_api.post(agents, {"name": "checked", "kind": "agentapi", "template": server_like.name})
    assert refused.status_code == 400 and "template" in error_of(refused)["details"]
    # A terminal agent's template is not an MCP server's.
    mcp = alice_api.post("/api/v1/mcp/configurations/", {"name": "t", "transport": "stdio",
                                                        "stdio_template": template.name})  # fmt: skip
    assert mcp.status_code == 400 and "stdio_template" in error_of(mcp)["details"]
