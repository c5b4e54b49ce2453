"""Synchronous outbound HTTP to tenant-supplied or metadata-supplied URLs (OAuth providers).

Every request's URL passes agentapi.outbound.check_url() and the connection goes to the address
that passed (the network backend is pinned to it; TLS still verifies the name). Redirects are not
followed, proxies from the environment are ignored (they would carry the request past the pin),
and every request has a timeout.

The asynchronous twin for MCP sessions is in mcp/pool.py (_PinnedBackend); httpx2 has no parameter
for the network backend, so both replace the connection pool the transport builds with an equal one.
"""

import httpcore2
import httpx2
from django.conf import settings

from agentapi import outbound


class PinnedBackend(httpcore2.NetworkBackend):
    def __init__(self, checked: outbound.CheckedURL):
        self.checked = checked
        self.inner = httpcore2.SyncBackend()

    def connect_tcp(self, host, port, timeout=None, local_address=None, socket_options=None):
        if host.strip("[]").lower() != self.checked.host.strip("[]") or port != self.checked.port:
            raise httpcore2.ConnectError(f"refused: {host}:{port} is not the checked origin")
        error = None
        for address in self.checked.addresses:
            try:
                return self.inner.connect_tcp(str(address), port, timeout=timeout, socket_options=socket_options)
            except httpcore2.ConnectError as exc:
                error = exc
        raise error or httpcore2.ConnectError("no address to connect to")

    def sleep(self, seconds):
        self.inner.sleep(seconds)


def request(method: str, url: str, *, timeout: float | None = None, **kwargs) -> httpx2.Response:
    """One request to a checked, pinned URL. Raises OutboundURLRefused or httpx2.HTTPError."""
    checked = outbound.check_url(url)
    transport = httpx2.HTTPTransport(trust_env=False)
    transport._pool = httpcore2.ConnectionPool(
        ssl_context=httpx2.create_ssl_context(trust_env=False), network_backend=PinnedBackend(checked)
    )
    timeout = timeout or settings.OUTBOUND_TIMEOUT
    with httpx2.Client(transport=transport, timeout=timeout, follow_redirects=False, trust_env=False) as client:
        return client.request(method, url, **kwargs)
