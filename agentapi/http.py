"""Outbound HTTP to tenant-supplied or metadata-supplied URLs, pinned to the checked address.

Every request's URL passes agentapi.outbound.check_url() and the connection goes to an address
that passed: the network backend refuses any other host or port and connects to the checked
addresses only, so a second DNS answer (rebinding) cannot send the request elsewhere; TLS still
verifies the name. Redirects are not followed and proxies from the environment are ignored (they
would carry the request past the pin). `request()` serves synchronous callers (OAuth providers);
`async_pinned_transport()` serves the MCP pool's sessions; `pinned_session()` their tool calls on
the stateless wire (mcp.wire), with aiohttp.

httpx2 has no parameter for the network backend, so the connection pool each transport builds is
replaced by an equal one that connects through the pinned backend. aiohttp takes a resolver: the
pinned one answers the checked addresses for the checked origin and nothing for any other.
"""

import functools
import socket
import ssl

import aiohttp
import httpcore2
import httpx2
from django.conf import settings

from agentapi import outbound


def _checked_addresses(checked: outbound.CheckedURL, host: str, port: int) -> tuple:
    if host.strip("[]").lower() != checked.host.strip("[]") or port != checked.port:
        raise httpcore2.ConnectError(f"refused: {host}:{port} is not the checked origin")
    if not checked.addresses:
        raise httpcore2.ConnectError("no address to connect to")
    return checked.addresses


class PinnedBackend(httpcore2.NetworkBackend):
    def __init__(self, checked: outbound.CheckedURL):
        self.checked = checked
        self.inner = httpcore2.SyncBackend()

    def connect_tcp(self, host, port, timeout=None, local_address=None, socket_options=None):
        error = None
        for address in _checked_addresses(self.checked, host, port):
            try:
                return self.inner.connect_tcp(str(address), port, timeout=timeout, socket_options=socket_options)
            except httpcore2.ConnectError as exc:
                error = exc
        raise error

    def sleep(self, seconds):
        self.inner.sleep(seconds)


class AsyncPinnedBackend(httpcore2.AsyncNetworkBackend):
    def __init__(self, checked: outbound.CheckedURL):
        self.checked = checked
        self.inner = httpcore2.AnyIOBackend()

    async def connect_tcp(self, host, port, timeout=None, local_address=None, socket_options=None):
        error = None
        for address in _checked_addresses(self.checked, host, port):
            try:
                return await self.inner.connect_tcp(str(address), port, timeout=timeout, socket_options=socket_options)
            except httpcore2.ConnectError as exc:
                error = exc
        raise error

    async def sleep(self, seconds):
        await self.inner.sleep(seconds)


class PinnedResolver(aiohttp.abc.AbstractResolver):
    def __init__(self, checked: outbound.CheckedURL):
        self.checked = checked

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET) -> list:
        try:
            addresses = _checked_addresses(self.checked, host, port)
        except httpcore2.ConnectError as exc:
            raise OSError(str(exc)) from None
        return [
            {
                "hostname": host,
                "host": str(address),
                "port": port,
                "family": socket.AF_INET6 if address.version == 6 else socket.AF_INET,
                "proto": 0,
                "flags": socket.AI_NUMERICHOST,
            }
            for address in addresses
        ]

    async def close(self) -> None:
        pass


def pinned_session(
    checked: outbound.CheckedURL, headers: dict, *, connect: float, read: float
) -> aiohttp.ClientSession:
    """An aiohttp session that reaches only the checked origin's checked addresses (TLS verified
    against the URL's name), follows no redirect, ignores the environment's proxies, keeps no
    cookies, and sends `headers` on every request; `connect` and `read` are its timeouts in
    seconds. Create and close it on the loop it serves."""
    connector = aiohttp.TCPConnector(resolver=PinnedResolver(checked), use_dns_cache=False)
    timeout = aiohttp.ClientTimeout(total=None, connect=connect, sock_read=read)
    return aiohttp.ClientSession(
        connector=connector,
        headers=headers,
        timeout=timeout,
        trust_env=False,
        cookie_jar=aiohttp.DummyCookieJar(),
        auto_decompress=True,
    )


@functools.cache
def _ssl_context() -> ssl.SSLContext:
    """The platform's TLS client context (certificates verified against the system's authorities),
    made once per process: loading the authorities costs ~40 ms of CPU, which every new transport
    paid before (an agent run makes one). An SSLContext is safe to share between connections."""
    return httpx2.create_ssl_context(trust_env=False)


def pinned_transport(checked: outbound.CheckedURL) -> httpx2.HTTPTransport:
    transport = httpx2.HTTPTransport(verify=_ssl_context(), trust_env=False)
    transport._pool = httpcore2.ConnectionPool(ssl_context=_ssl_context(), network_backend=PinnedBackend(checked))
    return transport


def async_pinned_transport(checked: outbound.CheckedURL) -> httpx2.AsyncHTTPTransport:
    transport = httpx2.AsyncHTTPTransport(verify=_ssl_context(), trust_env=False)
    transport._pool = httpcore2.AsyncConnectionPool(
        ssl_context=_ssl_context(), network_backend=AsyncPinnedBackend(checked)
    )
    return transport


def request(method: str, url: str, *, timeout: float | None = None, **kwargs) -> httpx2.Response:
    """One request to a checked, pinned URL. Raises OutboundURLRefused or httpx2.HTTPError."""
    transport = pinned_transport(outbound.check_url(url))
    timeout = timeout or settings.OUTBOUND_TIMEOUT
    with httpx2.Client(transport=transport, timeout=timeout, follow_redirects=False, trust_env=False) as client:
        return client.request(method, url, **kwargs)
