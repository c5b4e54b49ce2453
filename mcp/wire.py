"""Tool calls on the 2026-07-28 Streamable HTTP wire, sent without the SDK's session machinery.

Why: a tool call is the data plane's hot path, and on this machine the SDK's client spends about
as much CPU on its own machinery (a dispatcher task and memory streams per request, a task per
POST, pydantic validation of the request and of the result) as on the HTTP request itself
(README, "Where the time goes"). On the 2026-07-28 wire a request is one stateless POST whose
answer comes back on that POST (JSON, or an SSE stream ending with the response), so the call
needs no session state beyond what the handshake settled. Everything else (the handshake, listing,
resources, prompts, older protocol versions, SSE and stdio transports) stays with the SDK.

What is the SDK's, reused rather than copied: the request's `_meta` and headers come from the
session's own stamp (`MCP-Protocol-Version`, `Mcp-Method`, `Mcp-Name`, `Mcp-Param-*`, the
client's info and capabilities); an SSE answer is read with httpx2's event parser, the one the
SDK reads with. Both are private names of the pinned versions (requirements/base.txt):
tests/mcp/test_wire.py sends the same call both ways and compares what the server received, so an
upgrade that changes them fails there, not in production.

The HTTP client is aiohttp, pinned to the checked addresses like every outbound connection
(agentapi.http.pinned_session): the same POST costs it a quarter of httpx2's CPU (0.25 against
1.0-1.2 ms, measured against one trivial server in one run). A redirect (which the SDK follows
within the origin) and a server that answers with a session id are left to the SDK: the call did
not run, so it is sent again that way (`NotForTheWire`).

Errors are raised as the SDK raises them (MCPError with the JSON-RPC error; connection errors),
so the pool classifies both paths alike (reached or not, retried or not, breaker).
"""

import codecs
import itertools
import json

import aiohttp
import httpx2
from django.conf import settings
from httpx2._sse import _SSEParser
from mcp_types import INTERNAL_ERROR, INVALID_REQUEST, METHOD_NOT_FOUND
from mcp_types.jsonrpc import CONNECTION_CLOSED
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

from mcp import Client
from mcp.shared.exceptions import MCPError

# The answer's JSON-RPC envelope and `_meta` around the result the platform passes on.
ENVELOPE_ALLOWANCE = 64 * 1024

_ids = itertools.count(1_000_000_000)  # apart from the SDK's own ids on the same session


class ResultTooLarge(Exception):
    """The server's answer is larger than MCP_MAX_RESULT_BYTES allows (it was not read whole)."""

    def __init__(self, size: int):
        super().__init__(size)
        self.size = size


class NotForTheWire(Exception):
    """The server answered in a way only the SDK's client handles (a redirect); nothing ran."""


class Refused(MCPError):
    """HTTP 401: the server refused the credential."""


def applies(client: Client, session: aiohttp.ClientSession | None) -> bool:
    """Whether the pooled session speaks the stateless wire over Streamable HTTP."""
    return session is not None and client.protocol_version in MODERN_PROTOCOL_VERSIONS


async def call_tool(client: Client, session: aiohttp.ClientSession, url: str, name: str, arguments: dict, meta) -> dict:
    """The tool's result as the server sent it (a JSON object). Raises MCPError (Refused on a
    401), NotForTheWire, ResultTooLarge or aiohttp's connection errors."""
    request_id = next(_ids)
    params = {"name": name, "arguments": arguments}
    if meta:
        params["_meta"] = dict(meta)
    data = {"method": "tools/call", "params": params}
    options: dict = {}
    client.session._stamp(data, options)
    headers = {"accept": "application/json, text/event-stream", "content-type": "application/json"}
    headers.update(options.get("headers", {}))
    body = json.dumps({"jsonrpc": "2.0", "id": request_id, **data}, separators=(",", ":")).encode()
    async with session.post(url, data=body, headers=headers, allow_redirects=False) as response:
        if response.headers.get("mcp-session-id") or response.status in (301, 302, 303, 307, 308):
            raise NotForTheWire()
        kind = response.content_type
        if not 200 <= response.status < 300:
            raise await _http_error(response, kind)
        if kind == "application/json":
            return _result(json.loads(await _read(response)), request_id)
        if kind == "text/event-stream":
            return await _from_events(response, request_id)
        raise MCPError(INVALID_REQUEST, f"Unexpected content type: {kind or 'none'}")


def _limit() -> int:
    return settings.MCP_MAX_RESULT_BYTES + ENVELOPE_ALLOWANCE


async def _read(response: aiohttp.ClientResponse) -> bytes:
    limit = _limit()
    if response.content_length is not None and response.content_length > limit:
        raise ResultTooLarge(response.content_length)
    chunks, size = [], 0
    async for chunk in response.content.iter_any():
        size += len(chunk)
        if size > limit:
            raise ResultTooLarge(size)
        chunks.append(chunk)
    return b"".join(chunks)


async def _from_events(response: aiohttp.ClientResponse, request_id: int) -> dict:
    """The response in an SSE answer; the notifications before it (progress, logs) are dropped,
    as the SDK's client drops them without a handler."""
    async for event in _events(response):
        message = _message(event.data)
        if message is None:
            continue
        if "method" in message:
            # A request from the server in the middle of a call (sampling, elicitation): the
            # platform has no user to put it to, as the SDK's client without callbacks has not.
            raise MCPError(INVALID_REQUEST, f"The server asked the client for {message['method']!r} mid-call.")
        if message.get("id") == request_id:
            return _result(message, request_id)
    raise MCPError(CONNECTION_CLOSED, "SSE stream ended without a response")


async def _events(response: aiohttp.ClientResponse):
    """The answer's events; one larger than the result cap is ResultTooLarge (the parser stops
    buffering it there)."""
    parser, decoder = _SSEParser(_limit()), codecs.getincrementaldecoder("utf-8")(errors="replace")
    size = 0
    try:
        async for chunk in response.content.iter_any():
            size += len(chunk)
            for event in parser.decode(decoder.decode(chunk)):
                yield event
        for event in parser.flush():
            yield event
    except httpx2.SSEError:
        raise ResultTooLarge(size) from None


def _message(data: str) -> dict | None:
    """A JSON-RPC message that needs an answer from us (a response, or a request); None for a
    notification or an empty event."""
    if not data:
        return None
    message = json.loads(data)
    if not isinstance(message, dict) or "id" not in message:
        return None
    return message


def _result(message, request_id: int) -> dict:
    if not isinstance(message, dict) or message.get("id") != request_id:
        raise MCPError(INTERNAL_ERROR, "The server's answer is not a JSON-RPC response to the call.")
    if "error" in message:
        error = message["error"] if isinstance(message["error"], dict) else {}
        code = error.get("code") if isinstance(error.get("code"), int) else INTERNAL_ERROR
        raise MCPError(code, str(error.get("message", "error"))[:500])
    result = message.get("result")
    if not isinstance(result, dict) or not isinstance(result.get("content", []), list):
        raise MCPError(INTERNAL_ERROR, "The server's result is not a tool result.")
    if result.get("resultType", "complete") != "complete":
        # input_required: the tool asks its caller for more input, which a REST call cannot give.
        raise MCPError(INVALID_REQUEST, f"The tool asked for input ({result.get('resultType')}); none can be given.")
    return result


async def _http_error(response: aiohttp.ClientResponse, kind: str) -> MCPError:
    """An error status as the SDK reports it: the JSON-RPC error in the body, else by status."""
    if response.status == 401:
        return Refused(INVALID_REQUEST, "The server refused the credential (401).")
    if kind == "application/json":
        try:
            message = json.loads(await _read(response))
            error = message.get("error") if isinstance(message, dict) else None
            if isinstance(error, dict) and isinstance(error.get("code"), int):
                return MCPError(error["code"], str(error.get("message", "error"))[:500])
        except (ValueError, ResultTooLarge, aiohttp.ClientPayloadError):
            pass
    if response.status == 404:
        return MCPError(METHOD_NOT_FOUND, "Not Found")
    return MCPError(INTERNAL_ERROR, "Server returned an error response")
