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
import time
import uuid
from dataclasses import dataclass
from functools import cache

from rest_framework import exceptions

from agentapi import context as request_context
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
from tenants import scoping, security
from tenants.authentication import Principal, SecretCredential, bearer_authenticate_async

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
    """The session's own token, accepted at its MCP endpoint (and only there)."""
    table = AgentSession._meta.db_table
    return SecretCredential(
        prefix=SESSION_TOKEN_PREFIX,
        method="session_token",
        hash=hash_session_token,
        scope_statement=aio.Statement(
            "agentapi_scope_from_session_token",
            "SELECT set_config('app.organization_ids', s.organization_id::text, true), "  # noqa: S608
            "set_config('app.user_id', s.user_id::text, true), set_config('app.secret_hash', '', true), s.id "
            f"FROM \"{table}\" s WHERE s.mcp_token_hash = %s AND s.status = 'active'",
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


def _session_id(value: str) -> str | None:
    try:
        return str(uuid.UUID(value))
    except ValueError:
        return None


async def authenticate_and_find(
    request, session_id: str, *, prefix: str = "", tool: str = "", secrets=(), servers: bool = False
) -> Found:
    """The caller, their session `session_id` and its server `prefix` (with `servers`, every
    attached server too): one round trip. Another user's or organization's session is NotFound;
    a session token is good for its own session only."""
    pk = _session_id(session_id) or str(uuid.UUID(int=0))
    statements = [(_find_statement(), [tool, PinStatus.PENDING, prefix, pk])]
    if servers:
        statements.append((_servers_statement(), [PinStatus.PENDING, pk]))
    principal, (rows, *server_rows) = await bearer_authenticate_async(
        request.headers.get("authorization", ""), request.query, also=statements, secrets=secrets
    )
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
    found = Found(principal, session, configuration, bool(withheld))
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
        found = await authenticate_and_find(request, session_id, prefix=prefix, tool=tool)
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
