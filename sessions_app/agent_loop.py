"""The one module that knows pydantic-ai (pinned in requirements/base.in): a backend's model, and
the probe that sends it one tiny request. The agents' tool loop grows here (the agents issue);
nothing else in the platform imports pydantic-ai.

Every model's HTTP client is the platform's own pinned client (agentapi.http): the backend's URL
passed the outbound rules when it was saved and is checked again here, and the connection goes to
the checked addresses only; no proxy from the environment, no redirect. The API key is opened
here, handed to the provider and never logged, returned or put in an exception message.
"""

import time

import httpx2
from django.conf import settings

from agentapi import outbound
from agentapi.crypto import DecryptionError
from agentapi.errors import APIError
from agentapi.http import async_pinned_transport
from sessions_app.models import AgentBackend, AgentKind

PROBE_PROMPT = "Reply with the single word OK."


def _http_client(backend: AgentBackend, timeout: float) -> httpx2.AsyncClient:
    try:
        checked = outbound.check_url(backend.base_url)
    except outbound.OutboundURLRefused as exc:
        raise APIError(exc.code, str(exc), status=400, details={"base_url": [str(exc)]}) from None
    return httpx2.AsyncClient(
        transport=async_pinned_transport(checked), timeout=timeout, follow_redirects=False, trust_env=False
    )


def _api_key(backend: AgentBackend) -> str:
    try:
        return backend.api_key()
    except DecryptionError:
        raise APIError(
            "credential_unreadable", "The backend's stored API key cannot be decrypted; re-enter it.", status=409
        ) from None


def model_for(backend: AgentBackend, http_client: httpx2.AsyncClient):
    """The pydantic-ai model for an `openai` or `anthropic` backend."""
    if backend.kind == AgentKind.OPENAI:
        from pydantic_ai.models.openai import OpenAIChatModel
        from pydantic_ai.providers.openai import OpenAIProvider

        # Servers without keys (a local vLLM or Ollama) still get a placeholder: the SDK insists.
        provider = OpenAIProvider(
            base_url=backend.base_url, api_key=_api_key(backend) or "none", http_client=http_client
        )
        return OpenAIChatModel(backend.model, provider=provider)
    if backend.kind == AgentKind.ANTHROPIC:
        from pydantic_ai.models.anthropic import AnthropicModel
        from pydantic_ai.providers.anthropic import AnthropicProvider

        provider = AnthropicProvider(
            base_url=backend.base_url, api_key=_api_key(backend) or "none", http_client=http_client
        )
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
