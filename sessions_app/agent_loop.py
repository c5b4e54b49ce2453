"""The one module that knows pydantic-ai (pinned in requirements/base.in): a backend's model, the
probe that sends it one tiny request, and the tool loop of a run (`run_model`). Nothing else in the
platform imports pydantic-ai: the loop takes the conversation as plain dicts, the session's tools as
their listing and one `call_tool` coroutine (which goes through the platform's own proxy:
sessions_app.runs), and reports what happens to a `Sink`.

Every model's HTTP client is the platform's own pinned client (agentapi.http): the backend's URL
passed the outbound rules when it was saved and is checked again here, and the connection goes to
the checked addresses only; no proxy from the environment, no redirect. The API key is opened
here, handed to the provider and never logged, returned or put in an exception message.
"""

import asyncio
import json
import time
from dataclasses import dataclass
from typing import Any, Protocol

import httpx2
from django.conf import settings

from agentapi import outbound
from agentapi.crypto import DecryptionError
from agentapi.errors import APIError
from agentapi.http import async_pinned_transport
from sessions_app.models import AgentBackend, AgentKind

PROBE_PROMPT = "Reply with the single word OK."


class _Guarded(httpx2.AsyncBaseTransport):
    """Every request to a backend through its circuit breaker (agentapi.resilience: shared by every
    process through Redis): refused at once while the breaker is open; a 5xx answer or a failed
    connection counts against it. The model SDKs' own retries (connection errors, 429, 5xx, with
    backoff) stay on: asking a model again has no side effect, and each try passes the breaker."""

    def __init__(self, inner: httpx2.AsyncBaseTransport, breaker):
        self.inner, self.breaker = inner, breaker

    async def handle_async_request(self, request):
        await self.breaker.before_call()
        try:
            response = await self.inner.handle_async_request(request)
        except Exception:
            await self.breaker.failure()
            raise
        await (self.breaker.failure() if response.status_code >= 500 else self.breaker.success())
        return response

    async def aclose(self):
        await self.inner.aclose()


def _http_client(backend: AgentBackend, timeout: float, breaker=None) -> httpx2.AsyncClient:
    try:
        checked = outbound.check_url(backend.base_url)
    except outbound.OutboundURLRefused as exc:
        raise APIError(exc.code, str(exc), status=400, details={"base_url": [str(exc)]}) from None
    transport = async_pinned_transport(checked)
    if breaker is not None:
        transport = _Guarded(transport, breaker)
    return httpx2.AsyncClient(transport=transport, timeout=timeout, follow_redirects=False, trust_env=False)


# Each backend's model (its SDK client, the pinned HTTP client with its open connections, the
# breaker) and agent, kept per event loop while the backend's revision (its URL, model and key)
# stays: a run reuses them instead of building them and connecting again (the worker runs every
# run on one loop: mcp.pool's). Bounded; the oldest goes first.
_agents: dict[tuple, tuple] = {}
MAX_KEPT_AGENTS = 64


def _agent_for(backend: AgentBackend, key: str):
    from pydantic_ai import Agent

    loop = asyncio.get_running_loop()
    cache_key = (backend.pk, backend.revision, id(loop))
    found = _agents.get(cache_key)
    if found is not None and found[0] is loop:
        return found[2]
    # The backend's older revisions on this loop go, and the oldest entry when full.
    stale = [k for k in _agents if k[0] == backend.pk and k[2] == id(loop)]
    if len(_agents) - len(stale) >= MAX_KEPT_AGENTS:
        stale.append(next(iter(_agents)))
    for k in dict.fromkeys(stale):
        kept_loop, _, _, old_client = _agents.pop(k)
        if kept_loop is loop:
            loop.create_task(old_client.aclose())
        elif not kept_loop.is_closed():
            asyncio.run_coroutine_threadsafe(old_client.aclose(), kept_loop)
    client = _http_client(backend, settings.AGENT_REQUEST_TIMEOUT, breaker_for(backend, _redis(loop)))
    agent = Agent(model_for(backend, client, key))
    _agents[cache_key] = (loop, backend.revision, agent, client)
    return agent


_redises: dict[int, object] = {}


def _redis(loop):
    """A Redis client for breakers on this loop: the MCP pool's when this is its loop."""
    from agentapi.resilience import SharedRedis
    from mcp.pool import shared_redis

    found = shared_redis() or _redises.get(id(loop))
    if found is None:
        found = _redises[id(loop)] = SharedRedis(settings.REDIS_URL)
    return found


def breaker_for(backend: AgentBackend, redis):
    """The backend's circuit breaker (one per backend, whatever the organization's runs)."""
    from agentapi.resilience import Breaker

    return Breaker(
        f"agent:{backend.uuid}",
        redis,
        fail_max=settings.AGENT_BREAKER_FAIL_MAX,
        reset_timeout=settings.AGENT_BREAKER_RESET_SECONDS,
    )


def _breaker_open(exc: BaseException):
    """The BreakerOpen behind an exception (the SDKs wrap what the transport raised), or None."""
    from agentapi.resilience import BreakerOpen

    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, BreakerOpen):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def api_key(backend: AgentBackend) -> str:
    """The backend's key, opened (synchronous: it may read the organization's data key)."""
    return _api_key(backend)


def _api_key(backend: AgentBackend) -> str:
    try:
        return backend.api_key()
    except DecryptionError:
        raise APIError(
            "credential_unreadable", "The backend's stored API key cannot be decrypted; re-enter it.", status=409
        ) from None


def model_for(backend: AgentBackend, http_client: httpx2.AsyncClient, key: str | None = None):
    """The pydantic-ai model for an `openai` or `anthropic` backend (`key`: already opened)."""
    key = _api_key(backend) if key is None else key
    if backend.kind == AgentKind.OPENAI:
        from pydantic_ai.models.openai import OpenAIChatModel
        from pydantic_ai.providers.openai import OpenAIProvider

        # Servers without keys (a local vLLM or Ollama) still get a placeholder: the SDK insists.
        provider = OpenAIProvider(base_url=backend.base_url, api_key=key or "none", http_client=http_client)
        return OpenAIChatModel(backend.model, provider=provider)
    if backend.kind == AgentKind.ANTHROPIC:
        from pydantic_ai.models.anthropic import AnthropicModel
        from pydantic_ai.providers.anthropic import AnthropicProvider

        provider = AnthropicProvider(base_url=backend.base_url, api_key=key or "none", http_client=http_client)
        return AnthropicModel(backend.model, provider=provider)
    raise APIError("unsupported", f"A {backend.kind} backend is not a model.", status=400)


def _describe(exc: BaseException) -> str:
    """What went wrong, without anything the exception carries (it may quote the request)."""
    status = getattr(exc, "status_code", None) or getattr(getattr(exc, "response", None), "status_code", None)
    return f"{type(exc).__name__}" + (f" (HTTP {status})" if status else "")


async def _probe_agentapi(backend: AgentBackend, started: float) -> dict:
    """A coder/agentapi server answers GET /status with its agent's status."""
    async with _http_client(backend, settings.AGENT_PROBE_TIMEOUT) as client:
        try:
            response = await client.get(backend.base_url.rstrip("/") + "/status")
            response.raise_for_status()
            status = response.json().get("status")
        except Exception as exc:  # as in probe()
            return {"ok": False, "latency_ms": round((time.perf_counter() - started) * 1000, 1),
                    "error": {"code": "agent_unreachable", "message": _describe(exc)}}  # fmt: skip
    return {"ok": True, "latency_ms": round((time.perf_counter() - started) * 1000, 1), "reply": f"status: {status}"}


async def probe(backend: AgentBackend) -> dict:
    """Send the backend one tiny request: `{"ok", "latency_ms", "reply" | "error"}`."""
    from pydantic_ai import Agent

    started = time.perf_counter()
    if backend.kind == AgentKind.AGENTAPI:
        return await _probe_agentapi(backend, started)
    async with _http_client(backend, settings.AGENT_PROBE_TIMEOUT) as client:
        agent = Agent(model_for(backend, client))
        try:
            result = await agent.run(
                PROBE_PROMPT, model_settings={"max_tokens": 16}, timeout=settings.AGENT_PROBE_TIMEOUT
            )
        except Exception as exc:  # any failure of the model or its transport is the probe's answer
            return {"ok": False, "latency_ms": round((time.perf_counter() - started) * 1000, 1),
                    "error": {"code": "agent_unreachable", "message": _describe(exc)}}  # fmt: skip
    usage = result.usage
    return {
        "ok": True,
        "latency_ms": round((time.perf_counter() - started) * 1000, 1),
        "reply": str(result.output)[:200],
        "usage": {"input_tokens": usage.input_tokens or 0, "output_tokens": usage.output_tokens or 0},
    }


# -- the tool loop ------------------------------------------------------------------------------


class Sink(Protocol):
    """What a run reports, in order: text as it streams (a delta, or the whole so far), each model response once complete (before
    its tools run), each tool call and its result."""

    async def text(self, delta: str) -> None: ...

    async def set_text(self, text: str) -> None: ...

    async def response(self, text: str, tool_calls: list[dict], input_tokens: int, output_tokens: int) -> None: ...

    async def tool_call(self, call_id: str, name: str, arguments: dict) -> None: ...

    async def tool_result(self, call_id: str, name: str, content: str, is_error: bool) -> None: ...


class RunStopped(Exception):
    """The run ended early: `code` is `cancelled`, `max_steps`, `timed_out` or `agent_error`."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class Outcome:
    steps: int
    input_tokens: int
    output_tokens: int


def _toolset(tools: list[dict], call_tool, sink: Sink):
    """The session's tools as a pydantic-ai toolset whose calls go to `call_tool(name, arguments)
    -> (text, is_error)`: the platform's proxy, never the model library's own MCP client."""
    from pydantic_ai.tools import ToolDefinition
    from pydantic_ai.toolsets.abstract import AbstractToolset, ToolsetTool
    from pydantic_core import SchemaValidator, core_schema

    any_arguments = SchemaValidator(schema=core_schema.dict_schema())

    class SessionToolset(AbstractToolset):
        @property
        def id(self):
            return "session"

        async def get_tools(self, ctx):
            return {
                tool["name"]: ToolsetTool(
                    toolset=self,
                    tool_def=ToolDefinition(
                        name=tool["name"],
                        description=tool.get("description") or "",
                        parameters_json_schema=tool.get("input_schema") or {"type": "object", "properties": {}},
                    ),
                    max_retries=1,
                    args_validator=any_arguments,
                )
                for tool in tools
            }

        async def call_tool(self, name: str, tool_args: dict[str, Any], ctx, tool) -> Any:
            call_id = ctx.tool_call_id or ""
            await sink.tool_call(call_id, name, tool_args)
            text, is_error = await call_tool(name, tool_args)
            await sink.tool_result(call_id, name, text, is_error)
            return text

    return SessionToolset()


def _history(messages: list[dict]) -> list:
    """The stored conversation as pydantic-ai messages. A tool call whose result was never stored
    (its run failed or was cancelled first) gets one saying so: models refuse a call left open."""
    from pydantic_ai.messages import ModelRequest, ModelResponse, TextPart, ToolCallPart, ToolReturnPart, UserPromptPart

    history: list = []
    open_calls: dict[str, str] = {}

    def close_open_calls():
        if open_calls:
            parts = [
                ToolReturnPart(tool_name=name, content="Not run: the run ended first.", tool_call_id=call_id)
                for call_id, name in open_calls.items()
            ]
            open_calls.clear()
            if (
                history
                and isinstance(history[-1], ModelRequest)
                and history[-1].parts
                and isinstance(history[-1].parts[0], ToolReturnPart)
            ):
                history[-1].parts.extend(parts)
            else:
                history.append(ModelRequest(parts=parts))

    for message in messages:
        role = message["role"]
        if role == "tool":
            if open_calls.pop(message["tool_call_id"], None) is None:
                continue  # a result without its call: nothing the model can place
            part = ToolReturnPart(
                tool_name=message["tool_name"], content=message["content"], tool_call_id=message["tool_call_id"]
            )
            last = history[-1] if history else None
            if isinstance(last, ModelRequest) and last.parts and isinstance(last.parts[0], ToolReturnPart):
                last.parts.append(part)
            else:
                history.append(ModelRequest(parts=[part]))
            continue
        close_open_calls()
        if role == "user":
            history.append(ModelRequest(parts=[UserPromptPart(content=message["content"])]))
        else:
            parts = [TextPart(content=message["content"])] if message["content"] else []
            for call in message.get("tool_calls") or []:
                parts.append(ToolCallPart(tool_name=call["name"], args=call["arguments"], tool_call_id=call["id"]))
                open_calls[call["id"]] = call["name"]
            if parts:
                history.append(ModelResponse(parts=parts))
    close_open_calls()
    return history


def _model_settings(backend: AgentBackend) -> dict:
    found = {}
    if backend.setting("temperature") is not None:
        found["temperature"] = backend.setting("temperature")
    if backend.setting("max_output_tokens") is not None:
        found["max_tokens"] = backend.setting("max_output_tokens")
    return found


async def run_model(
    backend: AgentBackend, *, key: str, instructions: str, history: list[dict], prompt: str, tools: list[dict], call_tool,
    sink: Sink, cancel,
) -> Outcome:  # fmt: skip
    """One run of an `openai` or `anthropic` backend's tool loop: the model streams, asks for tools,
    gets their results, until it answers or a limit stops it (RunStopped). `cancel` is the token
    from `cancellation_token()`. Every model request passes the backend's circuit breaker."""
    from pydantic_ai import Agent, UsageLimits
    from pydantic_ai.exceptions import RunCancelled, RunTimedOut, UsageLimitExceeded
    from pydantic_ai.messages import PartDeltaEvent, PartStartEvent, TextPart, TextPartDelta, ToolCallPart

    steps = input_tokens = output_tokens = 0
    agent = _agent_for(backend, key)
    try:
        async with agent.iter(
            prompt,
            instructions=instructions or None,
            message_history=_history(history),
            toolsets=[_toolset(tools, call_tool, sink)] if tools else None,
            model_settings=_model_settings(backend) or None,
            usage_limits=UsageLimits(request_limit=backend.setting("max_steps")),
            timeout=backend.setting("run_timeout_seconds"),
            cancellation_token=cancel,
        ) as run:
            async for node in run:
                if Agent.is_model_request_node(node):
                    async with node.stream(run.ctx) as stream:
                        async for event in stream:
                            if isinstance(event, PartStartEvent) and isinstance(event.part, TextPart):
                                if event.part.content:
                                    await sink.text(event.part.content)
                            elif isinstance(event, PartDeltaEvent) and isinstance(event.delta, TextPartDelta):
                                if event.delta.content_delta:
                                    await sink.text(event.delta.content_delta)
                elif Agent.is_call_tools_node(node):
                    response = node.model_response
                    steps += 1
                    usage = response.usage
                    input_tokens += usage.input_tokens or 0
                    output_tokens += usage.output_tokens or 0
                    text = "".join(part.content for part in response.parts if isinstance(part, TextPart))
                    calls = [
                        {"id": part.tool_call_id, "name": part.tool_name, "arguments": part.args_as_dict()}
                        for part in response.parts
                        if isinstance(part, ToolCallPart)
                    ]
                    await sink.response(text, calls, usage.input_tokens or 0, usage.output_tokens or 0)
    except RunTimedOut:
        raise RunStopped("timed_out", "The run took longer than its backend's run_timeout_seconds.") from None
    except RunCancelled:
        raise RunStopped("cancelled", "The run was cancelled.") from None
    except UsageLimitExceeded:
        raise RunStopped("max_steps", "The run reached its backend's max_steps.") from None
    except RunStopped:
        raise
    except Exception as exc:  # the model or its transport failed: the run's error, never its text
        opened = _breaker_open(exc)
        if opened is not None:
            raise RunStopped(
                "agent_unavailable",
                f"The agent backend is failing: its circuit breaker is open (retry in {opened.retry_after} s).",
            ) from None
        raise RunStopped("agent_error", f"The agent backend failed: {_describe(exc)}.") from None
    return Outcome(steps, input_tokens, output_tokens)


def cancellation_token():
    from pydantic_ai import CancellationToken

    return CancellationToken()


def tool_text(result: dict) -> str:
    """A tool result (the proxy's `content`, `structured_content`) as the text a model reads."""
    parts = []
    for item in result.get("content") or []:
        if item.get("type") == "text":
            parts.append(item.get("text", ""))
        else:
            parts.append(json.dumps(item, separators=(",", ":"))[:2000])
    if not parts and result.get("structured_content") is not None:
        parts.append(json.dumps(result["structured_content"], separators=(",", ":")))
    return "\n".join(parts)


# -- a coder/agentapi server --------------------------------------------------------------------


def _sse_events(lines):
    """(event, data) pairs from Server-Sent Event lines (an async iterator)."""

    async def parse():
        event, data = None, []
        async for line in lines:
            if line == "":
                if data:
                    try:
                        yield event, json.loads("\n".join(data))
                    except ValueError:
                        pass
                event, data = None, []
            elif line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].lstrip())

    return parse()


# A terminal found running when a message is to be posted may be finishing what it was doing (an
# Escape sent by a cancel stops it within moments): it gets this long to become stable.
BUSY_GRACE_SECONDS = 10.0


async def run_agentapi(
    backend: AgentBackend, *, key: str, prompt: str, sink: Sink, cancel, local_url: str | None = None
) -> Outcome:
    """One run of an `agentapi` backend: the message is posted to the coder/agentapi server (it
    must be `stable`), and its events followed until the agent is stable again; the agent's reply
    streams to the sink as it grows. A cancel sends the terminal an Escape (agentapi's `raw`
    message), which stops the agents it fronts. The terminal agent uses the platform's tools at
    the session's MCP endpoint, as its own MCP configuration tells it.

    `local_url`: the session's own terminal agent, started by the platform on this host's loopback
    (sessions_app.terminals): no outbound rules (the platform chose the address), no key (the
    process has it), no breaker shared with other sessions (one session's process failing says
    nothing of another's)."""
    from agentapi.resilience import SharedRedis

    base = (local_url or backend.base_url).rstrip("/")
    headers = {"Authorization": f"Bearer {key}"} if key and local_url is None else {}
    redis = SharedRedis(settings.REDIS_URL)
    timeout = httpx2.Timeout(settings.AGENT_REQUEST_TIMEOUT, read=None)  # the events stream waits
    if local_url is None:
        opened = _http_client(backend, settings.AGENT_REQUEST_TIMEOUT, breaker_for(backend, redis))
    else:
        opened = httpx2.AsyncClient(timeout=settings.AGENT_REQUEST_TIMEOUT, follow_redirects=False, trust_env=False)
    try:
        async with opened as client:

            async def follow() -> str:
                async with client.stream("GET", f"{base}/events", headers=headers, timeout=timeout) as stream:
                    if stream.status_code != 200:
                        raise RunStopped("agent_error", f"The agentapi server answered HTTP {stream.status_code}.")
                    known, posted, running, reply = -1, False, False, ""
                    async for event, data in _sse_events(stream.aiter_lines()):
                        if event == "message_update" and not posted:
                            known = max(known, int(data.get("id", -1)))
                        elif event == "message_update" and data.get("role") == "agent" and data.get("id", -1) > known:
                            reply = data.get("message", "")
                            await sink.set_text(reply)
                        elif event == "status_change" and not posted:
                            if data.get("status") != "stable":
                                busy["since"] = busy["since"] or time.monotonic()
                                continue  # winding down (a cancelled run's Escape, say): wait for stable
                            busy["since"] = None
                            answer = await client.post(f"{base}/message", headers=headers,
                                                       json={"content": prompt, "type": "user"})  # fmt: skip
                            if answer.status_code != 200 or not answer.json().get("ok"):
                                raise RunStopped("agent_error", f"The agentapi server refused the message "
                                                 f"(HTTP {answer.status_code}).")  # fmt: skip
                            posted = True
                        elif event == "status_change":
                            running = running or data.get("status") == "running"
                            if running and data.get("status") == "stable":
                                return reply
                raise RunStopped("agent_error", "The agentapi server ended its event stream mid-run.")

            busy: dict = {"since": None}  # when the terminal was found running before the message was posted
            following = asyncio.ensure_future(follow())
            deadline = time.monotonic() + backend.setting("run_timeout_seconds")
            while not following.done():
                await asyncio.wait([following], timeout=0.2)
                if busy["since"] and time.monotonic() - busy["since"] > BUSY_GRACE_SECONDS and not following.done():
                    following.cancel()
                    raise RunStopped("agent_busy", "The terminal agent is busy with something else.")
                if time.monotonic() > deadline and not following.done():
                    following.cancel()
                    raise RunStopped("timed_out", "The run took longer than its backend's run_timeout_seconds.")
                if cancel.cancelled and not following.done():
                    following.cancel()
                    await client.post(f"{base}/message", headers=headers, json={"content": "\x1b", "type": "raw"})
                    raise RunStopped("cancelled", "The run was cancelled.")
            try:
                reply = following.result()
            except RunStopped:
                raise
            except Exception as exc:
                opened = _breaker_open(exc)
                if opened is not None:
                    raise RunStopped("agent_unavailable", "The agent backend is failing: its circuit breaker is "
                                     f"open (retry in {opened.retry_after} s).") from None  # fmt: skip
                raise RunStopped("agent_error", f"The agent backend failed: {_describe(exc)}.") from None
    finally:
        await redis.close()
    await sink.response(reply, [], 0, 0)
    return Outcome(1, 0, 0)
