"""A session's calls on the data plane (agentapi.dataplane): tools/call, resources/read, prompts/get
under `/api/v1/sessions/{id}/`, and the lookups the session MCP endpoint (sessions_app.mcp_server)
makes. The pipeline is the configuration's own (mcp.dataplane), with one more join:

    authenticate  the caller (API key or JWT; at the MCP endpoint also the session's token), with
    find          the session, the caller's own, and the attached server the name points into
                  (by its prefix, sessions_app.naming), its configuration and whether the tool
                  is withheld: one statement in authentication's round trip (agentapi.db.aio)
    resolve       a name that may be hashed is looked up in the server's catalogue (a worker
                  thread; cached in Redis)
    call          mcp.dataplane.call_tool / read_resource / get_prompt, the session named in
                  the audit record
    touch         the session's liveness (sessions_app.liveness), alongside the call
"""

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass, field
from functools import cache

from rest_framework import exceptions

from agentapi import context as request_context
from agentapi import dataplane as http
from agentapi.db import aio
from agentapi.errors import APIError
from agentapi.workers import in_worker
from audit.recorders import deferred_security_events_async
from mcp import catalogue, proxy
from mcp import dataplane as mcp_dataplane
from mcp.api import serializers as s
from mcp.models import MCPConfiguration, PinStatus, ToolPin
from sessions_app import liveness, naming, tools, workspaces
from sessions_app.models import AgentSession, SessionServer
from sessions_app.services import SESSION_TOKEN_PREFIX, hash_session_token
from tenants import idempotency, ratelimits, scoping, security
from tenants.authentication import Principal, SecretCredential, bearer_authenticate_async, principal_scope

log = logging.getLogger(__name__)

# -- authenticate -----------------------------------------------------------------------------

# In the model's own field order, which is the order Model.from_db expects.
_SESSION_FIELDS = [
    field.attname
    for field in AgentSession._meta.concrete_fields
    if field.attname
    in {"id", "organization_id", "user_id", "name", "status", "last_active_at", "expires_at", "ends_at"}
]


@cache
def session_token() -> SecretCredential:
    """The session's own token, accepted at its MCP endpoint (and only there): the one its user was
    given, or its terminal agent's (sessions_app.terminals)."""
    table = AgentSession._meta.db_table
    return SecretCredential(
        prefix=SESSION_TOKEN_PREFIX,
        method="session_token",
        hash=hash_session_token,
        scope_statement=aio.Statement(
            "agentapi_scope_from_session_token",
            "SELECT set_config('app.organization_ids', s.organization_id::text, true), "  # noqa: S608
            "set_config('app.user_id', s.user_id::text, true), set_config('app.secret_hash', '', true), s.id "
            f"FROM \"{table}\" s WHERE %s IN (s.mcp_token_hash, s.agent_token_hash) AND s.status = 'active'",
        ),
    )


# -- find -------------------------------------------------------------------------------------


@cache
def _configuration_attnames() -> list[str]:
    return [field.attname for field in MCPConfiguration._meta.concrete_fields]


@cache
def _find_statement() -> aio.Statement:
    """The caller's own session by id, the attached server with the given prefix (or NULLs), and
    whether the named tool waits for approval: one row, or none."""
    session_columns = [f's."{AgentSession._meta.get_field(name).column}"' for name in _SESSION_FIELDS]
    configuration_columns = [
        f'c."{MCPConfiguration._meta.get_field(name).column}"' for name in _configuration_attnames()
    ]
    in_scope = "NULLIF(current_setting('app.{}', true), '')::bigint"
    sql = (
        f"SELECT {', '.join(session_columns + configuration_columns)}, "  # noqa: S608
        f'EXISTS (SELECT 1 FROM "{ToolPin._meta.db_table}" p '
        "WHERE p.configuration_id = c.id AND p.name = %s AND p.status = %s) "
        f'FROM "{AgentSession._meta.db_table}" s '
        f'LEFT JOIN "{SessionServer._meta.db_table}" ss ON ss.session_id = s.id AND ss.prefix = %s '
        f'LEFT JOIN "{MCPConfiguration._meta.db_table}" c ON c.id = ss.configuration_id '
        f"WHERE s.id = %s AND s.organization_id = {in_scope.format('organization_ids')} "
        f"AND s.user_id = {in_scope.format('user_id')}"
    )
    return aio.Statement("agentapi_session_server", sql)


@cache
def _servers_statement() -> aio.Statement:
    """Every server attached to a session, in attach order: its prefix, its configuration and the
    names of its tools that wait for approval."""
    columns = [f'c."{MCPConfiguration._meta.get_field(name).column}"' for name in _configuration_attnames()]
    in_scope = "NULLIF(current_setting('app.organization_ids', true), '')::bigint"
    sql = (
        f"SELECT ss.prefix, {', '.join(columns)}, "  # noqa: S608
        f'ARRAY(SELECT p.name FROM "{ToolPin._meta.db_table}" p WHERE p.configuration_id = c.id AND p.status = %s) '
        f'FROM "{SessionServer._meta.db_table}" ss '
        f'JOIN "{MCPConfiguration._meta.db_table}" c ON c.id = ss.configuration_id '
        f"WHERE ss.session_id = %s AND ss.organization_id = {in_scope} ORDER BY ss.id"
    )
    return aio.Statement("agentapi_session_servers", sql)


@dataclass
class Server:
    prefix: str
    configuration: MCPConfiguration
    pending: set[str]


@dataclass
class Found:
    principal: Principal
    session: AgentSession
    configuration: MCPConfiguration | None  # the server the name points into, if attached
    withheld: bool
    servers: list[Server] | None = None  # every attached server, when asked for
    also: list[list[tuple]] = field(default_factory=list)  # the rows of authenticate_and_find's `also`


def _session_id(value: str) -> str | None:
    try:
        return str(uuid.UUID(value))
    except ValueError:
        return None


async def authenticate_and_find(
    request, session_id: str, *, prefix: str = "", tool: str = "", secrets=(), servers: bool = False, also=()
) -> Found:
    """The caller, their session `session_id` and its server `prefix` (with `servers`, every
    attached server too): one round trip. Another user's or organization's session is NotFound;
    a session token is good for its own session only. `also`: statements of the caller's own
    reads about the session (its id is their first parameter), in that same round trip; their rows
    are `found.also`, used only once the session is found to be the caller's."""
    pk = _session_id(session_id) or str(uuid.UUID(int=0))
    statements = [(_find_statement(), [tool, PinStatus.PENDING, prefix, pk])]
    if servers:
        statements.append((_servers_statement(), [PinStatus.PENDING, pk]))
    statements += [(statement, [pk, *params]) for statement, params in also]
    principal, (rows, *more) = await bearer_authenticate_async(
        request.headers.get("authorization", ""), request.query, also=statements, secrets=secrets
    )
    server_rows, also_rows = (more[:1], more[1:]) if servers else ([], more)
    if principal.subject is not None and principal.subject != pk:
        raise exceptions.AuthenticationFailed("This session token belongs to another session.")
    if not rows:
        with scoping.organization_scope(principal.organization, actor=principal.actor):
            security.report("lookup_denied", model=AgentSession._meta.label, pk=session_id[:64])
        raise exceptions.NotFound()
    row = rows[0]
    session = aio.instance(AgentSession, _SESSION_FIELDS, row[: len(_SESSION_FIELDS)])
    session.organization = principal.organization
    values, withheld = row[len(_SESSION_FIELDS) : -1], row[-1]
    configuration = None
    if values[0] is not None:
        configuration = aio.instance(MCPConfiguration, _configuration_attnames(), values)
        configuration.organization = principal.organization
    found = Found(principal, session, configuration, bool(withheld), also=also_rows)
    if servers:
        found.servers = []
        for prefix_, *values, pending in server_rows[0]:
            attached = aio.instance(MCPConfiguration, _configuration_attnames(), values)
            attached.organization = principal.organization
            found.servers.append(Server(prefix_, attached, set(pending)))
    return found


# A server's tools under a session's names, as last built in this process from the shared
# catalogue, for LOCAL_CATALOGUE_SECONDS: keyed by the catalogue's own key (configuration,
# revision, credential), the prefix, the allowed tools and the withheld ones, which come fresh from
# the database with every request, so an approval or a withheld tool takes effect at once; what the
# server itself lists is at most that much older than Redis's copy (itself MCP_CATALOGUE_TTL old).
LOCAL_CATALOGUE_SECONDS = 5.0
_built: dict[tuple, tuple[float, list[dict]]] = {}


def _local_key(server: Server, key: str) -> tuple:
    allowed = server.configuration.allowed_tools
    return (key, server.prefix, tuple(allowed) if allowed is not None else None, frozenset(server.pending))


def _keep(local_key: tuple, built: list[dict]) -> None:
    now = time.monotonic()
    if len(_built) > 10_000:  # forget what has expired rather than grow without end
        for stale in [k for k, (at, _) in _built.items() if now - at >= LOCAL_CATALOGUE_SECONDS]:
            del _built[stale]
    _built[local_key] = (now, built)


async def list_tools(found: Found) -> tuple[list[dict], list[tools.Unavailable]]:
    """tools.list_tools natively: the servers came with authentication; their credentials are
    kept per revision (mcp.dataplane.reach); their catalogues are read from Redis in one round trip
    (or this process's copy of a few seconds); only a server whose catalogue is not cached is
    listed (on a worker thread, as the management plane lists it)."""
    tools.require_active(found.session)
    await liveness.touch(found.session)  # listing is a use too (Redis at most once a second)
    user_id = found.session.user_id
    built, unavailable, missing = {}, [], []
    with workspaces.used_by(found.session):
        for server in found.servers:
            try:
                proxy.require_enabled(server.configuration)
                target = await mcp_dataplane.reach(server.configuration, user_id)
            except APIError as exc:
                unavailable.append(tools.unavailable_for(server.configuration.pk, server.prefix, exc))
                continue
            key = catalogue.key_for(server.configuration, target)
            local = _built.get(_local_key(server, key))
            if local is not None and time.monotonic() - local[0] < LOCAL_CATALOGUE_SECONDS:
                built[server.prefix] = local[1]
            else:
                missing.append((server, key))
        cached = await in_worker(catalogue.cached_many)([key for _, key in missing]) if missing else {}
        for server, key in missing:
            configuration = server.configuration
            try:
                if key in cached:
                    visible = catalogue.visible(configuration, cached[key], server.pending)
                else:
                    visible = await in_worker(proxy.list_tools)(configuration=configuration, user_id=user_id)
            except APIError as exc:
                unavailable.append(tools.unavailable_for(configuration.pk, server.prefix, exc))
                continue
            built[server.prefix] = tools.session_tools(server.prefix, configuration.pk, visible)
            _keep(_local_key(server, key), built[server.prefix])
    listed = [tool for server in found.servers for tool in built.get(server.prefix, ())]
    return listed, unavailable


# -- the calls --------------------------------------------------------------------------------


def _not_found(what: str, name: str) -> APIError:
    return APIError(f"{what}_not_found", f"This session has no {what} named {name!r}.", status=404)


async def call_tool(found: Found, name: str, arguments: dict) -> dict:
    """Call the session tool `name`; stdio servers run in the session's workspace."""
    with workspaces.used_by(found.session):
        return await _call_tool(found, name, arguments)


async def _call_tool(found: Found, name: str, arguments: dict) -> dict:
    """Call the session tool `name` (found with its prefix and the rest of the name)."""
    tools.require_active(found.session)
    parts = naming.split(name)
    if found.configuration is None or parts is None:
        raise _not_found("tool", name)
    configuration, upstream, withheld = found.configuration, naming.plain_upstream(*parts), found.withheld
    if upstream is None:  # a hashed name: which tool it is, the catalogue says
        configuration, upstream = await in_worker(tools.resolve_tool)(found.session, name)
        withheld = await in_worker(catalogue.withheld)(configuration, upstream)
    user_id = found.session.user_id
    validated = {"name": upstream, "arguments": arguments}
    touched = asyncio.ensure_future(liveness.touch(found.session))
    try:
        result = await mcp_dataplane.call_tool(configuration, user_id, validated, withheld, found.session.pk)
    finally:
        await touched
    return {**result, "name": name}


async def read_resource(found: Found, uri: str) -> dict:
    with workspaces.used_by(found.session):
        return await _read_resource(found, uri)


async def _read_resource(found: Found, uri: str) -> dict:
    tools.require_active(found.session)
    parts = tools.upstream_uri(uri)
    if found.configuration is None or parts is None:
        raise APIError("resource_not_found", f"This session has no resource {uri!r}.", status=404)
    touched = asyncio.ensure_future(liveness.touch(found.session))
    try:
        result = await mcp_dataplane.read_resource(
            found.configuration, found.session.user_id, {"uri": parts[1]}, session=found.session.pk
        )
    finally:
        await touched
    return {**result, "uri": uri}


async def get_prompt(found: Found, name: str, arguments: dict) -> dict:
    with workspaces.used_by(found.session):
        return await _get_prompt(found, name, arguments)


async def _get_prompt(found: Found, name: str, arguments: dict) -> dict:
    tools.require_active(found.session)
    parts = naming.split(name)
    if found.configuration is None or parts is None:
        raise _not_found("prompt", name)
    upstream = naming.plain_upstream(*parts)
    configuration = found.configuration
    if upstream is None:
        prompts, _ = await in_worker(tools.list_prompts)(found.session)
        upstream = next((p["prompt"] for p in prompts if p["name"] == name), None)
        if upstream is None:
            raise _not_found("prompt", name)
    touched = asyncio.ensure_future(liveness.touch(found.session))
    try:
        validated = {"name": upstream, "arguments": arguments}
        result = await mcp_dataplane.get_prompt(
            configuration, found.session.user_id, validated, session=found.session.pk
        )
    finally:
        await touched
    return {**result, "name": name}


# -- the REST routes --------------------------------------------------------------------------


async def _handle(request, session_id: str, serializer_class, prefix_of, perform) -> dict:
    async with deferred_security_events_async():
        data, error = mcp_dataplane._body(request)
        named = data.get(serializer_class.routing_field) if isinstance(data, dict) else None
        prefix, tool = prefix_of(named if isinstance(named, str) else "")
        speculation = ratelimits.speculate("mcp", request.headers.get("authorization", ""))
        try:
            found = await authenticate_and_find(request, session_id, prefix=prefix, tool=tool)
        except BaseException:
            speculation.drop()
            raise
        await ratelimits.enforce_async("mcp", found.principal, speculation)
        with scoping.organization_scope(found.principal.organization, actor=found.principal.actor):
            request_context.annotate(user=str(found.principal.membership.user_id), session=str(found.session.pk))
            validated = mcp_dataplane._valid(serializer_class, data, error)
            return await perform(found, validated)


def _by_name(name: str) -> tuple[str, str]:
    parts = naming.split(name)
    if parts is None:
        return "", ""
    return parts[0], naming.plain_upstream(*parts) or ""


def _by_uri(uri: str) -> tuple[str, str]:
    parts = tools.upstream_uri(uri)
    return (parts[0], "") if parts else ("", "")


class _ToolCall(s.ToolCallSerializer):
    routing_field = "name"


class _ResourceRead(s.ResourceReadSerializer):
    routing_field = "uri"


class _PromptGet(s.PromptGetSerializer):
    routing_field = "name"


async def tool_call(request, session_id: str) -> dict:
    """POST /api/v1/sessions/{id}/tools/call/ (SessionToolsViewSet.tools_call's contract)."""
    return await _handle(
        request, session_id, _ToolCall, _by_name, lambda found, v: call_tool(found, v["name"], v["arguments"])
    )


async def resource_read(request, session_id: str) -> dict:
    """POST /api/v1/sessions/{id}/resources/read/."""
    return await _handle(request, session_id, _ResourceRead, _by_uri, lambda found, v: read_resource(found, v["uri"]))


async def prompt_get(request, session_id: str) -> dict:
    """POST /api/v1/sessions/{id}/prompts/get/."""
    return await _handle(
        request, session_id, _PromptGet, _by_name, lambda found, v: get_prompt(found, v["name"], v["arguments"])
    )


# -- sending a message ------------------------------------------------------------------------------
# POST /api/v1/sessions/{id}/messages/ on the data plane: the management plane's
# sessions_app.runs.message_send in one statement, run in authentication's round trip, then the
# audit record. The statement stores the run, the message and its two events only when the session
# is the caller's, active, and has an enabled backend; the partial unique index on running runs
# refuses a second run (session_busy), as on the management plane. No row lock is needed for the
# events' order: a run is inserted only when none is running, so no other writer of this session's
# events can be at work (sessions_app.runs: the run's writers hold its row).


@cache
def _send_statement(keyed: bool = False) -> aio.Statement:
    """`keyed`: the request's Idempotency-Key is claimed too (tenants.idempotency), and nothing is
    stored when another request holds it."""
    from sessions_app.models import AgentBackend, AgentEvent, AgentMessage, AgentRun
    from tenants.models import IdempotencyRecord

    in_scope = "NULLIF(current_setting('app.{}', true), '')::bigint"
    sessions, backends = AgentSession._meta.db_table, AgentBackend._meta.db_table
    from sessions_app.runs import EVENT_INSERT_FIELDS, MESSAGE_INSERT_FIELDS

    run_columns = aio.columns(AgentRun, ["id", "organization", "session", "backend", "status", "input_tokens",
                                      "output_tokens", "steps", "tool_calls", "created_at"])  # fmt: skip
    message_columns = aio.columns(AgentMessage, MESSAGE_INSERT_FIELDS)
    event_columns = aio.columns(AgentEvent, EVENT_INSERT_FIELDS)
    messages, events_table = AgentMessage._meta.db_table, AgentEvent._meta.db_table
    sql = (
        f'WITH s AS (SELECT s.id, s.organization_id, s.agent_id FROM "{sessions}" s '  # noqa: S608
        f'JOIN "{backends}" b ON b.id = s.agent_id AND b.enabled '
        f"WHERE s.id = %s AND s.organization_id = {in_scope.format('organization_ids')} "
        f"AND s.user_id = {in_scope.format('user_id')} AND s.status = 'active' "
        "AND s.expires_at > now() AND s.ends_at > now()), "
        + (_claim_sql(IdempotencyRecord) if keyed else "")
        + f'r AS (INSERT INTO "{AgentRun._meta.db_table}" ({run_columns}) '  # noqa: S608
        f"SELECT %s, s.organization_id, s.id, s.agent_id, 'running', 0, 0, 0, 0, %s FROM s{', k' if keyed else ''} "
        "RETURNING id), "
        f'm AS (INSERT INTO "{messages}" ({message_columns}) '
        f'SELECT s.organization_id, s.id, r.id, COALESCE((SELECT MAX(x.seq) + 1 FROM "{messages}" x '
        "WHERE x.session_id = s.id), 0), 'user', %s, '[]'::jsonb, '', '', false, %s FROM s, r RETURNING id, seq), "
        f'e AS (INSERT INTO "{events_table}" ({event_columns}) '
        "SELECT s.organization_id, s.id, r.id, v.type, CASE WHEN v.n = 1 THEN jsonb_set(v.data, '{message}', "
        "to_jsonb(m.seq)) ELSE v.data END, %s FROM s, r, m, (VALUES (1, 'message_update', %s::jsonb), "
        "(2, 'status_change', %s::jsonb)) v(n, type, data) ORDER BY v.n RETURNING id) "
        f"SELECT s.organization_id, m.id, m.seq, (SELECT max(id) FROM e), {'(SELECT id FROM k)' if keyed else 'NULL'} "
        "FROM s, m"
    )
    return aio.Statement("agentapi_message_send" + ("_keyed" if keyed else ""), sql)


def _claim_sql(model) -> str:
    """The key's record claimed for the session found (`s`): inserted, or taken over when expired;
    `k` is empty when another request holds it (a concurrent one's claim is waited for)."""
    columns = aio.columns(model, ["organization", "user_id", "key", "method", "path", "fingerprint", "status",
                                  "response", "resource", "created_at"])  # fmt: skip
    table = model._meta.db_table
    return (
        f'k AS (INSERT INTO "{table}" AS old ({columns}) '  # noqa: S608
        "SELECT s.organization_id, %s, %s, 'POST', %s, %s, NULL, '', %s, %s FROM s "
        "ON CONFLICT ON CONSTRAINT tenants_idempotency_unique_key DO UPDATE SET method = EXCLUDED.method, "
        "path = EXCLUDED.path, fingerprint = EXCLUDED.fingerprint, status = NULL, response = '', "
        "resource = EXCLUDED.resource, created_at = EXCLUDED.created_at WHERE old.created_at < %s RETURNING id), "
    )


@cache
def _why_statement() -> aio.Statement:
    """Why a message was not stored: the caller's session, its state and its backend's."""
    from sessions_app.models import AgentBackend

    in_scope = "NULLIF(current_setting('app.{}', true), '')::bigint"
    sql = (
        f"SELECT s.status, s.expires_at > now() AND s.ends_at > now(), s.agent_id, b.enabled "  # noqa: S608
        f'FROM "{AgentSession._meta.db_table}" s LEFT JOIN "{AgentBackend._meta.db_table}" b ON b.id = s.agent_id '
        f"WHERE s.id = %s AND s.organization_id = {in_scope.format('organization_ids')} "
        f"AND s.user_id = {in_scope.format('user_id')}"
    )
    return aio.Statement("agentapi_message_why", sql)


def _iso(value) -> str:
    """A time as the management API's serializers write it."""
    text = value.isoformat()
    return text[:-6] + "Z" if text.endswith("+00:00") else text


def _refusal(row) -> APIError:
    status, in_time, agent_id, enabled = row[0]
    if status != "active" or not in_time:
        return APIError("session_not_active", f"This session is {status if status != 'active' else 'expired'}.",
                        status=409)  # fmt: skip
    if agent_id is None:
        return APIError("no_agent", "This session has no agent backend: choose one when opening a session.", status=409)
    return APIError("agent_disabled", "This session's agent backend is disabled.", status=409)


async def message_send(request, session_id: str) -> dict:
    """POST /api/v1/sessions/{id}/messages/ (ConversationViewSet.messages' contract): 202 with the
    message and its run."""
    import psycopg
    from django.utils import timezone

    from audit.services import audit_record_async
    from sessions_app import events, runs
    from sessions_app.models import AgentRun, RunStatus

    async with deferred_security_events_async():
        # The body is checked, but its error raised only once the session is found: another
        # organization's (or user's) session is 404 whatever the body holds.
        data, error = mcp_dataplane._body(request)
        content = data.get("content") if isinstance(data, dict) else None
        if error is None and (not isinstance(content, str) or not content.strip()):
            error = exceptions.ValidationError({"content": ["This field is required and may not be blank."]})
        elif error is None and len(content) > runs.MAX_MESSAGE_CHARS:
            error = exceptions.ValidationError({"content": [f"At most {runs.MAX_MESSAGE_CHARS} characters."]})
        pk = _session_id(session_id) or str(uuid.UUID(int=0))
        run_id, now = uuid.uuid4(), timezone.now()
        message_event = {"message": 0, "role": "user", "content": content, "run": str(run_id), "time": now.isoformat()}
        status_event = {"status": "running", "run": str(run_id)}
        # Authenticated first, then the caller's `agent` limits, and only then the message stored:
        # a refused message is never kept (one round trip more than storing it with the
        # authentication, which a message, unlike a tool call, can afford).
        principal, _ = await bearer_authenticate_async(request.headers.get("authorization", ""), request.query)
        await ratelimits.enforce_async("agent", principal)
        key = idempotency.key_of(request.headers)
        statements = [(_why_statement(), [pk])]
        if error is None:
            params = [run_id, now, content, now, now, message_event, status_event]
            if key is not None:
                fingerprint = idempotency.fingerprint("POST", request.path, data)
                params = [principal.membership.user_id, key, request.path[:500], fingerprint,
                          f"{AgentRun._meta.label_lower}:{run_id}", now, idempotency.expired_before(), *params]  # fmt: skip
            statements.insert(0, (_send_statement(keyed=key is not None), [pk, *params]))
        try:
            *stored, why = await aio.run(principal_scope(principal), statements)
        except psycopg.errors.UniqueViolation:
            raise APIError(
                "session_busy", "The agent is still answering: wait for it, or cancel its run.", status=409
            ) from None
        if not why:
            with scoping.organization_scope(principal.organization, actor=principal.actor):
                security.report("lookup_denied", model=AgentSession._meta.label, pk=session_id[:64])
            raise exceptions.NotFound()
        if error is not None:
            raise error
        if not stored[0]:
            if key is not None:
                first = await in_worker(_first_answer)(principal, key, fingerprint)
                if first is not None:
                    return http.Answer(*first, headers={idempotency.REPLAYED: "true"})
            raise _refusal(why)
        organization_id, message_id, seq, last_event, record_id = stored[0][0]

        created = _iso(now)
        message = {"id": message_id, "seq": seq, "role": "user", "content": content, "tool_calls": [],
                   "tool_call_id": "", "tool_name": "", "is_error": False, "run": str(run_id), "created_at": created}  # fmt: skip
        run_body = {"id": str(run_id), "status": RunStatus.RUNNING, "error": None,
                    "usage": {"input_tokens": 0, "output_tokens": 0}, "steps": 0, "tool_calls": 0,
                    "first_event_ms": None, "created_at": created, "finished_at": None}  # fmt: skip
        body = {"message": message, "run": run_body}

        def queue():
            from sessions_app.tasks import agent_run

            events.publish(pk, last_event)
            agent_run.delay(organization_id, str(run_id))

        with scoping.organization_scope(principal.organization, actor=principal.actor):
            request_context.annotate(user=str(principal.membership.user_id), session=pk)
            run = AgentRun(pk=run_id, organization_id=organization_id, session_id=pk)
            # The task is queued while the audit record is written: the worker may start meanwhile.
            queued = asyncio.get_running_loop().run_in_executor(None, queue)
            also = []
            if record_id is not None:
                # The answer kept for a retry, written with the audit record (its round trip).
                sealed = await in_worker(idempotency.seal_response)(record_id, organization_id, body)
                also.append((_answer_statement(), [202, sealed, record_id]))
            await audit_record_async(
                "agent.message", target=run, organization_id=organization_id, also=also,
                details={"session": pk, "run": str(run_id), "backend": why[0][2], "characters": len(content)},
            )  # fmt: skip
            try:
                await queued
            except Exception as exc:
                # The broker (Redis) is down: the run waits, committed, and the reaper queues it
                # again once the broker is back (runs.reap). The message is accepted all the same.
                log.warning("agent run not queued; the reaper queues it again",
                            extra={"run": str(run_id), "error": type(exc).__name__})  # fmt: skip
    return http.Answer(202, body)


@cache
def _answer_statement() -> aio.Statement:
    from tenants.models import IdempotencyRecord

    return aio.Statement(
        "agentapi_idempotency_answer",
        f'UPDATE "{IdempotencyRecord._meta.db_table}" SET status = %s, response = %s '  # noqa: S608
        "WHERE id = %s AND status IS NULL",
    )


def _first_answer(principal: Principal, key: str, fingerprint: str) -> tuple[int, dict] | None:
    """The first answer to this key (tenants.idempotency.answer), or None when it has no record."""
    from tenants.models import IdempotencyRecord

    with scoping.organization_scope(principal.organization, actor=principal.actor):
        record = IdempotencyRecord.objects.filter(user_id=principal.membership.user_id, key=key).first()
        return None if record is None else idempotency.answer(record, fingerprint)


def rebuild_answer(run_id: str) -> tuple[int, dict]:
    """A message's answer rebuilt from what was stored (its Idempotency-Key's record was claimed with
    it, and its answer not yet written): the message and its run as they are now."""
    from sessions_app.api import serializers as session_serializers
    from sessions_app.models import AgentMessage, AgentRun

    run = AgentRun.objects.get(pk=run_id)
    message = AgentMessage.objects.filter(run=run, role="user").order_by("seq").first()
    return 202, {
        "message": session_serializers.MessageSerializer(message).data,
        "run": session_serializers.RunSerializer(run).data,
    }
