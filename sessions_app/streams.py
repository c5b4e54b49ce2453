"""A session's event stream, and the session in coder/agentapi's own contract: ASGI applications on
the data plane (settings.DATA_PLANE_APPS, every profile).

`GET /api/v1/sessions/{id}/events/` (`events`): Server-Sent Events, each with an `id:` (the
stored event's id). `Last-Event-ID` (or `?last_event_id=`, for clients that cannot set headers)
replays exactly what followed it, from the database; without one the stream starts with a
`status_change` giving the current status and goes on from there. The stream waits on its
session's wake-up (sessions_app.events: Redis pub/sub, polling without it) on the event loop: it
holds no thread while it waits, sends a heartbeat comment every SESSION_EVENTS_HEARTBEAT_SECONDS,
and ends when the session ends or the client goes.

`/agentapi/sessions/{id}/status`, `/messages`, `/message`, `/events` (`agentapi`): what a client
written for coder/agentapi (its openapi.json, version 0.11) sends and expects, unchanged:
`{agent_type, status}`, `{messages: [{id, role: user|agent, content, time}]}`, `POST /message`
`{content, type: user|raw}` answered `{ok}`, and events `message_update` `{id, message, role,
time}` and `status_change` `{agent_type, status}`, starting, as agentapi's do, with the events
that rebuild the conversation. Errors are agentapi's `application/problem+json` (`title`, `status`,
`detail`); `title` is the platform's error code. A message's `id` is its place in the conversation
(tool calls and results, which a terminal's transcript does not show, are left out).

Both authenticate as the session's MCP endpoint does (sessions_app.mcp_server): the session
user's API key or JWT, and on the agentapi routes the session's own token; another user's or
organization's session is 404.
"""

import asyncio
import functools
import json
import time
from urllib.parse import parse_qs

from django.conf import settings
from rest_framework import exceptions

from agentapi import context as request_context
from agentapi import dataplane as http
from agentapi import errors, ratelimit
from agentapi.db import aio
from agentapi.workers import in_worker
from audit.recorders import deferred_security_events_async
from sessions_app import dataplane, events, runs
from sessions_app.models import AgentEvent, AgentMessage, AgentRun, AgentSession, MessageRole, RunStatus, SessionStatus
from tenants import scoping
from tenants.authentication import principal_scope

PAGE = 200  # events read from the database at a time
AGENT_TYPE = "custom"  # agentapi's name for an agent it has no adapter for: a model behind the platform


async def _find(scope, session_id: str, *, session_tokens: bool, also=()) -> dataplane.Found:
    headers = _headers(scope)
    query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
    async with deferred_security_events_async():
        if http.enabled():
            request = http.Request(scope["method"], scope["path"], headers, query, b"")
            secrets = (dataplane.session_token(),) if session_tokens else ()
            return await dataplane.authenticate_and_find(request, session_id, secrets=secrets, also=also)
        from sessions_app.mcp_server import _find_sync

        return await in_worker(_find_sync)(
            headers.get("authorization", ""), query, session_id, "", session_tokens=session_tokens
        )


def _headers(scope) -> dict[str, str]:
    return {name.decode("latin-1").lower(): value.decode("latin-1") for name, value in scope["headers"]}


# -- reading events -------------------------------------------------------------------------------


def _events_statement() -> aio.Statement:
    table = AgentEvent._meta.db_table
    return aio.Statement(
        "agentapi_session_events",
        f'SELECT id, type, data FROM "{table}" WHERE session_id = %s AND id > %s ORDER BY id LIMIT {PAGE}',  # noqa: S608
    )


def _state_statement() -> aio.Statement:
    sessions, run_table = AgentSession._meta.db_table, AgentRun._meta.db_table
    return aio.Statement(
        "agentapi_session_state",
        f"SELECT s.status = 'active' AND s.expires_at > now() AND s.ends_at > now(), "  # noqa: S608
        f"EXISTS (SELECT 1 FROM \"{run_table}\" r WHERE r.session_id = s.id AND r.status = 'running'), "
        f'(SELECT COALESCE(MAX(e.id), 0) FROM "{AgentEvent._meta.db_table}" e WHERE e.session_id = s.id) '
        f'FROM "{sessions}" s WHERE s.id = %s',
    )


_EVENTS, _STATE = _events_statement(), _state_statement()


async def _read(found: dataplane.Found, after: int) -> tuple[list[tuple], bool, bool, int]:
    """(events after `after`, whether the session is active, whether a run is going, the last
    event id): one round trip on PostgreSQL, the ORM on a worker thread on the embedded profile."""
    session_id = str(found.session.pk)
    if http.enabled():
        rows, state = await aio.run(
            principal_scope(found.principal), [(_EVENTS, [session_id, after]), (_STATE, [session_id])]
        )
        active, running, last = state[0] if state else (False, False, 0)
        return rows, active, running, last

    def read():
        from django.db.models import Max
        from django.utils import timezone

        with scoping.organization_scope(found.principal.organization):
            rows = list(
                AgentEvent.objects.filter(session_id=session_id, id__gt=after)
                .order_by("id")
                .values_list("id", "type", "data")[:PAGE]
            )
            session = AgentSession.objects.get(pk=session_id)
            running = AgentRun.objects.filter(session_id=session_id, status=RunStatus.RUNNING).exists()
            last = AgentEvent.objects.filter(session_id=session_id).aggregate(last=Max("id"))["last"] or 0
        return rows, session.current_status(timezone.now()) == SessionStatus.ACTIVE, running, last

    return await in_worker(read)()


def _last_event_id(scope, headers: dict) -> int | None:
    query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
    value = headers.get("last-event-id") or (query.get("last_event_id") or [None])[0]
    if value is None:
        return None
    value = value.strip()
    if not value.isdigit() or len(value) > 19:
        raise errors.APIError("invalid", "Last-Event-ID is an event's id (a whole number).",
                              details={"last_event_id": ["A whole number."]})  # fmt: skip
    return int(value)


class _Stream:
    """An open SSE response: sends, and knows when the client has gone."""

    def __init__(self, receive, send):
        self.receive, self.send = receive, send
        self.gone = asyncio.Event()
        self._watch = asyncio.ensure_future(self._watch_disconnect())

    async def _watch_disconnect(self):
        while True:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                self.gone.set()
                return
            # The request's body (a GET has none); then the server's receive() waits for the
            # disconnect. A server that answered at once again must not spin this loop.
            await asyncio.sleep(0.05)

    async def start(self):
        await self.send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"text/event-stream; charset=utf-8"),
                    (b"cache-control", b"no-cache, no-store"),
                    (b"x-accel-buffering", b"no"),  # proxies pass each event on as it comes
                ],
            }
        )
        await self.write(b"retry: 2000\n\n")

    async def write(self, chunk: bytes):
        if not self.gone.is_set():
            await self.send({"type": "http.response.body", "body": chunk, "more_body": True})

    async def end(self):
        self._watch.cancel()
        if not self.gone.is_set():
            await self.send({"type": "http.response.body", "body": b"", "more_body": False})


async def _follow(found: dataplane.Found, stream: _Stream, after: int, render) -> None:
    """Send what follows `after`, then wait and send more until the session ends or the client goes.
    `render(id, type, data)` gives the bytes of one event (b"" to leave it out)."""
    session_id = str(found.session.pk)
    wakeup = events.wakeup()
    woken = wakeup.register(session_id)
    gone = asyncio.ensure_future(stream.gone.wait())
    last_write = time.monotonic()
    try:
        while not stream.gone.is_set():
            rows, active, _running, _last = await _read(found, after)
            for event_id, type_, data in rows:
                chunk = render(event_id, type_, data)
                if chunk:
                    await stream.write(chunk)
                    last_write = time.monotonic()
                after = event_id
            if len(rows) == PAGE:
                continue
            if not active:
                return
            waiting = asyncio.ensure_future(events.wait(woken, wakeup.interval()))
            await asyncio.wait([waiting, gone], return_when=asyncio.FIRST_COMPLETED)
            if not waiting.done():
                waiting.cancel()
            elif time.monotonic() - last_write >= settings.SESSION_EVENTS_HEARTBEAT_SECONDS:
                await stream.write(events.HEARTBEAT)  # quiet for a heartbeat's time (polling reads more often)
                last_write = time.monotonic()
    finally:
        gone.cancel()
        wakeup.unregister(session_id, woken)


def _render(event_id: int, type_: str, data) -> bytes:
    return events.sse(event_id, type_, data if isinstance(data, dict) else json.loads(data))


async def events_app(scope, receive, send, session_id: str) -> None:
    """GET /api/v1/sessions/{id}/events/ (agentapi.dataplane.serve_app calls it)."""
    if scope["method"] != "GET":
        raise exceptions.MethodNotAllowed(scope["method"])
    headers = _headers(scope)
    after = _last_event_id(scope, headers)
    found = await _find(scope, session_id, session_tokens=False)
    request_context.annotate(user=str(found.principal.membership.user_id), session=str(found.session.pk))
    stream = _Stream(receive, send)
    await stream.start()
    try:
        if after is None:
            _rows, active, running, last = await _read(found, 2**62)
            status = {"status": "running" if running else "stable", "active": active}
            await stream.write(events.sse(last, "status_change", status))
            after = last
        await _follow(found, stream, after, _render)
    finally:
        await stream.end()


# -- coder/agentapi's contract ----------------------------------------------------------------------


def _agentapi_message(message: dict) -> dict:
    return {
        "id": message["seq"],
        "role": "user" if message["role"] == MessageRole.USER else "agent",
        "content": message["content"],
        "time": message["created_at"].isoformat().replace("+00:00", "Z"),
    }


def _transcript(found: dataplane.Found) -> tuple[list[dict], bool]:
    """(the conversation as agentapi's messages, whether a run is going): the ORM, on a worker."""
    with scoping.organization_scope(found.principal.organization):
        messages = [
            _agentapi_message(message)
            for message in AgentMessage.objects.filter(session_id=found.session.pk)
            .exclude(role=MessageRole.TOOL)
            .exclude(content="")
            .order_by("seq")
            .values("seq", "role", "content", "created_at")
        ]
        running = AgentRun.objects.filter(session_id=found.session.pk, status=RunStatus.RUNNING).exists()
    return messages, running


@functools.cache
def _transcript_statements() -> tuple[aio.Statement, aio.Statement]:
    """_transcript on the data plane: the conversation as agentapi shows it, and whether a run is
    going, read in the session's find (dataplane.authenticate_and_find's `also`): no thread."""
    messages, run_table = AgentMessage._meta.db_table, AgentRun._meta.db_table
    in_scope = "organization_id = NULLIF(current_setting('app.organization_ids', true), '')::bigint"
    return (
        aio.Statement(
            "agentapi_transcript",
            f'SELECT seq, role, content, created_at FROM "{messages}" '  # noqa: S608
            f"WHERE session_id = %s AND role <> %s AND content <> '' AND {in_scope} ORDER BY seq",
        ),
        aio.Statement(
            "agentapi_running",
            f'SELECT EXISTS (SELECT 1 FROM "{run_table}" WHERE session_id = %s AND status = %s AND {in_scope})',  # noqa: S608
        ),
    )


def _from_also(found: dataplane.Found, with_messages: bool) -> tuple[list[dict], bool]:
    *transcript, (running,) = found.also
    rows = transcript[0] if with_messages else []
    messages = [
        _agentapi_message({"seq": seq, "role": role, "content": content, "created_at": created_at})
        for seq, role, content, created_at in rows
    ]
    return messages, bool(running[0])


def _status(running: bool) -> dict:
    return {"agent_type": AGENT_TYPE, "status": "running" if running else "stable"}


def _agentapi_render(event_id: int, type_: str, data) -> bytes:
    """A stored event as agentapi sends it: message updates of the transcript's messages, and
    status changes; nothing else (agentapi has no tool events)."""
    if type_ == "message_update" and data.get("content"):
        message = {
            "id": data["message"],
            "message": data["content"],
            "role": "user" if data["role"] == MessageRole.USER else "agent",
            "time": data["time"].replace("+00:00", "Z"),
        }
        return events.sse(event_id, "message_update", message)
    if type_ == "status_change" and "run" in data:
        return events.sse(event_id, "status_change", _status(data["status"] == "running"))
    return b""


def _send_message(found: dataplane.Found, body) -> dict:
    if not isinstance(body, dict):
        raise errors.APIError("invalid", "The body is a JSON object: content and type.")
    unknown = sorted(set(body) - {"content", "type", "$schema"})
    if unknown:
        raise errors.APIError("invalid", f"Unexpected properties: {', '.join(unknown)}.",
                              details={name: ["Unexpected property."] for name in unknown})  # fmt: skip
    if body.get("type") not in ("user", "raw"):
        raise errors.APIError("invalid", "`type` is `user` or `raw`.", details={"type": ["user or raw"]})
    if body["type"] == "raw":
        raise errors.APIError(
            "unsupported",
            "`raw` messages are keystrokes for a terminal; this session's agent is not one.",
            status=400,
        )
    principal = found.principal
    with scoping.organization_scope(principal.organization, actor=principal.actor):
        session = AgentSession.objects.get(pk=found.session.pk)
        runs.message_send(principal=principal, session=session, content=body.get("content"))
    return {"ok": True}


async def _json_answer(send, status: int, body: dict, content_type: bytes = b"application/json", extra=()):
    data = json.dumps(body, separators=(",", ":")).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", content_type), (b"content-length", str(len(data)).encode()), *extra],
        }
    )
    await send({"type": "http.response.body", "body": data})


async def _agentapi(scope, receive, send, session_id: str, endpoint: str) -> None:
    method = {"status": "GET", "messages": "GET", "events": "GET", "message": "POST"}[endpoint]
    if scope["method"] != method:
        raise exceptions.MethodNotAllowed(scope["method"])
    headers = _headers(scope)
    body = None
    if method == "POST":
        raw = await http.read_body(receive, headers)
        if raw is None:
            raise errors.request_too_large()
        if headers.get("content-type", "").split(";")[0].strip().lower() != "application/json":
            raise exceptions.UnsupportedMediaType(headers.get("content-type", "none") or "none")
        from agentapi import parsers

        body = parsers.loads(raw)
    after = _last_event_id(scope, headers) if endpoint == "events" else None
    also = []
    if endpoint in ("status", "messages") and http.enabled():
        transcript, running = _transcript_statements()
        also = [(transcript, [MessageRole.TOOL])] if endpoint == "messages" else []
        also.append((running, [RunStatus.RUNNING]))
    found = await _find(scope, session_id, session_tokens=True, also=also)
    request_context.annotate(user=str(found.principal.membership.user_id), session=str(found.session.pk))
    if endpoint in ("status", "messages"):
        if also:
            messages, running = _from_also(found, with_messages=endpoint == "messages")
        else:
            messages, running = await in_worker(_transcript)(found)
        return await _json_answer(send, 200, _status(running) if endpoint == "status" else {"messages": messages})
    if endpoint == "message":
        return await _json_answer(send, 200, await in_worker(_send_message)(found, body))
    stream = _Stream(receive, send)
    await stream.start()
    try:
        if after is None:
            # As agentapi does: first the events that rebuild the conversation and its status.
            _rows, _active, _running, last = await _read(found, 2**62)
            messages, running = await in_worker(_transcript)(found)
            for message in messages:
                update = {"id": message["id"], "message": message["content"], "role": message["role"],
                          "time": message["time"]}  # fmt: skip
                await stream.write(events.sse(last, "message_update", update))
            await stream.write(events.sse(last, "status_change", _status(running)))
            after = last
        await _follow(found, stream, after, _agentapi_render)
    finally:
        await stream.end()


async def agentapi(scope, receive, send, session_id: str, endpoint: str) -> None:
    """/agentapi/sessions/{id}/<endpoint> (agentapi.dataplane.serve_app calls it). Errors before
    the answer starts are agentapi's problem+json."""
    started = {"value": False}

    async def sending(message):
        if message["type"] == "http.response.start":
            started["value"] = True
        await send(message)

    try:
        await _agentapi(scope, receive, sending, session_id, endpoint)
    except exceptions.APIException as exc:
        if started["value"]:
            raise
        status, body, more = errors.api_error_parts(await ratelimit.after_failure_async(exc), challenge=http.CHALLENGE)
        problem = {"title": body["error"]["code"], "status": status, "detail": body["error"]["message"]}
        details = body["error"].get("details") or {}
        if details:
            problem["errors"] = [
                {
                    "location": f"body.{name}",
                    "message": "; ".join(map(str, value if isinstance(value, list) else [value])),
                }
                for name, value in details.items()
            ]
        extra = [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in more.items()]
        await _json_answer(sending, status, problem, b"application/problem+json", extra)
