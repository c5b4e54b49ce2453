"""Calls made on a caller's behalf to a configuration's server: tools, resources, prompts, tests.

Each function checks what the platform allows (the configuration is enabled, the tool is allowed
and not withheld), calls through the pool, audits the call (configuration, tool, outcome,
duration, request id; never argument values) in a transaction of its own, so a failed call is
recorded too, and measures it. Results pass MCP content blocks through as the server sent them.
"""

import time

from django.db import transaction

from agentapi import context as request_context
from agentapi.errors import APIError
from audit.services import audit_record
from mcp import catalogue, metrics, pool
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


def _require_enabled(configuration: MCPConfiguration) -> None:
    if not configuration.enabled:
        raise APIError(
            "configuration_disabled",
            "This server is disabled"
            + (f" after failed health checks: {configuration.last_error}" if configuration.last_error else "."),
            status=409,
        )


def _upstream_error(exc: pool.UpstreamError) -> APIError:
    return APIError(exc.code, str(exc), status=exc.status, retry_after=exc.retry_after)


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


def _run(configuration, user_id, method: str, operation, *, reads: bool, audit_action=None, audit_details=None):
    """Call through the pool; audit (when audit_action) and measure; translate failures."""
    started = time.perf_counter()
    outcome, error = "success", None
    try:
        return _call_with_fresh_credential(configuration, user_id, operation, reads=reads)
    except APIError as exc:
        outcome, error = "failure", exc
        raise
    except pool.UpstreamError as exc:
        outcome, error = "failure", exc
        raise _upstream_error(exc) from None
    finally:
        duration = time.perf_counter() - started
        label = str(configuration.pk)
        metrics.calls.labels(label, method, outcome).inc()
        metrics.latency.labels(label, method, outcome).observe(duration)
        if audit_action:
            details = {**(audit_details or {}), "duration_ms": round(duration * 1000, 1)}
            if error is not None:
                details["error"] = error.error_code if isinstance(error, APIError) else error.code
            with transaction.atomic():
                audit_record(
                    audit_action,
                    target=configuration,
                    organization_id=configuration.organization_id,
                    outcome=outcome,
                    details=details,
                )


def _deny(configuration: MCPConfiguration, tool: str, error: APIError):
    """Record a call the platform refused (not allowed, withheld), then raise the refusal."""
    with transaction.atomic():
        audit_record(
            "mcp.tool.call",
            target=configuration,
            organization_id=configuration.organization_id,
            outcome="denied",
            details={"tool": tool, "error": error.error_code},
        )
    raise error


def tool_call(*, configuration: MCPConfiguration, user_id: int, name: str, arguments: dict) -> dict:
    _require_enabled(configuration)
    if not configuration.tool_allowed(name):
        _deny(
            configuration,
            name,
            APIError("tool_not_allowed", f"The tool {name!r} is not allowed on this server.", status=403),
        )
    if catalogue.withheld(configuration, name):
        message = f"The tool {name!r} changed its definition and waits for an admin's approval."
        _deny(configuration, name, APIError("tool_pending_approval", message, status=409))
    started = time.perf_counter()
    details = {"tool": name}

    meta = _meta()

    async def operation(client):
        return await client.call_tool(name, arguments, meta=meta)

    result = _run(
        configuration,
        user_id,
        "tools/call",
        operation,
        reads=False,
        audit_action="mcp.tool.call",
        audit_details=details,
    )
    body = _dump(result)
    return {
        "content": body.get("content", []),
        "structured_content": body.get("structuredContent"),
        "is_error": bool(body.get("isError", False)),
        "configuration": configuration.pk,
        "duration_ms": round((time.perf_counter() - started) * 1000, 1),
    }


def list_tools(*, configuration: MCPConfiguration, user_id: int, refresh: bool = False) -> list[dict]:
    _require_enabled(configuration)
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
    _require_enabled(configuration)

    async def operation(client):
        return [_dump(resource) for resource in (await client.list_resources()).resources]

    return _run(configuration, user_id, "resources/list", operation, reads=True)


def read_resource(*, configuration: MCPConfiguration, user_id: int, uri: str) -> dict:
    _require_enabled(configuration)

    meta = _meta()

    async def operation(client):
        return _dump(await client.read_resource(uri, meta=meta))

    body = _run(
        configuration,
        user_id,
        "resources/read",
        operation,
        reads=True,
        audit_action="mcp.resource.read",
        audit_details={},
    )
    return {"contents": body.get("contents", []), "configuration": configuration.pk}


def list_prompts(*, configuration: MCPConfiguration, user_id: int) -> list[dict]:
    _require_enabled(configuration)

    async def operation(client):
        return [_dump(prompt) for prompt in (await client.list_prompts()).prompts]

    return _run(configuration, user_id, "prompts/list", operation, reads=True)


def get_prompt(*, configuration: MCPConfiguration, user_id: int, name: str, arguments: dict) -> dict:
    _require_enabled(configuration)

    meta = _meta()

    async def operation(client):
        return _dump(await client.get_prompt(name, arguments, meta=meta))

    body = _run(
        configuration,
        user_id,
        "prompts/get",
        operation,
        reads=True,
        audit_action="mcp.prompt.get",
        audit_details={"prompt": name},
    )
    return {
        "description": body.get("description"),
        "messages": body.get("messages", []),
        "configuration": configuration.pk,
    }


def test_connection(*, configuration: MCPConfiguration, user_id: int) -> dict:
    """Connect as the caller and list tools, bypassing the cache: ok, latency, tool count, server."""
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
