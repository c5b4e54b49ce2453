"""Conversations and runs: a user's message starts a run of the session's agent on a Celery worker.

Sending (`message_send`, the management API): under the session's row lock, the user's message,
a run (`running`) and their events are stored and the task is queued once that commits. While a
run is going, another message is `409 session_busy` (the lock decides; a partial unique index on
running runs holds it in the database too).

Running (`execute`, the `agent_run` task: acks late). A run is claimed once (`claimed_at`); a
delivery that finds its run already claimed is a redelivery after its worker died mid-run, and
fails the run (`interrupted`) instead of replaying it: its tools may already have acted, so a
replay could do twice what the user asked once. The loop (sessions_app.agent_loop) streams the
model; what it reports is stored here, each write under the session's lock and only while the run
is still `running`, so a cancelled or failed run gains nothing afterwards. Tool calls go through
the session's own tools (sessions_app.tools: the user's credentials, the breaker, limits, audit).
The worker writes a heartbeat every AGENT_RUN_HEARTBEAT_SECONDS and reads the run's status with
it: a cancel stops the loop within that time. A run whose heartbeat stops (SIGKILL, a lost host)
is failed by the reaper (`reap`, scheduled), so none stays `running`.
"""

import asyncio
import functools
import logging
import socket
import time
from datetime import timedelta

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import IntegrityError, models, transaction
from django.utils import timezone
from prometheus_client import Counter, Histogram

from agentapi.db import aio
from agentapi.db.scope import DatabaseScope
from agentapi.errors import APIError
from audit.services import audit_record
from sessions_app import agent_loop, events, tools
from sessions_app.models import (
    AgentEvent,
    AgentKind,
    AgentMessage,
    AgentRun,
    AgentSession,
    EventType,
    MessageRole,
    RunStatus,
)
from tenants import scoping

log = logging.getLogger(__name__)

runs_total = Counter("agentapi_agent_runs_total", "Agent runs finished, by outcome.", ["status", "kind"])
steps_total = Counter("agentapi_agent_steps_total", "Model requests made by agent runs.", ["kind"])
tokens_total = Counter("agentapi_agent_tokens_total", "Tokens used by agent runs.", ["direction", "kind"])
first_event_seconds = Histogram(
    "agentapi_agent_first_event_seconds",
    "From a user's message to its run's first output.",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)

MAX_MESSAGE_CHARS = 100_000


def message_data(message: AgentMessage) -> dict:
    """A `message_update` event's data."""
    return {
        "message": message.seq,
        "role": message.role,
        "content": message.content,
        "run": str(message.run_id) if message.run_id else None,
        "time": message.created_at.isoformat(),
    }


def _append_message(session: AgentSession, **fields) -> AgentMessage:
    """A message at the end of the conversation (the caller holds the session's lock)."""
    last = AgentMessage.objects.filter(session=session).aggregate(last=models.Max("seq"))["last"]
    return AgentMessage.objects.create(
        organization_id=session.organization_id, session=session, seq=0 if last is None else last + 1, **fields
    )


def message_send(*, principal, session: AgentSession, content) -> tuple[AgentMessage, AgentRun]:
    """Store the user's message and start a run (queued once committed)."""
    if not isinstance(content, str) or not content.strip():
        raise APIError("invalid", "`content` is the message's text.", details={"content": ["Required, not blank."]})
    if len(content) > MAX_MESSAGE_CHARS:
        raise APIError("invalid", f"A message is at most {MAX_MESSAGE_CHARS} characters.",
                       details={"content": [f"At most {MAX_MESSAGE_CHARS} characters."]})  # fmt: skip
    try:
        return _message_send(session, content)
    except IntegrityError:
        # A run is going: the partial unique index on running runs refused this one (the session's
        # lock made this request wait for the other to commit first). Nothing was stored.
        raise APIError(
            "session_busy", "The agent is still answering: wait for it, or cancel its run.", status=409
        ) from None


@transaction.atomic
def _message_send(session: AgentSession, content: str) -> tuple[AgentMessage, AgentRun]:
    # The session's row, locked, read with its backend: one statement.
    current = (
        AgentSession.objects.select_for_update(no_key=True, of=("self",))
        .select_related("agent")
        .filter(pk=session.pk)
        .first()
    )
    if current is None:
        raise APIError("not_found", "Not found.", status=404)
    tools.require_active(current)
    backend = current.agent
    if backend is None:
        raise APIError("no_agent", "This session has no agent backend: choose one when opening a session.", status=409)
    if not backend.enabled:
        raise APIError("agent_disabled", "This session's agent backend is disabled.", status=409)
    run = AgentRun.objects.create(organization_id=current.organization_id, session=current, backend=backend)
    message = _append_message(current, run=run, role=MessageRole.USER, content=content)
    status = {"status": "running", "run": str(run.pk)}
    events.append_many(current, [(EventType.MESSAGE_UPDATE, message_data(message)), (EventType.STATUS_CHANGE, status)],
                       run_id=run.pk, locked=True)  # fmt: skip
    audit_record(
        "agent.message",
        target=run,
        organization_id=current.organization_id,
        details={"session": str(current.pk), "run": str(run.pk), "backend": backend.pk, "characters": len(content)},
    )
    from sessions_app.tasks import agent_run

    organization_id, run_id = current.organization_id, str(run.pk)
    transaction.on_commit(lambda: _queue(agent_run, organization_id, run_id))
    return message, run


def _queue(task, organization_id: int, run_id: str) -> None:
    """Send the committed run's task. The run's row is the durable record (an outbox): when the
    broker cannot take the task now, the reaper queues it again once the broker is back (reap), so
    the message is accepted either way and a client's retry never sends it twice."""
    try:
        task.delay(organization_id, run_id)
    except Exception as exc:
        log.warning(
            "agent run not queued; the reaper queues it again", extra={"run": run_id, "error": type(exc).__name__}
        )


def fail_unqueued(run_id) -> None:
    """A run whose task could not be queued (the broker is down) ends at once, failed."""
    run = AgentRun.objects.filter(pk=run_id).select_related("backend").first()
    if run is not None:
        _finish(run, RunStatus.FAILED, {"code": "queue_unavailable", "message": "The run could not be queued."})


def _finish(run: AgentRun, status: str, error: dict | None = None) -> bool:
    """End a running run (under the session's lock): its status, the events, the audit record.
    False when it had already ended."""
    with transaction.atomic():
        events.lock(run.session_id)
        now = timezone.now()
        ended = AgentRun.objects.filter(pk=run.pk, status=RunStatus.RUNNING).update(
            status=status, error=error, finished_at=now
        )
        if not ended:
            return False
        run.refresh_from_db()
        session = AgentSession(pk=run.session_id, organization_id=run.organization_id)
        items = [(EventType.AGENT_ERROR, {**error, "run": str(run.pk)})] if error is not None else []
        items.append((EventType.STATUS_CHANGE, {"status": "stable", "run": str(run.pk), "outcome": status}))
        events.append_many(session, items, run_id=run.pk, locked=True)
        audit_record(
            f"agent.run.{status}",
            target=run,
            organization_id=run.organization_id,
            outcome="success" if status == RunStatus.COMPLETED else "failure",
            details={
                "session": str(run.session_id),
                "steps": run.steps,
                "tool_calls": run.tool_calls,
                "input_tokens": run.input_tokens,
                "output_tokens": run.output_tokens,
                **({"error": error["code"]} if error else {}),
            },
        )
    kind = run.backend.kind if run.backend_id and run.backend else "unknown"
    runs_total.labels(status, kind).inc()
    return True


def run_cancel(*, session: AgentSession, run: AgentRun) -> AgentRun:
    """Stop a run: it is `cancelled` at once; its worker sees it within a heartbeat and stops.
    Cancelling an ended run changes nothing."""
    _finish(run, RunStatus.CANCELLED)
    run.refresh_from_db()
    return run


def usage(runs) -> dict:
    totals = runs.aggregate(
        runs=models.Count("id"),
        input_tokens=models.Sum("input_tokens"),
        output_tokens=models.Sum("output_tokens"),
        steps=models.Sum("steps"),
        tool_calls=models.Sum("tool_calls"),
    )
    return {name: value or 0 for name, value in totals.items()}


# -- the worker's side --------------------------------------------------------------------------


class Stopped(agent_loop.RunStopped):
    """The run is no longer `running` (cancelled, or failed by the reaper): write nothing more."""

    def __init__(self):
        super().__init__("stopped", "The run has ended.")


def _lock_while_running(session_id, run_id) -> None:
    """Lock the run's row if it is still running (else Stopped): a run's writers (its worker,
    and `_finish`, whose update takes the same row) take turns on it, so its events' ids commit
    in order."""
    locked = AgentRun.objects.select_for_update(no_key=True).filter(pk=run_id, status=RunStatus.RUNNING)
    if not list(locked.values_list("pk")):
        raise Stopped()


class RunSink:
    """What the loop reports, stored: messages and events, text coalesced (one `message_update`
    per AGENT_TEXT_COALESCE_SECONDS per message, and the whole text when the response ends)."""

    def __init__(self, run: AgentRun, session: AgentSession, db):
        self.run, self.session, self.db = run, session, db
        self.kind = run.backend.kind
        self.message: AgentMessage | None = None  # the assistant message being streamed
        self.text_so_far = ""
        self.sent = ""
        self.last_flush = 0.0
        self.timer: asyncio.TimerHandle | None = None
        self.flushing: asyncio.Task | None = None
        self.first = True

    # Each write: under the session's lock, only while the run is running.
    def _write(self, func):
        def guarded():
            with transaction.atomic():
                _lock_while_running(self.session.pk, self.run.pk)
                return func()

        return self.db(guarded)()

    def _first_output(self) -> None:
        if self.first:
            self.first = False
            elapsed = (timezone.now() - self.run.created_at).total_seconds()
            AgentRun.objects.filter(pk=self.run.pk).update(first_event_ms=round(elapsed * 1000, 2))
            first_event_seconds.observe(elapsed)

    async def text(self, delta: str) -> None:
        await self.set_text(self.text_so_far + delta)

    async def set_text(self, text: str) -> None:
        """The streamed reply so far, whole (an agentapi server sends it so)."""
        self.text_so_far = text
        if self.message is None:  # the reply's message and its first update: one write
            await self._flush()
            return
        wait = self.last_flush + settings.AGENT_TEXT_COALESCE_SECONDS - time.monotonic()
        if wait <= 0:
            await self._flush()
        elif self.timer is None:
            self.timer = asyncio.get_running_loop().call_later(wait, self._flush_later)

    def _flush_later(self) -> None:
        self.timer = None
        self.flushing = asyncio.ensure_future(self._flush())

    async def _flush(self) -> None:
        if self.text_so_far == self.sent:
            return
        self.last_flush = time.monotonic()
        text = self.text_so_far
        if self.message is None and aio.available():
            self.sent = text
            await self._start_reply(text)
            return

        def write():
            if self.message is None:
                self.message = _append_message(self.session, run=self.run, role=MessageRole.ASSISTANT, content="")
            data = {**message_data(self.message), "content": text}
            events.append(self.session, EventType.MESSAGE_UPDATE, data, run_id=self.run.pk, locked=True)
            self._first_output()

        self.sent = text
        await self._write(write)

    async def _start_reply(self, text: str) -> None:
        """The reply's message and its first update, and the run's first output time: one statement,
        one round trip (agentapi.db.aio), on this loop: the first event is what a user waits for."""
        now = timezone.now()
        data = {"message": 0, "role": MessageRole.ASSISTANT, "content": text, "run": str(self.run.pk),
                "time": now.isoformat()}  # fmt: skip
        elapsed = (now - self.run.created_at).total_seconds()
        scope = DatabaseScope(organization_ids=(self.session.organization_id,))
        session_id, run_id = str(self.session.pk), str(self.run.pk)
        params = [
            run_id,
            self.session.organization_id,
            session_id,
            session_id,
            now,
            data,
            now,
            round(elapsed * 1000, 2),
        ]
        (rows,) = await aio.run(scope, [(_start_reply_statement(), params)])
        if not rows:
            raise Stopped()
        message_id, seq, event_id = rows[0]
        self.message = AgentMessage(pk=message_id, organization_id=self.session.organization_id, session=self.session,
                                    run=self.run, seq=seq, role=MessageRole.ASSISTANT, content="", created_at=now)  # fmt: skip
        self.first = False
        first_event_seconds.observe(elapsed)
        redis = _loop_redis()
        if redis is None or await redis.run(lambda r: r.publish(events.channel(session_id), str(event_id))) is None:
            await asyncio.get_running_loop().run_in_executor(None, events.publish, session_id, event_id)

    async def response(self, text: str, tool_calls: list[dict], input_tokens: int, output_tokens: int) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.flushing is not None:
            await self.flushing
            self.flushing = None
        message, self.message, self.text_so_far, self.sent = self.message, None, "", ""

        def write():
            nonlocal message
            if message is None and (text or tool_calls):
                message = _append_message(self.session, run=self.run, role=MessageRole.ASSISTANT, content=text,
                                          tool_calls=tool_calls)  # fmt: skip
            elif message is not None:
                message.content, message.tool_calls = text, tool_calls
                message.save(update_fields=["content", "tool_calls"])
            if message is not None and text:
                events.append(
                    self.session, EventType.MESSAGE_UPDATE, message_data(message), run_id=self.run.pk, locked=True
                )
                self._first_output()
            AgentRun.objects.filter(pk=self.run.pk).update(
                steps=models.F("steps") + 1,
                input_tokens=models.F("input_tokens") + input_tokens,
                output_tokens=models.F("output_tokens") + output_tokens,
            )

        await self._write(write)
        steps_total.labels(self.kind).inc()
        tokens_total.labels("input", self.kind).inc(input_tokens)
        tokens_total.labels("output", self.kind).inc(output_tokens)

    async def tool_call(self, call_id: str, name: str, arguments: dict) -> None:
        def write():
            data = {"id": call_id, "name": name, "arguments": arguments, "run": str(self.run.pk)}
            events.append(self.session, EventType.TOOL_CALL, data, run_id=self.run.pk, locked=True)
            self._first_output()
            AgentRun.objects.filter(pk=self.run.pk).update(tool_calls=models.F("tool_calls") + 1)

        await self._write(write)

    async def tool_result(self, call_id: str, name: str, content: str, is_error: bool) -> None:
        def write():
            _append_message(self.session, run=self.run, role=MessageRole.TOOL, content=content,
                            tool_call_id=call_id, tool_name=name, is_error=is_error)  # fmt: skip
            data = {"id": call_id, "name": name, "content": content, "is_error": is_error, "run": str(self.run.pk)}
            events.append(self.session, EventType.TOOL_RESULT, data, run_id=self.run.pk, locked=True)

        await self._write(write)


# The fields the data plane's inserts of messages and events name (sessions_app.dataplane too).
MESSAGE_INSERT_FIELDS = ["organization", "session", "run", "seq", "role", "content", "tool_calls", "tool_call_id",
                         "tool_name", "is_error", "created_at"]  # fmt: skip
EVENT_INSERT_FIELDS = ["organization", "session", "run", "type", "data", "created_at"]


@functools.cache
def _start_reply_statement() -> aio.Statement:
    """An assistant message at the end of the conversation, its first `message_update` event (its
    place filled in) and the run's first output time: only while the run is running, under its
    row's lock."""
    messages, events_table, runs_table = (AgentMessage._meta.db_table, AgentEvent._meta.db_table,
                                          AgentRun._meta.db_table)  # fmt: skip
    message_columns = aio.columns(AgentMessage, MESSAGE_INSERT_FIELDS)
    event_columns = aio.columns(AgentEvent, EVENT_INSERT_FIELDS)
    sql = (
        f"WITH ok AS (SELECT id FROM \"{runs_table}\" WHERE id = %s AND status = 'running' FOR NO KEY UPDATE), "  # noqa: S608
        f'm AS (INSERT INTO "{messages}" ({message_columns}) SELECT %s, %s, ok.id, '
        f'COALESCE((SELECT MAX(x.seq) + 1 FROM "{messages}" x WHERE x.session_id = %s), 0), '
        "'assistant', '', '[]'::jsonb, '', '', false, %s FROM ok RETURNING id, seq, organization_id, session_id, "
        "run_id), "
        f'e AS (INSERT INTO "{events_table}" ({event_columns}) SELECT m.organization_id, m.session_id, m.run_id, '
        "'message_update', jsonb_set(%s::jsonb, '{message}', to_jsonb(m.seq)), %s FROM m RETURNING id), "
        f'f AS (UPDATE "{runs_table}" SET first_event_ms = %s WHERE id = (SELECT id FROM ok) '
        "AND first_event_ms IS NULL) "
        "SELECT m.id, m.seq, e.id FROM m, e"
    )
    return aio.Statement("agentapi_run_start_reply", sql)


def _loop_redis():
    """The running loop's shared Redis client (the MCP pool's, on its loop), or None."""
    from mcp.pool import shared_redis

    return shared_redis()


@functools.cache
def _load_statements() -> tuple[aio.Statement, aio.Statement, aio.Statement]:
    from sessions_app.models import AgentBackend, SessionServer
    from tenants.models import Organization

    runs_table, sessions, backends = AgentRun._meta.db_table, AgentSession._meta.db_table, AgentBackend._meta.db_table
    claim = aio.Statement(
        "agentapi_run_claim",
        f'UPDATE "{runs_table}" SET claimed_at = now(), heartbeat_at = now() '  # noqa: S608
        "WHERE id = %s AND status = 'running' AND claimed_at IS NULL RETURNING id",
    )
    columns = [aio.columns(model, alias=alias) for model, alias in ((AgentRun, "r"), (AgentSession, "s"),
                                                                    (AgentBackend, "b"), (Organization, "o"))]  # fmt: skip
    load = aio.Statement(
        "agentapi_run_load",
        f'SELECT {", ".join(columns)}, (SELECT count(*) FROM "{SessionServer._meta.db_table}" ss '  # noqa: S608
        f'WHERE ss.session_id = s.id) FROM "{runs_table}" r JOIN "{sessions}" s ON s.id = r.session_id '
        f'JOIN "{Organization._meta.db_table}" o ON o.id = r.organization_id '
        f'LEFT JOIN "{backends}" b ON b.id = r.backend_id WHERE r.id = %s',
    )
    conversation = aio.Statement(
        "agentapi_run_conversation",
        f'SELECT {", ".join(_MESSAGE_FIELDS)} FROM "{AgentMessage._meta.db_table}" '  # noqa: S608
        f'WHERE session_id = (SELECT session_id FROM "{runs_table}" WHERE id = %s) ORDER BY seq',
    )
    return claim, load, conversation


async def _claim_and_load(run_id: str, organization_id: int):
    """_claim and the conversation in one round trip (agentapi.db.aio): (run, conversation, number
    of servers attached, organization), or None when there is nothing to do."""
    from sessions_app.models import AgentBackend
    from tenants.models import Organization

    claim, load, conversation = _load_statements()
    scope = DatabaseScope(organization_ids=(organization_id,))
    claimed, rows, messages = await aio.run(scope, [(claim, [run_id]), (load, [run_id]), (conversation, [run_id])])
    if not rows:
        return None
    values = list(rows[0])
    loaded = []
    for model in (AgentRun, AgentSession, AgentBackend, Organization):
        names = aio.attnames(model)
        row = values[: len(names)]  # the backend's are NULLs when the run has none
        loaded.append(aio.instance(model, names, row) if row[names.index(model._meta.pk.attname)] is not None else None)
        values = values[len(names) :]
    run, run.session, run.backend, organization = loaded
    run.organization = run.session.organization = organization
    if not claimed:
        if run.status == RunStatus.RUNNING:

            def interrupted():
                with scoping.organization_scope(organization):
                    _finish(run, RunStatus.FAILED, _INTERRUPTED)

            await sync_to_async(interrupted, thread_sensitive=False)()
        return None
    return run, [dict(zip(_MESSAGE_FIELDS, row, strict=True)) for row in messages], values[0], organization


_INTERRUPTED = {
    "code": "interrupted",
    "message": "Its worker stopped mid-run; a run is not replayed, since its tools may already have acted.",
}


def _claim(run_id) -> AgentRun | None:
    """The run, claimed by this delivery; None when there is nothing to do (and a redelivered run
    that was already claimed is failed: never replayed)."""
    now = timezone.now()
    claimed = AgentRun.objects.filter(pk=run_id, status=RunStatus.RUNNING, claimed_at__isnull=True).update(
        claimed_at=now, heartbeat_at=now
    )
    run = AgentRun.objects.select_related("backend", "session").filter(pk=run_id).first()
    if run is None:
        return None
    if not claimed:
        if run.status == RunStatus.RUNNING:
            _finish(run, RunStatus.FAILED, _INTERRUPTED)
        return None
    return run


def execute_task(organization_id: int, run_id, *, node: str | None = None, forwarded: bool = False) -> str:
    """The `agent_run` task: the run in its organization's scope. On PostgreSQL the organization
    comes with the claim, in its one round trip. `node`: the Celery node running it; `forwarded`:
    it was handed here by another node (sessions_app.terminals)."""
    from tenants.models import Organization

    if not aio.available():
        with scoping.organization_scope(Organization.objects.get(pk=organization_id)):
            return execute(run_id, node=node, forwarded=forwarded)
    from mcp import pool

    loaded = pool.run_on_pool_loop(_claim_and_load, str(run_id), organization_id)
    if loaded is None:
        return "skipped"
    with scoping.organization_scope(loaded[3]):
        return execute(run_id, loaded[:3], node=node, forwarded=forwarded)


def execute(run_id, loaded=None, *, node: str | None = None, forwarded: bool = False) -> str:
    """A run (in its organization's scope), claimed by this call unless `loaded` (_claim_and_load)
    says it was. Returns the run's status ("forwarded": handed to the node that owns the
    session's terminal agent)."""
    from mcp import pool

    if loaded is not None:
        run, conversation, attached = loaded
    elif aio.available():
        loaded = pool.run_on_pool_loop(_claim_and_load, str(run_id), scoping.current_organization().pk)
        run, conversation, attached = loaded[:3] if loaded is not None else (None, None, 0)
    else:
        run = _claim(run_id)
        conversation, attached = None, None
    if run is None:
        return "skipped"
    backend = run.backend
    if backend is None or not backend.enabled:
        _finish(
            run, RunStatus.FAILED, {"code": "agent_unavailable", "message": "The agent backend is gone or disabled."}
        )
        return RunStatus.FAILED
    try:
        key = agent_loop.api_key(backend)
    except APIError as exc:
        _finish(run, RunStatus.FAILED, {"code": exc.error_code, "message": str(exc.detail)})
        return RunStatus.FAILED
    try:
        # On the worker's one long-lived loop (the MCP pool's), where each backend's client and its
        # open connections are kept between runs (sessions_app.agent_loop).
        prepared = _prepare(run, conversation, attached)
        if backend.template_id is not None:
            backend.template  # noqa: B018 (loaded here, where the ORM may be used; the terminal starts from it)
        node = node or socket.gethostname()
        timeout = backend.setting("run_timeout_seconds") + settings.AGENT_TERMINAL_START_SECONDS + 60
        elsewhere = pool.run_on_pool_loop(_drive, run, key, prepared, node, forwarded, timeout=timeout)
        if elsewhere is not None:
            return _hand_on(run, elsewhere.node)
    except Exception:
        log.exception("agent run failed", extra={"run": str(run.pk)})
        _finish(
            run, RunStatus.FAILED, {"code": "internal_error", "message": "The run failed on our side; it is logged."}
        )
    run.refresh_from_db(fields=["status"])
    return run.status


_MESSAGE_FIELDS = ["seq", "role", "content", "tool_calls", "tool_call_id", "tool_name", "run_id"]


def _prepare(run: AgentRun, conversation=None, attached=None) -> tuple[list[dict], str, list[dict]]:
    """(the conversation before the run's message, that message, the session's tools)."""
    session, backend = run.session, run.backend
    if conversation is None:
        conversation = list(AgentMessage.objects.filter(session=session).order_by("seq").values(*_MESSAGE_FIELDS))
    prompt_at = max(i for i, m in enumerate(conversation) if str(m["run_id"]) == str(run.pk) and m["role"] == "user")
    # A terminal agent finds the session's tools itself, at its MCP endpoint.
    listed = tools.list_tools(session)[0] if backend.kind != AgentKind.AGENTAPI and attached != 0 else []
    return conversation[:prompt_at], conversation[prompt_at]["content"], listed


def _hand_on(run: AgentRun, node: str) -> str:
    """Give a claimed run back and send it to `node`, which owns its session's terminal agent."""
    from celery.utils import worker_direct

    from sessions_app.tasks import agent_run

    if not AgentRun.objects.filter(pk=run.pk, status=RunStatus.RUNNING).update(claimed_at=None):
        return "skipped"  # cancelled meanwhile
    try:
        agent_run.apply_async((run.organization_id, str(run.pk)), {"forwarded": True}, queue=worker_direct(node))
    except Exception:
        log.exception("agent run not handed on", extra={"run": str(run.pk)})
        fail_unqueued(run.pk)
        return RunStatus.FAILED
    log.info("agent run handed to the node of its terminal agent", extra={"run": str(run.pk), "node": node})
    return "forwarded"


async def _terminal_url(run: AgentRun, key: str, node: str, forwarded: bool):
    """The session's own terminal agent (sessions_app.terminals): its URL, or Elsewhere."""
    from sessions_app import terminals

    try:
        found = await terminals.acquire(run.session, run.backend, key, node=node)
    except terminals.StartFailed as exc:
        raise agent_loop.RunStopped("agent_unavailable", str(exc)) from None
    if isinstance(found, terminals.Elsewhere) and forwarded:
        raise agent_loop.RunStopped(
            "agent_unavailable", "The session's terminal agent is on a worker that did not take the run; try again."
        )
    return found


async def _drive(run: AgentRun, key: str, prepared, node: str = "", forwarded: bool = False):
    # Database writes go to one thread, in order; tool calls each to a thread of their own, so a
    # slow tool holds up neither the heartbeat nor the others.
    def db(func):
        return sync_to_async(func, thread_sensitive=True)

    session = run.session
    backend = run.backend
    history, prompt, listed = prepared

    def call(name: str, arguments: dict) -> tuple[str, bool]:
        try:
            result = tools.call_tool(session, name, arguments)
        except APIError as exc:
            return f"{exc.error_code}: {exc.detail}", True
        return agent_loop.tool_text(result), bool(result.get("is_error"))

    async def call_tool(name, arguments):
        return await sync_to_async(call, thread_sensitive=False)(name, arguments)

    cancel = agent_loop.cancellation_token()
    sink = RunSink(run, session, db)

    def beat() -> bool:
        AgentRun.objects.filter(pk=run.pk, status=RunStatus.RUNNING).update(heartbeat_at=timezone.now())
        return AgentRun.objects.filter(pk=run.pk, status=RunStatus.RUNNING).exists()

    async def heartbeat():
        while True:
            await asyncio.sleep(settings.AGENT_RUN_HEARTBEAT_SECONDS)
            if not await db(beat)():
                cancel.cancel()
                return

    beating = asyncio.ensure_future(heartbeat())
    try:
        if backend.template_id is not None:
            local_url = await _terminal_url(run, key, node, forwarded)
            if not isinstance(local_url, str):
                return local_url  # another node's: execute() hands the run on
            outcome = await agent_loop.run_agentapi(
                backend, key=key, prompt=prompt, sink=sink, cancel=cancel, local_url=local_url
            )
        elif backend.kind == AgentKind.AGENTAPI:
            outcome = await agent_loop.run_agentapi(backend, key=key, prompt=prompt, sink=sink, cancel=cancel)
        else:
            outcome = await agent_loop.run_model(
                backend, key=key, instructions=session.system_prompt, history=history, prompt=prompt, tools=listed,
                call_tool=call_tool, sink=sink, cancel=cancel,
            )  # fmt: skip
    except Stopped:
        return  # cancelled (or failed by the reaper) while it wrote: it has ended already
    except agent_loop.RunStopped as stopped:
        status = RunStatus.CANCELLED if stopped.code == "cancelled" else RunStatus.FAILED
        error = None if status == RunStatus.CANCELLED else {"code": stopped.code, "message": stopped.message}
        await db(_finish)(run, status, error)
        return
    finally:
        beating.cancel()
    log.info("agent run completed", extra={"run": str(run.pk), "steps": outcome.steps})
    await db(_finish)(run, RunStatus.COMPLETED)


def reap() -> dict:
    """The scheduled job (every organization): queue again each run no worker has taken after
    AGENT_RUN_REQUEUE_SECONDS (its task was lost: the broker was down when it was sent, or Redis
    restarted without its queue); fail each run that lost its worker (no heartbeat for
    AGENT_RUN_LOST_SECONDS) or that no worker took within AGENT_RUN_QUEUE_SECONDS. A run is claimed
    once (_claim), so a task delivered twice runs it once."""
    from sessions_app.tasks import agent_run
    from tenants import scoping
    from tenants.models import Organization

    now = timezone.now()
    lost_before = now - timedelta(seconds=settings.AGENT_RUN_LOST_SECONDS)
    queued_before = now - timedelta(seconds=settings.AGENT_RUN_QUEUE_SECONDS)
    requeue_before = now - timedelta(seconds=settings.AGENT_RUN_REQUEUE_SECONDS)
    counts = {"lost": 0, "not_started": 0, "requeued": 0}
    for organization in Organization.objects.all():
        with scoping.organization_scope(organization):
            running = AgentRun.objects.filter(status=RunStatus.RUNNING).select_related("backend")
            for run in running.filter(claimed_at__isnull=False, heartbeat_at__lt=lost_before):
                error = {"code": "worker_lost", "message": "Its worker stopped answering mid-run."}
                counts["lost"] += _finish(run, RunStatus.FAILED, error)
            for run in running.filter(claimed_at__isnull=True, created_at__lt=queued_before):
                error = {"code": "not_started", "message": "No worker took the run in time."}
                counts["not_started"] += _finish(run, RunStatus.FAILED, error)
            waiting = running.filter(claimed_at__isnull=True, created_at__lt=requeue_before)
            for run_id in waiting.values_list("pk", flat=True):
                try:
                    agent_run.delay(organization.pk, str(run_id))
                except Exception:  # the broker is still down: the next pass tries again
                    log.warning("agent run not queued again", extra={"run": str(run_id)})
                    break
                counts["requeued"] += 1
    return counts
