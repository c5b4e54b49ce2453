"""`/mcp/sessions/{id}/`: a session's tools, resources and prompts as one MCP server (Streamable HTTP).

Served on the data plane (agentapi.dataplane.serve_app) by the MCP SDK's own server, stateless and
answering in JSON: every request stands alone (no `Mcp-Session-Id` is issued, no stream is kept),
so a client that initializes through one web process and calls through another works without
sticky routing, and nothing is held between requests. Both protocol eras are served: the
2025 handshake (`initialize`, then requests) and 2026-07-28's self-contained requests.

Why the SDK's low-level `Server` and not fastmcp's (the design card names fastmcp): a session's
tools are different for every session and every request, known only once the caller is
authenticated; the low-level server takes one handler per method (list, call) and asks it each
time, while fastmcp's server is built around components registered ahead of time, and would need
a server per session. fastmcp's client, and the MCP Inspector, test this endpoint
(tests/sessions/test_mcp_endpoint.py).

Per request, before the SDK sees it:
- the body is read (bounded), and for tools/call, prompts/get and resources/read the name's prefix
  is taken from it, so that authentication (the session user's API key or JWT, or the session's
  own token), the session and the attached server are found in one round trip
  (sessions_app.dataplane.authenticate_and_find);
- anything else is 401 with `WWW-Authenticate`; another user's or organization's session is 404;
  an ended session is 409 (its token is then refused as unknown: it ended with it).
The handlers then answer from the catalogue and call through the same path as the REST routes.
On the embedded profile (SQLite: no async database access) the same steps run on a worker thread
with the ORM.
"""

import asyncio
import contextvars
import json
import logging
from dataclasses import dataclass
from urllib.parse import parse_qs

import mcp_types as types
from django.db.models import Q
from mcp.server.lowlevel import Server
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.server.transport_security import TransportSecuritySettings
from mcp.shared.exceptions import MCPError
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS
from rest_framework import exceptions

from agentapi import context as request_context
from agentapi import dataplane as http
from agentapi.db.scope import DatabaseScope, use_scope
from agentapi.errors import APIError, request_too_large
from agentapi.workers import in_worker
from audit.recorders import deferred_security_events_async
from sessions_app import dataplane, naming, tools
from sessions_app.models import AgentSession, SessionServer
from sessions_app.services import SESSION_TOKEN_PREFIX, hash_session_token
from tenants import ratelimits, scoping
from tenants.authentication import (
    QUERY_CREDENTIAL_NAMES,
    Unauthenticated,
    _parse_bearer,
    _principal,
    api_key_authenticate,
    jwt_authenticate,
)
from tenants.models import API_KEY_PREFIX, Membership

log = logging.getLogger(__name__)


@dataclass
class Call:
    found: dataplane.Found


_call: contextvars.ContextVar[Call] = contextvars.ContextVar("agentapi_session_mcp_call")


def _found() -> dataplane.Found:
    return _call.get().found


def _native() -> bool:
    """Async database access (PostgreSQL, the data plane on); else the ORM on a worker thread."""
    return http.enabled()


# -- the handlers -----------------------------------------------------------------------------


def _apierror_to_mcp(exc: APIError | exceptions.APIException) -> MCPError:
    code = getattr(exc, "error_code", None) or ("rate_limited" if exc.status_code == 429 else "error")
    invalid = exc.status_code in (400, 404, 422)
    return MCPError(types.INVALID_PARAMS if invalid else types.INTERNAL_ERROR, f"{code}: {exc.detail}")


async def _list_tools(ctx, params) -> types.ListToolsResult:
    found = _found()
    if found.servers is not None:
        listed, _unavailable = await dataplane.list_tools(found)
    else:
        listed, _unavailable = await in_worker(tools.list_tools)(found.session)
    return types.ListToolsResult(tools=[_as_mcp(tool) for tool in listed])


# The MCP Tool made from a session tool, kept while the listing it came from is (the data plane
# keeps its listings a few seconds: sessions_app.dataplane.LOCAL_CATALOGUE_SECONDS), so that a
# listing in steady state builds and validates none of its tools again.
_mcp_tools: dict[int, tuple[dict, types.Tool]] = {}


def _as_mcp(tool: dict) -> types.Tool:
    kept = _mcp_tools.get(id(tool))
    if kept is not None and kept[0] is tool:
        return kept[1]
    made = types.Tool(
        name=tool["name"],
        title=tool.get("title"),
        description=tool["description"],
        input_schema=tool["input_schema"],
        output_schema=tool.get("output_schema"),
        annotations=tool.get("annotations"),
    )
    if len(_mcp_tools) > 20_000:
        _mcp_tools.clear()
    _mcp_tools[id(tool)] = (tool, made)  # the dict is held, so its id is not reused meanwhile
    return made


async def _call_tool(ctx, params: types.CallToolRequestParams) -> types.CallToolResult:
    found = _found()
    try:
        await ratelimits.enforce_async("mcp", found.principal)
        if _native():
            result = await dataplane.call_tool(found, params.name, params.arguments or {})
        else:
            result = await in_worker(tools.call_tool)(found.session, params.name, params.arguments or {})
    except (APIError, exceptions.APIException) as exc:
        if exc.status_code == 404:
            raise _apierror_to_mcp(exc) from None
        # The platform refused (a rate limit, say) or the server failed: a tool error the agent
        # can read and act on.
        code = getattr(exc, "error_code", None) or ("rate_limited" if exc.status_code == 429 else "error")
        return types.CallToolResult(content=[types.TextContent(text=f"{code}: {exc.detail}")], is_error=True)
    return types.CallToolResult.model_validate(
        {"content": result["content"], "structuredContent": result["structured_content"], "isError": result["is_error"]}
    )


async def _list_resources(ctx, params) -> types.ListResourcesResult:
    listed, _unavailable = await in_worker(tools.list_resources)(_found().session)
    resources = []
    for resource in listed:
        data = {k: v for k, v in resource.items() if k not in ("resource", "configuration")}
        resources.append(types.Resource.model_validate(data))
    return types.ListResourcesResult(resources=resources)


async def _read_resource(ctx, params: types.ReadResourceRequestParams) -> types.ReadResourceResult:
    found = _found()
    try:
        await ratelimits.enforce_async("mcp", found.principal)
        if _native():
            result = await dataplane.read_resource(found, str(params.uri))
        else:
            result = await in_worker(tools.read_resource)(found.session, str(params.uri))
    except (APIError, exceptions.APIException) as exc:
        raise _apierror_to_mcp(exc) from None
    return types.ReadResourceResult.model_validate({"contents": result["contents"]})


async def _list_prompts(ctx, params) -> types.ListPromptsResult:
    listed, _unavailable = await in_worker(tools.list_prompts)(_found().session)
    prompts = [
        types.Prompt.model_validate({k: v for k, v in p.items() if k not in ("prompt", "configuration")})
        for p in listed
    ]
    return types.ListPromptsResult(prompts=prompts)


async def _get_prompt(ctx, params: types.GetPromptRequestParams) -> types.GetPromptResult:
    found = _found()
    arguments = dict(params.arguments or {})
    try:
        await ratelimits.enforce_async("mcp", found.principal)
        if _native():
            result = await dataplane.get_prompt(found, params.name, arguments)
        else:
            result = await in_worker(tools.get_prompt)(found.session, params.name, arguments)
    except (APIError, exceptions.APIException) as exc:
        raise _apierror_to_mcp(exc) from None
    return types.GetPromptResult.model_validate(
        {"description": result.get("description"), "messages": result["messages"]}
    )


server = Server(
    "agentapi-session",
    version="1.0",
    instructions="The tools, resources and prompts of your agent session, from the servers attached to it.",
    on_list_tools=_list_tools,
    on_call_tool=_call_tool,
    on_list_resources=_list_resources,
    on_read_resource=_read_resource,
    on_list_prompts=_list_prompts,
    on_get_prompt=_get_prompt,
)
# Host and Origin: the host is checked against ALLOWED_HOSTS before this (agentapi.dataplane);
# every request carries a bearer credential that a page on another origin cannot send, which is
# what DNS-rebinding protection guards against for servers without authentication.
_manager = StreamableHTTPSessionManager(
    server,
    json_response=True,
    stateless=True,
    security_settings=TransportSecuritySettings(enable_dns_rebinding_protection=False),
)
_running: asyncio.Task | None = None
_ready: asyncio.Event | None = None


async def _run_manager(ready: asyncio.Event) -> None:
    async with _manager.run():
        ready.set()
        await asyncio.Event().wait()  # for as long as the process serves


async def _manager_running() -> None:
    """The SDK's manager runs in a task of its own on this loop, started with the first request."""
    global _running, _ready
    if _running is None:
        _ready = asyncio.Event()
        _running = asyncio.get_running_loop().create_task(_run_manager(_ready))
    await _ready.wait()


# -- the request ------------------------------------------------------------------------------


def _message(body: bytes) -> dict:
    """The JSON-RPC message the body holds (a batch, or anything else, as an empty one)."""
    try:
        message = json.loads(body) if body else None
    except ValueError:
        return {}
    return message if isinstance(message, dict) else {}


def _params(message: dict) -> dict:
    params = message.get("params")
    return params if isinstance(params, dict) else {}


# -- tools/list, answered here ----------------------------------------------------------------
#
# Every agent lists its tools, and a session's list is long (100 tools for five servers). Through
# the SDK's server, the result is validated and serialized by pydantic twice per request, which
# measured 3.9 ms of CPU for 100 tools, most of a request (make bench-sessions). For the
# handshake-era protocol versions, a tools/list request (one JSON-RPC request, an id, JSON
# accepted) is answered here instead, from each tool's wire form, made once with the SDK's own
# model (types.Tool, dumped as the SDK dumps it) and kept with the listing it came from. Every other
# request, and every 2026-era one, goes to the SDK's server (tests/sessions/test_mcp_endpoint.py
# checks that both answer a tools/list alike).
DIRECT_TOOLS_LIST = True
_tool_json: dict[int, tuple[dict, bytes]] = {}


def _wire(tool: dict) -> bytes:
    kept = _tool_json.get(id(tool))
    if kept is not None and kept[0] is tool:
        return kept[1]
    dumped = _as_mcp(tool).model_dump(by_alias=True, mode="json", exclude_none=True)
    made = json.dumps(dumped, separators=(",", ":"), ensure_ascii=False).encode()
    if len(_tool_json) > 20_000:
        _tool_json.clear()
    _tool_json[id(tool)] = (tool, made)
    return made


def _answers_tools_list(message: dict, headers: dict) -> bool:
    version = headers.get("mcp-protocol-version")
    return (
        DIRECT_TOOLS_LIST
        and message.get("method") == "tools/list"
        and message.get("jsonrpc") == "2.0"
        and isinstance(message.get("id"), (str, int))
        and not isinstance(message.get("id"), bool)
        and (version is None or version in HANDSHAKE_PROTOCOL_VERSIONS)
        and "application/json" in headers.get("accept", "")
        and "text/event-stream" in headers.get("accept", "")
    )


async def _tools_list(found: dataplane.Found, message: dict, send) -> None:
    if found.servers is not None:
        listed, _unavailable = await dataplane.list_tools(found)
    else:
        listed, _unavailable = await in_worker(tools.list_tools)(found.session)
    body = b"".join(
        [
            b'{"jsonrpc":"2.0","id":',
            json.dumps(message["id"]).encode(),
            b',"result":{"tools":[',
            b",".join(_wire(tool) for tool in listed),
            b"]}}",
        ]
    )
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _routing(method: str | None, params: dict) -> tuple[str, str]:
    """(prefix, tool) the request is about, from its JSON-RPC method and params; ("", "") when none."""
    if method in ("tools/call", "prompts/get") and isinstance(params.get("name"), str):
        parts = naming.split(params["name"])
        if parts is not None:
            return parts[0], (naming.plain_upstream(*parts) or "") if method == "tools/call" else ""
    if method == "resources/read" and isinstance(params.get("uri"), str):
        parts = tools.upstream_uri(params["uri"])
        if parts is not None:
            return parts[0], ""
    return "", ""


def _find_sync(
    authorization: str, query: dict, session_id: str, prefix: str, *, session_tokens: bool = True
) -> dataplane.Found:
    """authenticate_and_find for the embedded profile: the same rules, through the ORM."""
    if any(name in query for name in QUERY_CREDENTIAL_NAMES):
        raise Unauthenticated("credentials_in_query", "Credentials are accepted only in the Authorization header.",
                              credential="query")  # fmt: skip
    token = _parse_bearer(authorization.encode("latin-1"))
    if token is None:
        raise exceptions.NotAuthenticated()
    subject = None
    if token.startswith(API_KEY_PREFIX):
        principal = api_key_authenticate(token)
    elif session_tokens and token.startswith(SESSION_TOKEN_PREFIX):
        hashed = hash_session_token(token)
        with use_scope(DatabaseScope(secret_hash=hashed)):
            owner = (
                AgentSession._base_manager.filter(Q(mcp_token_hash=hashed) | Q(agent_token_hash=hashed))
                .filter(status="active")
                .first()
            )
        if owner is None:
            raise Unauthenticated("invalid_token", "Invalid or ended token.", credential="session_token")
        with scoping.organization_scope(owner.organization):
            membership = Membership.objects.select_related("user", "organization").filter(user_id=owner.user_id).first()
        if membership is None:
            raise Unauthenticated("invalid_token", "Invalid or ended token.", credential="session_token")
        principal, subject = _principal(membership, "session_token"), str(owner.pk)
    else:
        principal = jwt_authenticate(token)
    pk = dataplane._session_id(session_id)
    if subject is not None and subject != pk:
        raise exceptions.AuthenticationFailed("This session token belongs to another session.")
    with scoping.organization_scope(principal.organization, actor=principal.actor):
        session = AgentSession.objects.filter(pk=pk, user_id=principal.membership.user_id).first() if pk else None
        if session is None:
            raise exceptions.NotFound()
        server_row = (
            SessionServer.objects.filter(session=session, prefix=prefix).select_related("configuration").first()
        )
    return dataplane.Found(principal, session, server_row.configuration if server_row else None, False)


async def application(scope, receive, send, session_id: str) -> None:
    """The endpoint (agentapi.dataplane.serve_app calls it with the path's session id)."""
    headers = {name.decode("latin-1").lower(): value.decode("latin-1") for name, value in scope["headers"]}
    if scope["method"] not in ("POST", "GET", "DELETE"):
        raise exceptions.MethodNotAllowed(scope["method"])
    body = await http.read_body(receive, headers) if scope["method"] == "POST" else b""
    if body is None:
        raise request_too_large()
    message = _message(body)
    method = message.get("method")
    prefix, tool = _routing(method, _params(message))
    query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
    async with deferred_security_events_async():
        if _native():
            request = http.Request(scope["method"], scope["path"], headers, query, b"")
            found = await dataplane.authenticate_and_find(
                request,
                session_id,
                prefix=prefix,
                tool=tool,
                secrets=(dataplane.session_token(),),
                servers=method == "tools/list",
            )
        else:
            found = await in_worker(_find_sync)(headers.get("authorization", ""), query, session_id, prefix)
    with scoping.organization_scope(found.principal.organization, actor=found.principal.actor):
        request_context.annotate(user=str(found.principal.membership.user_id), session=str(found.session.pk))
        tools.require_active(found.session)
        if scope["method"] != "POST":
            # Stateless: no stream to open (GET) and no session to end (DELETE).
            raise exceptions.MethodNotAllowed(scope["method"])
        if _answers_tools_list(message, headers):
            return await _tools_list(found, message, send)
        await _manager_running()
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        token = _call.set(Call(found))
        try:
            await _manager.handle_request(scope, replay, send)
        finally:
            _call.reset(token)
