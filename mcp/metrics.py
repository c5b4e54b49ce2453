"""Prometheus metrics of the MCP path (served at /metrics with the rest, see agentapi.metrics).

Labels carry configuration ids and outcomes, never tool arguments. Gauges sum across processes
(multiprocess mode "livesum"), so the pool size is the platform's, not one worker's.
"""

from prometheus_client import Counter, Gauge, Histogram

calls = Counter("agentapi_mcp_calls_total", "MCP calls made upstream.", ["configuration", "method", "outcome"])
latency = Histogram(
    "agentapi_mcp_call_duration_seconds",
    "Time an MCP call took, guards included.",
    ["configuration", "method", "outcome"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
handshakes = Counter("agentapi_mcp_handshakes_total", "Upstream MCP sessions established.", ["configuration"])
reconnects = Counter("agentapi_mcp_reconnects_total", "Dropped sessions re-established for a call.", ["configuration"])
pool_size = Gauge("agentapi_mcp_pool_sessions", "Open upstream MCP sessions.", multiprocess_mode="livesum")
breaker_state = Gauge(
    "agentapi_mcp_breaker_open",
    "1 while a configuration's breaker is open.",
    ["configuration"],
    multiprocess_mode="max",
)
catalogue = Counter("agentapi_mcp_catalogue_requests_total", "Tool catalogue reads, by cache result.", ["result"])


def breaker_changed(name: str, state: str) -> None:
    breaker_state.labels(name.rsplit(":", 1)[-1]).set(1 if state == "open" else 0)
