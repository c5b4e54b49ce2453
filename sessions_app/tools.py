"""A session's tools, resources and prompts: its servers' catalogues under the session's names.

Listing reads each attached server's catalogue as the configuration's own listing does
(mcp.catalogue: cached in Redis, filtered by `allowed_tools` and withheld pins at once), as the
session's user, and names what it finds with sessions_app.naming. A server that cannot be listed
(down, disabled, needing the user's OAuth connection) does not hide the others: it is reported in
`unavailable` with its error.

Calls are the configuration's own calls (mcp.proxy on the management plane and the embedded
profile, mcp.dataplane natively async): the session's user's credentials, the breaker, the limits,
and the audit record, which also names the session.
"""

import functools
from dataclasses import dataclass
from urllib.parse import quote, unquote, urlsplit

from django.utils import timezone

from agentapi.errors import APIError
from mcp import proxy
from mcp.models import MCPConfiguration
from sessions_app import liveness, naming, workspaces
from sessions_app.models import AgentSession, SessionServer, SessionStatus

# How a session names a server's resource on its MCP endpoint, so that two servers' resources
# never meet: agentapi://<prefix>/<the server's own URI, percent-encoded>.
RESOURCE_SCHEME = "agentapi"


@dataclass
class Unavailable:
    configuration: int
    prefix: str
    error: dict


def in_workspace(func):
    """The decorated function's calls reach stdio servers in its session's workspace."""

    @functools.wraps(func)
    def wrapper(session, *args, **kwargs):
        with workspaces.used_by(session):
            return func(session, *args, **kwargs)

    return wrapper


def require_active(session: AgentSession) -> None:
    status = session.current_status(timezone.now())
    if status != SessionStatus.ACTIVE:
        raise APIError("session_not_active", f"This session is {status}.", status=409)


def servers_of(session: AgentSession) -> list[SessionServer]:
    return list(SessionServer.objects.filter(session=session).select_related("configuration").order_by("id"))


def unavailable_for(configuration_id: int, prefix: str, exc: APIError) -> Unavailable:
    return Unavailable(configuration_id, prefix, {"code": exc.error_code, "message": str(exc.detail)})


def _each_server(session: AgentSession, list_one) -> tuple[list, list[Unavailable]]:
    found, unavailable = [], []
    for server in servers_of(session):
        try:
            found += list_one(server)
        except APIError as exc:
            unavailable.append(unavailable_for(server.configuration_id, server.prefix, exc))
    return found, unavailable


def session_tools(prefix: str, configuration_id: int, listed: list[dict]) -> list[dict]:
    """A server's visible tools under the session's names."""
    names = naming.assign(prefix, [tool["name"] for tool in listed])
    return [
        {
            "name": names[tool["name"]],
            "tool": tool["name"],
            "configuration": configuration_id,
            "title": tool.get("title"),
            "description": tool.get("description") or "",
            "input_schema": tool.get("inputSchema") or {"type": "object"},
            "output_schema": tool.get("outputSchema"),
            "annotations": tool.get("annotations"),
        }
        for tool in listed
    ]


def _server_tools(server: SessionServer, user_id: int) -> list[dict]:
    listed = proxy.list_tools(configuration=server.configuration, user_id=user_id)
    return session_tools(server.prefix, server.configuration_id, listed)


@in_workspace
def list_tools(session: AgentSession) -> tuple[list[dict], list[Unavailable]]:
    """Every tool the session may call, by its session name."""
    require_active(session)
    liveness.touch_sync(session)
    return _each_server(session, lambda server: _server_tools(server, session.user_id))


def _server_named(session: AgentSession, name: str, what: str) -> tuple[SessionServer, str]:
    """The attached server a session name points into, and the rest of the name."""
    parts = naming.split(name)
    server = None
    if parts is not None:
        server = SessionServer.objects.filter(session=session, prefix=parts[0]).select_related("configuration").first()
    if server is None:
        raise APIError(f"{what}_not_found", f"This session has no {what} named {name!r}.", status=404)
    return server, parts[1]


@in_workspace
def resolve_tool(session: AgentSession, name: str) -> tuple[MCPConfiguration, str]:
    """(configuration, the server's own tool name) for a session tool name. A clean name is its
    own upstream name; a hashed one is found in the server's catalogue."""
    server, rest = _server_named(session, name, "tool")
    upstream = naming.plain_upstream(server.prefix, rest)
    if upstream is not None:
        return server.configuration, upstream
    for tool in _server_tools(server, session.user_id):
        if tool["name"] == name:
            return server.configuration, tool["tool"]
    raise APIError("tool_not_found", f"This session has no tool named {name!r}.", status=404)


@in_workspace
def call_tool(session: AgentSession, name: str, arguments: dict) -> dict:
    require_active(session)
    configuration, tool = resolve_tool(session, name)
    liveness.touch_sync(session)
    result = proxy.tool_call(
        configuration=configuration, user_id=session.user_id, name=tool, arguments=arguments, session=session.pk
    )
    return {**result, "name": name}


# -- prompts ----------------------------------------------------------------------------------


def _server_prompts(server: SessionServer, user_id: int) -> list[dict]:
    listed = proxy.list_prompts(configuration=server.configuration, user_id=user_id)
    names = naming.assign(server.prefix, [prompt["name"] for prompt in listed])
    return [
        {**prompt, "name": names[prompt["name"]], "prompt": prompt["name"], "configuration": server.configuration_id}
        for prompt in listed
    ]


@in_workspace
def list_prompts(session: AgentSession) -> tuple[list[dict], list[Unavailable]]:
    require_active(session)
    return _each_server(session, lambda server: _server_prompts(server, session.user_id))


@in_workspace
def get_prompt(session: AgentSession, name: str, arguments: dict) -> dict:
    require_active(session)
    server, rest = _server_named(session, name, "prompt")
    upstream = naming.plain_upstream(server.prefix, rest)
    if upstream is None:
        upstream = next((p["prompt"] for p in _server_prompts(server, session.user_id) if p["name"] == name), None)
        if upstream is None:
            raise APIError("prompt_not_found", f"This session has no prompt named {name!r}.", status=404)
    liveness.touch_sync(session)
    result = proxy.get_prompt(
        configuration=server.configuration, user_id=session.user_id, name=upstream, arguments=arguments,
        session=session.pk,
    )  # fmt: skip
    return {**result, "name": name}


# -- resources --------------------------------------------------------------------------------


def session_uri(prefix: str, uri: str) -> str:
    return f"{RESOURCE_SCHEME}://{prefix}/{quote(uri, safe='')}"


def upstream_uri(uri: str) -> tuple[str, str] | None:
    """(prefix, the server's URI) of a session resource URI, or None."""
    parts = urlsplit(uri)
    if parts.scheme != RESOURCE_SCHEME or not parts.netloc or not parts.path.startswith("/"):
        return None
    return parts.netloc, unquote(parts.path[1:])


def _server_resources(server: SessionServer, user_id: int) -> list[dict]:
    listed = proxy.list_resources(configuration=server.configuration, user_id=user_id)
    return [
        {
            **resource,
            "uri": session_uri(server.prefix, resource["uri"]),
            "resource": resource["uri"],
            "configuration": server.configuration_id,
        }
        for resource in listed
    ]


@in_workspace
def list_resources(session: AgentSession) -> tuple[list[dict], list[Unavailable]]:
    """Every resource of the session's servers, each under a URI that names its server (a
    session's `uri`), with the server's own (`resource`) beside it."""
    require_active(session)
    return _each_server(session, lambda server: _server_resources(server, session.user_id))


@in_workspace
def read_resource(session: AgentSession, uri: str) -> dict:
    require_active(session)
    parts = upstream_uri(uri)
    server = None
    if parts is not None:
        server = SessionServer.objects.filter(session=session, prefix=parts[0]).select_related("configuration").first()
    if server is None:
        raise APIError(
            "resource_not_found",
            f"This session has no resource {uri!r}: use a `uri` from GET .../resources/.",
            status=404,
        )
    liveness.touch_sync(session)
    result = proxy.read_resource(
        configuration=server.configuration, user_id=session.user_id, uri=parts[1], session=session.pk
    )
    return {**result, "uri": uri}
