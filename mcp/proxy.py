"""Calls made on a caller's behalf to a configuration's server: tools, resources, prompts, tests.

Each function checks what the platform allows (the configuration is enabled, the tool is allowed
and not withheld), calls through the pool, audits the call (configuration, tool, outcome,
duration, request id; never argument values) with one insert of its own, so a failed call is
recorded too, and measures it. Results pass MCP content blocks through as the server sent them.

The steps (`refusal`, the `*_operation` builders, `outcome_of`, the result shapes) are shared with
the data plane (mcp.dataplane), which runs the same calls natively async; the synchronous
functions here serve the management plane (listing, testing, health checks) and the embedded
profile.
"""

import json
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass

from django.conf import settings

from agentapi import context as request_context
from agentapi.errors import APIError
from audit.services import audit_record
from mcp import catalogue, metrics, pool, stdio
from mcp.credentials import target_for
from mcp.models import AuthType, MCPConfiguration
from oauth import services as oauth_services

REQUEST_ID_META = "io.agentapi/request-id"


def _meta() -> dict | None:
    """The request id, carried to the server in the request's `_meta` (MCP's extension point)."""
    request_id = request_context.current_request_id()
    return {REQUEST_ID_META: request_id} if request_id else None


def _dump(result) -> dict:
    return result.model_dump(mode="json", by_alias=True, exclude_none=True)


def require_enabled(configuration: MCPConfiguration) -> None:
    if not configuration.enabled:
        raise APIError(
            "configuration_disabled",
            "This server is disabled"
            + (f" after failed health checks: {configuration.last_error}" if configuration.last_error else "."),
            status=409,
        )


def _call_with_fresh_credential(configuration, user_id, operation, *, reads: bool):
    """One call; when the server refuses a user's OAuth token (401), the token is refreshed once
    and the call made again with the new one (it never ran: the server refused it at the door)."""
    try:
        return pool.call(target_for(configuration, user_id), operation, reads=reads)
    except pool.UpstreamUnauthorized:
        if configuration.auth_type != AuthType.OAUTH or configuration.oauth_provider is None:
            raise
    token = oauth_services.renew_after_refusal(user_id=user_id, provider=configuration.oauth_provider)
    try:
        return pool.call(target_for(configuration, user_id), operation, reads=reads)
    except pool.UpstreamUnauthorized:
        raise oauth_services.needs_reauthorization(token, "the server refused the refreshed token") from None


def outcome_of(configuration, method: str, started: float, error, audit_action=None, audit_details=None):
    """Measure a finished call; return its audit record (audit_record's arguments) when it is
    audited, else None. `error` is what it failed with (APIError or UpstreamError), or None."""
    outcome = "success" if error is None else "failure"
    duration = time.perf_counter() - started
    label = str(configuration.pk)
    metrics.calls.labels(label, method, outcome).inc()
    metrics.latency.labels(label, method, outcome).observe(duration)
    if not audit_action:
        return None
    details = {**(audit_details or {}), "duration_ms": round(duration * 1000, 1)}
    if error is not None:
        details["error"] = error.error_code if isinstance(error, APIError) else error.code
    return {
        "action": audit_action,
        "target": configuration,
        "organization_id": configuration.organization_id,
        "outcome": outcome,
        "details": details,
    }


def upstream_error(exc: pool.UpstreamError) -> APIError:
    return APIError(exc.code, str(exc), status=exc.status, retry_after=exc.retry_after)


def _run(configuration, user_id, method: str, operation, *, reads: bool, plan: "CallPlan | None" = None):
    """Call through the pool, measure, translate failures. With a plan: shape the result, check
    its size, and audit the call whatever happens."""
    started = time.perf_counter()
    error = None
    try:
        result = _call_with_fresh_credential(configuration, user_id, operation, reads=reads)
        return checked_size(plan.shape(result)) if plan is not None else result
    except APIError as exc:
        error = exc
        raise
    except pool.UpstreamError as exc:
        error = exc
        raise upstream_error(exc) from None
    finally:
        if plan is None:
            outcome_of(configuration, method, started, error)
        else:
            event = outcome_of(configuration, method, started, error, plan.audit_action, plan.audit_details)
            audit_record(event.pop("action"), **event)


def tool_refusal(configuration: MCPConfiguration, name: str, *, withheld: bool) -> APIError | None:
    """Why the platform refuses to call this tool (not allowed, withheld), or None."""
    if not configuration.tool_allowed(name):
        return APIError("tool_not_allowed", f"The tool {name!r} is not allowed on this server.", status=403)
    if withheld:
        message = f"The tool {name!r} changed its definition and waits for an admin's approval."
        return APIError("tool_pending_approval", message, status=409)
    return None


def _about(session, **details) -> dict:
    """An audit record's details; a call made through an agent session names it."""
    return {**details, "session": str(session)} if session is not None else details


def denial_event(configuration: MCPConfiguration, tool: str, error: APIError, session=None) -> dict:
    """The audit record of a call the platform refused: audit_record's arguments."""
    return {
        "action": "mcp.tool.call",
        "target": configuration,
        "organization_id": configuration.organization_id,
        "outcome": "denied",
        "details": _about(session, tool=tool, error=error.error_code),
    }


@dataclass(frozen=True)
class CallPlan:
    """One audited call, as both planes make it: what to send, how to guard, record and shape it."""

    method: str  # the MCP method, for metrics
    operation: Callable  # async operation(client)
    reads: bool  # retried when it fails (it changes nothing)
    audit_action: str
    audit_details: dict
    shape: Callable  # shape(result) -> the response body


def plan_tool_call(configuration: MCPConfiguration, name: str, arguments: dict, session=None) -> CallPlan:
    meta = _meta()
    started = time.perf_counter()

    async def operation(client):
        return await client.call_tool(name, arguments, meta=meta)

    def shape(body: dict) -> dict:  # Upstream.call_tool answers the result's JSON
        return {
            "content": body.get("content", []),
            "structured_content": body.get("structuredContent"),
            "is_error": bool(body.get("isError", False)),
            "configuration": configuration.pk,
            "duration_ms": round((time.perf_counter() - started) * 1000, 1),
        }

    return CallPlan("tools/call", operation, False, "mcp.tool.call", _about(session, tool=name), shape)


def plan_resource_read(configuration: MCPConfiguration, uri: str, session=None) -> CallPlan:
    meta = _meta()

    async def operation(client):
        return await client.read_resource(uri, meta=meta)

    def shape(result) -> dict:
        return {"contents": _dump(result).get("contents", []), "configuration": configuration.pk}

    return CallPlan("resources/read", operation, True, "mcp.resource.read", _about(session), shape)


def plan_prompt_get(configuration: MCPConfiguration, name: str, arguments: dict, session=None) -> CallPlan:
    meta = _meta()

    async def operation(client):
        return await client.get_prompt(name, arguments, meta=meta)

    def shape(result) -> dict:
        body = _dump(result)
        return {
            "description": body.get("description"),
            "messages": body.get("messages", []),
            "configuration": configuration.pk,
        }

    return CallPlan("prompts/get", operation, True, "mcp.prompt.get", _about(session, prompt=name), shape)


def checked_size(body: dict) -> dict:
    """The shaped result, unless it is larger than MCP_MAX_RESULT_BYTES (then a 502)."""
    size = len(json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode())
    if size > settings.MCP_MAX_RESULT_BYTES:
        raise upstream_error(pool.UpstreamTooLarge(size))
    return body


def _run_plan(configuration, user_id, plan: CallPlan) -> dict:
    return _run(configuration, user_id, plan.method, plan.operation, reads=plan.reads, plan=plan)


def tool_call(*, configuration: MCPConfiguration, user_id: int, name: str, arguments: dict, session=None) -> dict:
    """Call a tool as `user_id`; `session`, when the call comes through an agent session, is
    named in its audit record."""
    require_enabled(configuration)
    refusal = tool_refusal(configuration, name, withheld=catalogue.withheld(configuration, name))
    if refusal is not None:
        event = denial_event(configuration, name, refusal, session)
        audit_record(event.pop("action"), **event)
        raise refusal
    return _run_plan(configuration, user_id, plan_tool_call(configuration, name, arguments, session))


def list_tools(*, configuration: MCPConfiguration, user_id: int, refresh: bool = False) -> list[dict]:
    require_enabled(configuration)
    return catalogue.tools(configuration, user_id, refresh=refresh)


def fetch_tools(configuration: MCPConfiguration, user_id: int) -> list[dict]:
    """Every tool the server lists (all pages), as MCP Tool objects in JSON."""

    async def operation(client):
        tools, cursor = [], None
        for _ in range(100):  # a server that pages forever cannot hang the call
            page = await client.list_tools(cursor=cursor)
            tools += [_dump(tool) for tool in page.tools]
            cursor = page.next_cursor
            if not cursor:
                break
        return tools

    return _run(configuration, user_id, "tools/list", operation, reads=True)


def list_resources(*, configuration: MCPConfiguration, user_id: int) -> list[dict]:
    require_enabled(configuration)

    async def operation(client):
        return [_dump(resource) for resource in (await client.list_resources()).resources]

    return _run(configuration, user_id, "resources/list", operation, reads=True)


def read_resource(*, configuration: MCPConfiguration, user_id: int, uri: str, session=None) -> dict:
    require_enabled(configuration)
    return _run_plan(configuration, user_id, plan_resource_read(configuration, uri, session))


def list_prompts(*, configuration: MCPConfiguration, user_id: int) -> list[dict]:
    require_enabled(configuration)

    async def operation(client):
        return [_dump(prompt) for prompt in (await client.list_prompts()).prompts]

    return _run(configuration, user_id, "prompts/list", operation, reads=True)


def get_prompt(*, configuration: MCPConfiguration, user_id: int, name: str, arguments: dict, session=None) -> dict:
    require_enabled(configuration)
    return _run_plan(configuration, user_id, plan_prompt_get(configuration, name, arguments, session))


def test_connection(*, configuration: MCPConfiguration, user_id: int) -> dict:
    """Connect as the caller and list tools, bypassing the cache: ok, latency, tool count, server.
    A server that runs in a session's workspace is tried in an empty one of its own, removed after
    (the pool then ends its process: mcp.pool.Pool.close_ended_workspaces)."""
    template = configuration.stdio_template if configuration.transport == "stdio" else None
    if template is not None and stdio.uses_workspace(template) and stdio.current_workspace() is None:
        with tempfile.TemporaryDirectory(prefix="mcp-test-workspace-") as workspace, stdio.in_workspace(workspace):
            return test_connection(configuration=configuration, user_id=user_id)
    started = time.perf_counter()

    async def operation(client):
        tools = await client.list_tools()
        info = client.server_info
        return len(tools.tools), (_dump(info) if info else None), client.protocol_version

    try:
        count, info, version = _run(configuration, user_id, "test", operation, reads=False)
    except APIError as exc:
        if exc.status_code >= 500 or exc.error_code == "outbound_url_refused":
            error = {"code": exc.error_code, "message": str(exc.detail)}
            return {"ok": False, "latency_ms": round((time.perf_counter() - started) * 1000, 1), "error": error}
        raise
    return {
        "ok": True,
        "latency_ms": round((time.perf_counter() - started) * 1000, 1),
        "tool_count": count,
        "server_info": info,
        "protocol_version": version,
    }
