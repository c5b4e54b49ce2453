"""Agent conversations end to end on real parts: a Celery worker runs the tool loop (pydantic-ai,
the platform's HTTP client) against the model doubles (tests/sessions/model_doubles.py: the only
stand-ins, for hosted models) and real MCP servers (the fastmcp test server, and fastmcp's OAuth
server with the user's own token), on real PostgreSQL and Redis; events are read from two real web
processes (uvicorn)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from django.test import Client

from audit.models import AuditEvent
from sessions_app import agent_loop, runs
from sessions_app.models import AgentEvent, AgentMessage, AgentRun
from tenants import scoping
from tests.conftest import committed, error_of
from tests.mcp.conftest import configure
from tests.oauth.conftest import connect
from tests.sessions.model_doubles import ModelDouble
from tests.sessions.test_mcp_endpoint import start_web  # two web processes, as there

pytestmark = committed
ROOT = Path(__file__).resolve().parents[2]
SESSIONS = "/api/v1/sessions/"
KEY = "sk-conversation-key-never-shown-0123456789"


WORKER_ENV = {"DJANGO_SETTINGS_MODULE": "agentapi.settings.test", "OUTBOUND_ALLOWED_NETWORKS": "127.0.0.0/8",
              "AGENT_RUN_HEARTBEAT_SECONDS": "0.5", "AGENT_RUN_LOST_SECONDS": "3", "AGENT_TEXT_COALESCE_SECONDS": "0.05",
              "AGENT_BREAKER_FAIL_MAX": "3", "AGENT_BREAKER_RESET_SECONDS": "600"}  # fmt: skip


def start_worker(**env_overrides) -> subprocess.Popen:
    env = {**os.environ, **WORKER_ENV, **env_overrides}
    return subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "agentapi", "worker", "--pool=solo", "--loglevel=INFO",
         "--without-heartbeat", "--without-gossip", "--without-mingle"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


@pytest.fixture(scope="module")
def double():
    return ModelDouble()


@pytest.fixture(scope="module")
def worker():
    process = start_worker()
    yield process
    process.terminate()
    output = process.communicate(timeout=30)[0]
    # Every run of the module went through this worker, its log at INFO: the key never appears.
    assert "agent_run" in output and KEY not in output


@pytest.fixture(autouse=True)
def fresh_double(double):
    double.requests.clear()
    double.tool_calls, double.delay, double.chunk_delay, double.fail_with = [], 0.0, 0.0, None
    double.reply = "The double has answered."
    yield
    # No run outlives its test: the database is emptied next, and a worker still writing would
    # hold it up.
    deadline = time.monotonic() + 30
    with scoping.dangerously_all_organizations(reason="test teardown", record=False):
        while AgentRun.objects.filter(status="running").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
    time.sleep(0.5)  # its worker's last statements after the run ended


def backend(api, double, kind="openai") -> dict:
    base_url = f"{double.url}/v1" if kind == "openai" else double.url
    created = api.post("/api/v1/agents/", {"name": f"model-{kind}", "kind": kind, "base_url": base_url,
                                           "model": "double-1", "api_key": KEY})  # fmt: skip
    assert created.status_code == 201, created.content
    return created.json()


def open_session(api, agent, *configurations) -> dict:
    response = api.post(SESSIONS, {"agent": agent["id"], "mcp_configurations": list(configurations)})
    assert response.status_code == 201, response.content
    return response.json()


def finished(api, session, run_id, timeout=60) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        run = api.get(f"{SESSIONS}{session['id']}/runs/{run_id}/").json()
        if run["status"] != "running":
            return run
        assert time.monotonic() < deadline, run
        time.sleep(0.1)


def send(api, session, content) -> dict:
    response = api.post(f"{SESSIONS}{session['id']}/messages/", {"content": content})
    assert response.status_code == 202, response.content
    return response.json()


def test_a_worker_killed_mid_run_leaves_it_failed_never_running_and_never_replayed(
    alice_api, acme, double, mcp_settings
):
    # The first test of the module: no other worker runs yet, so the doomed one takes the run.
    from sessions_app.tasks import agent_runs_reap

    session = open_session(alice_api, backend(alice_api, double))
    double.delay = 60.0
    doomed = start_worker()
    worker_log = []
    try:
        sent = send(alice_api, session, "This run's worker will die.")
        deadline = time.monotonic() + 30
        while True:
            with scoping.organization_scope(acme):
                run = AgentRun.objects.get(pk=sent["run"]["id"])
            if run.claimed_at is not None and double.requests or time.monotonic() > deadline:
                break
            time.sleep(0.05)
    finally:
        doomed.send_signal(signal.SIGKILL)
        worker_log.append(doomed.communicate(timeout=30)[0])
    assert run.status == "running" and run.claimed_at is not None, worker_log[0][-3000:]
    time.sleep(float(WORKER_ENV["AGENT_RUN_LOST_SECONDS"]) + 0.5)
    restarted = start_worker()
    try:
        agent_runs_reap.delay()  # the scheduled job, on the restarted worker
        ended = finished(alice_api, session, sent["run"]["id"], timeout=30)
    except AssertionError:
        restarted.terminate()
        with scoping.organization_scope(acme):
            stuck = AgentRun.objects.get(pk=sent["run"]["id"])
        from django.utils import timezone as tz

        raise AssertionError(
            (stuck.claimed_at, stuck.heartbeat_at, tz.now(), restarted.communicate(timeout=30)[0][-300:])
        ) from None
    finally:
        if restarted.poll() is None:
            restarted.terminate()
            worker_log.append(restarted.communicate(timeout=30)[0])
    assert ended["status"] == "failed" and ended["error"]["code"] in ("worker_lost", "interrupted"), ended
    # A redelivery of the task (acks late) finds the run ended: nothing is run twice.
    with scoping.organization_scope(acme):
        assert runs.execute(sent["run"]["id"]) == "skipped"
        assert list(AgentMessage.objects.filter(session_id=session["id"]).values_list("role", flat=True)) == ["user"]
        types = list(AgentEvent.objects.filter(session_id=session["id"]).values_list("type", flat=True))
    assert types[-2:] == ["agent_error", "status_change"]
    assert all(KEY not in output for output in worker_log)


def test_a_run_whose_task_the_broker_lost_is_queued_again_by_the_reaper_and_runs_once(
    alice_api, acme, double, mcp_settings, settings
):
    # Before the module's worker starts: nothing takes the task, which is then lost as Redis loses
    # its queue when it restarts without persistence (tests/faults/run.py does that for real).
    import redis

    session = open_session(alice_api, backend(alice_api, double))
    sent = send(alice_api, session, "Is anyone there?")
    broker = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    assert broker.delete("celery") == 1  # the queue held the run's task, and now holds nothing
    settings.AGENT_RUN_REQUEUE_SECONDS = 0.5
    time.sleep(0.6)
    assert runs.reap()["requeued"] == 1  # the run's row was the durable record
    assert runs.reap()["requeued"] == 1  # not taken yet: sent again (its claim makes that harmless)
    late = start_worker()
    try:
        ended = finished(alice_api, session, sent["run"]["id"], timeout=30)
    finally:
        late.terminate()
        late.communicate(timeout=30)
    assert ended["status"] == "completed", ended
    assert runs.reap()["requeued"] == 0
    with scoping.organization_scope(acme):
        roles = list(
            AgentMessage.objects.filter(session_id=session["id"]).order_by("seq").values_list("role", flat=True)
        )
    assert roles == ["user", "assistant"]  # answered once, though its task was delivered twice
    assert len([r for r in double.requests if r["path"].endswith("/chat/completions")]) == 1


def test_a_run_calls_two_tools_on_two_servers_with_the_users_oauth_token(
    alice_api, acme, double, worker, http_server, oauth_server, mcp_settings
):
    guarded = alice_api.post(SESSIONS.replace("sessions", "mcp/configurations"),
                             {"name": "guarded", "url": oauth_server.url, "auth_type": "oauth"}).json()  # fmt: skip
    connect(alice_api, Client(), mcp_configuration=guarded["id"])
    plain = configure(alice_api, name="plain", url=http_server.url)
    agent = backend(alice_api, double)
    session = open_session(alice_api, agent, guarded["id"], plain["id"])
    double.tool_calls = [("guarded__echo", {"text": "with alice's token"}), ("plain__add", {"a": 2, "b": 3})]
    sent = send(alice_api, session, "Echo something and add two numbers.")
    assert sent["message"]["role"] == "user" and sent["run"]["status"] == "running"
    run = finished(alice_api, session, sent["run"]["id"])
    assert run["status"] == "completed", run
    assert run["usage"] == {"input_tokens": 40, "output_tokens": 10} and run["steps"] == 2 and run["tool_calls"] == 2
    messages = alice_api.get(f"{SESSIONS}{session['id']}/messages/").json()["results"]
    assert [m["role"] for m in messages] == ["user", "assistant", "tool", "tool", "assistant"]
    assert [m["seq"] for m in messages] == [0, 1, 2, 3, 4]
    assert [c["name"] for c in messages[1]["tool_calls"]] == ["guarded__echo", "plain__add"]
    results = {m["tool_name"]: m for m in messages[2:4]}
    assert results["guarded__echo"]["content"] == "with alice's token" and not results["guarded__echo"]["is_error"]
    assert json.loads(results["plain__add"]["content"]) == {"sum": 5}
    assert messages[4]["content"] == "The double has answered."
    # The model was sent the tools' results, and the backend's key, which appears nowhere else.
    second = double.requests[-1]
    assert second["headers"]["authorization"] == f"Bearer {KEY}"
    assert [m["content"] for m in second["body"]["messages"] if m["role"] == "tool"][0] == "with alice's token"
    with scoping.organization_scope(acme):
        calls = AuditEvent.objects.filter(action="mcp.tool.call")
        # Every call the agent made went through the proxy: audited, with the session named.
        assert sorted((e.details["tool"], e.details["session"]) for e in calls) == [
            ("add", session["id"]), ("echo", session["id"])]  # fmt: skip
        actions = set(AuditEvent.objects.values_list("action", flat=True))
        assert {"agent.message", "agent.run.completed"} <= actions
        stored = list(AgentEvent.objects.filter(session_id=session["id"]).values_list("type", "data"))
    types = [t for t, _ in stored]
    assert types[:2] == ["message_update", "status_change"] and types[-1] == "status_change"
    assert types.count("tool_call") == 2 and types.count("tool_result") == 2
    assert KEY not in json.dumps([d for _, d in stored]) and KEY not in json.dumps(messages)
    usage = alice_api.get(f"{SESSIONS}{session['id']}/usage/").json()
    assert usage["input_tokens"] == 40 and usage["runs"] == 1


def test_an_anthropic_backend_streams_its_reply_coalesced_and_uses_a_tool(
    alice_api, acme, double, worker, http_server, mcp_settings
):
    plain = configure(alice_api, name="plain", url=http_server.url)
    session = open_session(alice_api, backend(alice_api, double, "anthropic"), plain["id"])
    double.tool_calls = [("plain__echo", {"text": "hello"})]
    double.reply = " ".join(f"word{i}" for i in range(40))
    double.chunk_delay = 0.01  # 40 chunks over ~0.4 s: coalesced into a few updates
    run = finished(alice_api, session, send(alice_api, session, "Say many words.")["run"]["id"])
    assert run["status"] == "completed", run
    assert run["usage"] == {"input_tokens": 60, "output_tokens": 14}
    sent_headers = double.requests[0]["headers"]
    assert KEY in (sent_headers.get("x-api-key"), sent_headers.get("authorization", "").removeprefix("Bearer "))
    assert double.requests[0]["body"]["stream"] is True
    with scoping.organization_scope(acme):
        updates = [data for kind, data in AgentEvent.objects.filter(session_id=session["id"]).values_list("type", "data")
                   if kind == "message_update" and data["role"] == "assistant"]  # fmt: skip
    assert updates[-1]["content"] == double.reply
    assert 1 < len(updates) < 40  # streamed, but not a write per token
    assert all(double.reply.startswith(update["content"]) for update in updates)


def test_a_second_message_while_a_run_goes_is_session_busy_and_cancel_stops_the_run(
    alice_api, acme, double, worker, mcp_settings
):
    session = open_session(alice_api, backend(alice_api, double))
    double.delay = 5.0
    sent = send(alice_api, session, "Take your time.")
    busy = alice_api.post(f"{SESSIONS}{session['id']}/messages/", {"content": "Are you there?"})
    assert busy.status_code == 409 and error_of(busy)["code"] == "session_busy"
    run_url = f"{SESSIONS}{session['id']}/runs/{sent['run']['id']}/"
    deadline = time.monotonic() + 20
    while not double.requests:  # the worker has asked the model
        assert time.monotonic() < deadline
        time.sleep(0.05)
    cancelled = alice_api.post(f"{run_url}cancel/")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    assert alice_api.post(f"{run_url}cancel/").json()["status"] == "cancelled"  # idempotent
    time.sleep(6)  # past the double's answer: the stopped worker stores nothing of it
    messages = alice_api.get(f"{SESSIONS}{session['id']}/messages/").json()["results"]
    assert [m["role"] for m in messages] == ["user"]
    double.delay = 0.0
    again = send(alice_api, session, "Now answer.")
    assert finished(alice_api, session, again["run"]["id"])["status"] == "completed"
    messages = alice_api.get(f"{SESSIONS}{session['id']}/messages/").json()["results"]
    assert [m["role"] for m in messages] == ["user", "user", "assistant"]
    with scoping.organization_scope(acme):
        assert AuditEvent.objects.filter(action="agent.run.cancelled").count() == 1


# -- event streams, on real web processes ---------------------------------------------------------


@pytest.fixture(scope="module")
def web():
    """Two web processes, as a deployment without sticky routing has them."""
    started = [start_web(), start_web()]
    yield [base for _, base in started]
    for process, _ in started:
        process.kill()
        process.wait(10)


def parse_sse(lines) -> "iter[dict]":
    """Server-Sent Events from a stream's lines: {id, event, data} (heartbeats as {"comment"})."""
    current: dict = {}
    for line in lines:
        if line == "":
            if current:
                yield current
            current = {}
        elif line.startswith(":"):
            yield {"comment": line[1:].strip()}
        else:
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            current[name] = json.loads(value) if name == "data" else int(value) if name in ("id", "retry") else value


def read_stream(url: str, headers: dict, until, timeout: float = 30) -> list[dict]:
    found = []
    with httpx.stream("GET", url, headers=headers, timeout=timeout) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        for event in parse_sse(response.iter_lines()):
            if "event" in event:
                found.append(event)
                if until(found):
                    break
    return found


def ended(events) -> bool:
    last = events[-1]
    return last["event"] == "status_change" and last["data"].get("outcome") is not None


def test_last_event_id_replays_exactly_what_was_missed_across_two_web_processes(
    alice_api, acme, double, worker, web, mcp_settings
):
    session = open_session(alice_api, backend(alice_api, double))
    double.reply = "one two three four five six seven eight"
    double.chunk_delay = 0.03
    auth = {"Authorization": alice_api.headers["Authorization"]}
    url = f"{{}}/api/v1/sessions/{session['id']}/events/"
    # A live stream on the first process, opened before the message is sent.
    import threading

    live: list = []
    follower = threading.Thread(target=lambda: live.extend(read_stream(url.format(web[0]), auth, ended)))
    follower.start()
    time.sleep(0.5)
    run = finished(alice_api, session, send(alice_api, session, "Count.")["run"]["id"])
    follower.join(30)
    assert run["status"] == "completed"
    with scoping.organization_scope(acme):
        stored = list(AgentEvent.objects.filter(session_id=session["id"]).order_by("id").values_list("id", "type"))
    assert live[0]["event"] == "status_change" and live[0]["data"]["status"] == "stable"  # where it started
    assert [(e["id"], e["event"]) for e in live[1:]] == stored
    # Disconnected after the third event: the other process sends exactly the rest.
    resumed = read_stream(url.format(web[1]), {**auth, "Last-Event-ID": str(stored[2][0])}, ended)
    assert [(e["id"], e["event"]) for e in resumed] == stored[3:]
    assert [e["data"] for e in resumed] == [e["data"] for e in live[4:]]
    texts = [e["data"]["content"] for e in live if e["event"] == "message_update" and e["data"]["role"] == "assistant"]
    assert texts[-1] == double.reply
    # Bad input is a 400 in the documented shape; another user's session is 404.
    bad = httpx.get(url.format(web[0]), headers={**auth, "Last-Event-ID": "soon"}, timeout=10)
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid"
    assert httpx.get(url.format(web[0]), timeout=10).status_code == 401


def test_two_hundred_open_streams_hold_no_thread_of_one_web_process(alice_api, double, worker, web, mcp_settings):
    import asyncio

    session = open_session(alice_api, backend(alice_api, double))
    auth = {"Authorization": alice_api.headers["Authorization"]}
    url = f"{web[0]}/api/v1/sessions/{session['id']}/events/"

    async def scenario():
        limits = httpx.Limits(max_connections=300, max_keepalive_connections=0)
        async with httpx.AsyncClient(timeout=60, limits=limits) as client:
            opened = asyncio.Event()
            ready = 0
            received = []

            async def one():
                nonlocal ready
                async with client.stream("GET", url, headers=auth) as response:
                    assert response.status_code == 200
                    lines = response.aiter_lines()
                    seen = []
                    async for line in lines:
                        if line.startswith("event: "):
                            seen.append(line[7:])
                            if len(seen) == 1:
                                ready += 1
                                if ready == 200:
                                    opened.set()
                            elif line == "event: message_update":
                                received.append(1)
                                return

            streams = [asyncio.ensure_future(one()) for _ in range(200)]
            await asyncio.wait_for(opened.wait(), 60)
            # Every stream is open and waiting; the same process still answers the API at once
            # (it has WEB_THREADS=4 threads: had each stream held one, this would wait).
            started = time.monotonic()
            listed = await client.get(f"{web[0]}/api/v1/sessions/", headers=auth)
            answered_in = time.monotonic() - started
            assert listed.status_code == 200
            sent = await client.post(f"{web[0]}/api/v1/sessions/{session['id']}/messages/", headers=auth,
                                     json={"content": "Wake everyone."})  # fmt: skip
            assert sent.status_code == 202, sent.text
            await asyncio.wait_for(asyncio.gather(*streams), 60)
            return answered_in, len(received)

    answered_in, woken = asyncio.run(scenario())
    assert woken == 200  # each of the 200 streams got the message
    assert answered_in < 5.0, answered_in


# -- coder/agentapi's contract ---------------------------------------------------------------------
# Checked against coder/agentapi's published openapi.json (0.11.6), field by field:
# - GET /status -> StatusResponseBody: required agent_type (string), status (AgentStatus: running|stable).
# - GET /messages -> MessagesResponseBody: required messages, each a Message with exactly the required
#   content (string), id (int64, the message's order), role (ConversationRole: agent|user), time (date-time).
# - POST /message with MessageRequestBody {content, type: user|raw} -> MessageResponseBody: required ok (bool).
# - GET /events: SSE `message_update` with MessageUpdateBody (exactly id, message, role, time) and
#   `status_change` with StatusChangeBody (exactly agent_type, status), each with an integer id.
# - Errors: ErrorModel (application/problem+json): title, status, detail.


def test_a_client_written_for_coder_agentapi_drives_a_session(alice_api, double, worker, web, mcp_settings):
    from datetime import datetime

    session = open_session(alice_api, backend(alice_api, double))
    token = {"Authorization": f"Bearer {session['mcp_token']}"}  # the session's own token
    base = f"{web[1]}/agentapi/sessions/{session['id']}"
    status = httpx.get(f"{base}/status", headers=token, timeout=10)
    assert status.status_code == 200 and status.json() == {"agent_type": "custom", "status": "stable"}
    assert httpx.get(f"{base}/messages", headers=token, timeout=10).json() == {"messages": []}

    posted = httpx.post(f"{base}/message", headers=token, json={"content": "Hello, agent!", "type": "user"}, timeout=10)
    assert posted.status_code == 200 and posted.json() == {"ok": True}
    events = read_stream(f"{base}/events", token, lambda found: found[-1] == {**found[-1], "event": "status_change"}
                         and found[-1]["data"]["status"] == "stable" and len(found) > 2)  # fmt: skip
    messages = httpx.get(f"{base}/messages", headers=token, timeout=10).json()["messages"]
    assert [m["role"] for m in messages] == ["user", "agent"]
    for message in messages:
        assert set(message) == {"content", "id", "role", "time"}
        assert isinstance(message["id"], int) and isinstance(message["content"], str)
        datetime.fromisoformat(message["time"].replace("Z", "+00:00"))
    assert [m["id"] for m in messages] == sorted(m["id"] for m in messages)
    assert messages[1]["content"] == double.reply
    kinds = {event["event"] for event in events}
    assert kinds <= {"message_update", "status_change"}
    for event in events:
        assert isinstance(event["id"], int)
        if event["event"] == "message_update":
            assert set(event["data"]) == {"id", "message", "role", "time"} and event["data"]["role"] in (
                "user",
                "agent",
            )
        else:
            assert set(event["data"]) == {"agent_type", "status"} and event["data"]["status"] in ("running", "stable")
    assert events[-1]["data"]["status"] == "stable"
    assert [e["data"]["message"] for e in events if e["event"] == "message_update"][-1] == double.reply

    # Errors are agentapi's problem+json; a second user message while running is refused there too.
    for body, code in (({"content": "x", "type": "raw"}, 400), ({"content": "x", "type": "shout"}, 400),
                       ({"content": "x", "type": "user", "extra": 1}, 400), ({"type": "user"}, 400)):  # fmt: skip
        refused = httpx.post(f"{base}/message", headers=token, json=body, timeout=10)
        assert refused.status_code == code, refused.text
        assert refused.headers["content-type"] == "application/problem+json"
        assert {"title", "status", "detail"} <= set(refused.json()) and refused.json()["status"] == code
    other = open_session(alice_api, backend(alice_api, double, "anthropic"))
    crossed = httpx.get(f"{web[1]}/agentapi/sessions/{other['id']}/status", headers=token, timeout=10)
    assert crossed.status_code == 401  # a session's token is for its own session only
    assert httpx.get(f"{base}/status", timeout=10).status_code == 401


def test_a_failing_backend_opens_its_breaker_and_runs_are_refused_at_once(alice_api, double, worker, mcp_settings):
    session = open_session(alice_api, backend(alice_api, double))
    double.fail_with = 503
    first = finished(alice_api, session, send(alice_api, session, "Anyone?")["run"]["id"])
    assert first["status"] == "failed" and first["error"]["code"] == "agent_error", first
    assert "503" in first["error"]["message"] and KEY not in json.dumps(first)
    asked = len(double.requests)  # the SDK retried (5xx is safe to ask again); each try counted
    assert asked >= int(WORKER_ENV["AGENT_BREAKER_FAIL_MAX"])
    second = finished(alice_api, session, send(alice_api, session, "Still there?")["run"]["id"])
    assert second["status"] == "failed" and second["error"]["code"] == "agent_unavailable", second
    assert len(double.requests) == asked  # refused before reaching the backend


def test_an_agentapi_backend_runs_the_terminal_agent_behind_coder_agentapi(
    alice_api, acme, double, worker, mcp_settings
):
    created = alice_api.post("/api/v1/agents/", {"name": "terminal", "kind": "agentapi",
                                                 "base_url": f"{double.url}/agentapi", "api_key": KEY})  # fmt: skip
    assert created.status_code == 201, created.content
    session = open_session(alice_api, created.json())
    double.reply = "I have edited the files as asked."
    double.chunk_delay = 0.02
    run = finished(alice_api, session, send(alice_api, session, "Edit the files.")["run"]["id"])
    assert run["status"] == "completed", run
    messages = alice_api.get(f"{SESSIONS}{session['id']}/messages/").json()["results"]
    assert [(m["role"], m["content"]) for m in messages] == [("user", "Edit the files."),
                                                            ("assistant", double.reply)]  # fmt: skip
    assert double.transcript[-2]["content"] == "Edit the files."
    posted = [r for r in double.requests if r["path"] == "/agentapi/message"]
    assert posted[0]["body"] == {"content": "Edit the files.", "type": "user"}
    assert posted[0]["headers"]["authorization"] == f"Bearer {KEY}"
    # A cancel reaches the terminal as an Escape.
    double.delay = 3.0
    sent = send(alice_api, session, "Start something long.")
    time.sleep(1.0)
    cancelled = alice_api.post(f"{SESSIONS}{session['id']}/runs/{sent['run']['id']}/cancel/")
    assert cancelled.json()["status"] == "cancelled"
    deadline = time.monotonic() + 10
    while "\x1b" not in double.raw:
        assert time.monotonic() < deadline, double.raw
        time.sleep(0.1)


def test_a_terminal_busy_with_something_else_fails_the_run_after_its_grace(alice_api, double, worker, mcp_settings):
    created = alice_api.post("/api/v1/agents/", {"name": "busy-terminal", "kind": "agentapi",
                                                 "base_url": f"{double.url}/agentapi"})  # fmt: skip
    session = open_session(alice_api, created.json())
    deadline = time.monotonic() + 10
    while double.agent_status != "stable" or double.subscribers:  # an earlier test's reply has ended
        assert time.monotonic() < deadline
        time.sleep(0.1)
    double.agent_status = "running"  # someone else's work, never finishing
    try:
        started = time.monotonic()
        run = finished(alice_api, session, send(alice_api, session, "Me next.")["run"]["id"])
    finally:
        double.agent_status = "stable"
    assert run["status"] == "failed" and run["error"]["code"] == "agent_busy", run
    assert time.monotonic() - started >= agent_loop.BUSY_GRACE_SECONDS
    assert not [r for r in double.requests if r["path"] == "/agentapi/message"]  # nothing was typed into it


def test_the_embedded_profiles_way_serves_the_same_conversation(alice_api, bob_api, double, worker, settings):
    """Without the data plane's async database access (as on SQLite): the message sent through the
    management plane, the agentapi routes and the event stream read with the ORM on a thread."""
    settings.DATA_PLANE_ENABLED = False
    session = open_session(alice_api, backend(alice_api, double))
    sent = send(alice_api, session, "Hello from the embedded way.")
    assert finished(alice_api, session, sent["run"]["id"])["status"] == "completed"
    token = {"Authorization": f"Bearer {session['mcp_token']}"}
    base = f"/agentapi/sessions/{session['id']}"
    status = alice_api.request("get", f"{base}/status", **token)
    assert status.status_code == 200 and status.json() == {"agent_type": "custom", "status": "stable"}
    messages = alice_api.request("get", f"{base}/messages", **token).json()["messages"]
    assert [(m["role"], m["content"]) for m in messages] == [("user", "Hello from the embedded way."),
                                                            ("agent", double.reply)]  # fmt: skip
    assert bob_api.request("get", f"{base}/status").status_code == 404  # another member's session
    # The REST stream refuses the session's token (it is for the MCP and agentapi endpoints).
    assert alice_api.request("get", f"/api/v1/sessions/{session['id']}/events/", **token).status_code == 401
    # An ended session's stream replays what it holds and ends.
    assert alice_api.delete(f"{SESSIONS}{session['id']}/").status_code == 204
    replayed = alice_api.request("get", f"/api/v1/sessions/{session['id']}/events/", **{"Last-Event-ID": "0"})
    assert replayed.status_code == 200
    kinds = [line[7:] for line in replayed.content.decode().splitlines() if line.startswith("event: ")]
    assert kinds[:2] == ["message_update", "status_change"] and kinds[-1] == "status_change", kinds
