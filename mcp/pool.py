"""The per-process pool of upstream MCP sessions, and the guards around every call.

The pool runs on an event loop of its own, in a daemon thread started on first use in each process
(after a fork it starts again). Django code, which is synchronous here, hands it a coroutine and
waits for the answer with a deadline (`call()`); upstream sessions, their HTTP connections and stdio
processes stay open on that loop between requests, so a call in steady state makes no handshake.

Every call goes through, in order: the configuration's circuit breaker (shared through Redis), its
concurrency limit (a call that cannot start within MCP_QUEUE_TIMEOUT is refused as busy rather
than holding a web thread), a deadline, and the pooled session. A session the upstream dropped is
replaced once, transparently, when the call provably never reached the server (or the call only
reads); reads also retry transient failures with backoff and jitter. A tool call that may have
reached the server is never sent twice.
"""

import asyncio
import concurrent.futures
import contextlib
import contextvars
import hashlib
import json
import logging
import os
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field

import aiohttp
import anyio
import httpcore2
import httpx2
from django.conf import settings
from mcp_types.jsonrpc import CONNECTION_CLOSED

import mcp.client.stdio as sdk_stdio
from agentapi import http, outbound
from agentapi.db import aio
from agentapi.resilience import Breaker, BreakerOpen, SharedRedis, retry_async
from mcp import Client, metrics, stdio, wire
from mcp.client.sse import sse_client
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

log = logging.getLogger(__name__)


class UpstreamError(Exception):
    """A call that did not get an answer from the server. `status` and `code` are the API's."""

    status = 502
    code = "upstream_error"

    def __init__(self, message: str, *, retry_after: int | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class UpstreamTimeout(UpstreamError):
    status, code = 504, "upstream_timeout"


class UpstreamUnavailable(UpstreamError):
    status, code = 503, "upstream_unavailable"


class UpstreamExited(UpstreamError):
    """A stdio server that exited before it completed the MCP handshake."""

    status, code = 502, "upstream_exited"


class UpstreamBusy(UpstreamError):
    status, code = 503, "upstream_busy"


class UpstreamRefused(UpstreamError):
    """The URL failed the outbound rules when dialled (the name now resolves somewhere private)."""

    status, code = 400, "outbound_url_refused"


class UpstreamUnauthorized(UpstreamError):
    """The server refused the credential (HTTP 401): it is up; what it was sent is not accepted."""

    status, code = 502, "upstream_unauthorized"


class UpstreamTooLarge(UpstreamError):
    """The server's answer is larger than MCP_MAX_RESULT_BYTES (it answered: it is up)."""

    status, code = 502, "upstream_result_too_large"

    def __init__(self, size: int):
        limit = settings.MCP_MAX_RESULT_BYTES
        super().__init__(f"The server's result is {size} bytes; at most {limit} are passed on (MCP_MAX_RESULT_BYTES).")


class UpstreamRejected(UpstreamError):
    """The server answered with a JSON-RPC error (it is up; the request was wrong for it)."""

    def __init__(self, error: MCPError):
        super().__init__(str(error.error.message)[:500])
        self.rpc_code = error.error.code
        self.status, self.code = (
            (400, "upstream_rejected") if error.error.code in (-32602, -32601) else (502, "upstream_error")
        )


class _NotSent(Exception):
    """The session was found closed before the request went out: safe to resend on a new one."""


@dataclass(frozen=True)
class Target:
    """Everything needed to reach one server as one principal; `key` names its pooled session."""

    configuration_id: int
    organization_id: int
    revision: int
    transport: str
    url: str = ""
    headers: tuple = ()
    stdio: tuple | None = None  # (executable, argv, env)
    # A stdio server confined to an agent session's workspace: its own process, started in that
    # directory, ended when the directory is removed (the session ended; see _reap).
    workspace: str | None = None

    @property
    def fingerprint(self) -> str:
        material = json.dumps(
            [self.transport, self.url, list(self.headers), self.stdio, self.workspace], sort_keys=True
        )
        return hashlib.sha256(material.encode()).hexdigest()[:24]

    @property
    def key(self) -> tuple:
        return (self.configuration_id, self.revision, self.fingerprint)


@dataclass
class _Entry:
    """One upstream session. It lives in a task of its own (`task`), which entered the MCP client and
    its transport and holds them until `closing` is set: when the transport fails, that task ends,
    not the call that happened to be using it."""

    target: Target
    client: Client | None = None
    task: asyncio.Task | None = None
    closing: asyncio.Event = field(default_factory=asyncio.Event)
    last_used: float = field(default_factory=time.monotonic)
    in_use: int = 0
    closed: bool = False
    ended_by: BaseException | None = None  # what ended the session task, when it failed
    # The SDK turns an HTTP 401 into a generic JSON-RPC error; the HTTP client's response hook
    # notes it here so that a refused credential is told apart from a failing server.
    refused: bool = False
    # A stdio server's stderr goes to a file of ours; its last lines (secrets removed) are kept
    # when the process ends, to say why one that exited at start did.
    stderr_path: str | None = None
    stderr_tail: str | None = None
    process: object | None = None  # the stdio server's process (anyio Process), for its exit status
    # A Streamable HTTP session's client for tool calls on the stateless wire (mcp.wire); None
    # for other transports, and once the server answered in a way only the SDK handles.
    wire: aiohttp.ClientSession | None = None


class Upstream:
    """What an operation is given: the pooled session's SDK client, with tool calls sent on the
    stateless wire where the session speaks it (mcp.wire), else by the SDK. Everything else an
    operation reaches for (list_tools, server_info, ...) is the SDK client's own."""

    __slots__ = ("client", "_entry")

    def __init__(self, entry: "_Entry"):
        self.client = entry.client
        self._entry = entry

    async def call_tool(self, name: str, arguments: dict, meta=None) -> dict:
        """The tool's result as JSON (CallToolResult's wire form), whichever way it was sent."""
        entry = self._entry
        if wire.applies(self.client, entry.wire):
            try:
                return await wire.call_tool(self.client, entry.wire, entry.target.url, name, arguments, meta)
            except wire.Refused:
                entry.refused = True
                raise
            except wire.ResultTooLarge as exc:
                raise UpstreamTooLarge(exc.size) from None
            except wire.NotForTheWire:
                entry.wire = None  # nothing ran; this server's answers need the SDK's client
        result = await self.client.call_tool(name, arguments, meta=meta)
        return result.model_dump(mode="json", by_alias=True, exclude_none=True)

    def __getattr__(self, name):
        return getattr(self.client, name)


# Errors that mean the connection or process is gone. Whether the request reached the server is
# decided separately (_reached).
_CONNECTION_ERRORS = (
    aiohttp.ClientConnectionError,
    aiohttp.ClientPayloadError,
    httpx2.TransportError,
    httpcore2.NetworkError,
    anyio.ClosedResourceError,
    anyio.BrokenResourceError,
    anyio.EndOfStream,
    ConnectionError,
    OSError,
)


def _dropped(exc: BaseException) -> bool:
    if isinstance(exc, MCPError):
        return exc.error.code == CONNECTION_CLOSED
    if isinstance(exc, BaseExceptionGroup):
        return all(_dropped(e) for e in exc.exceptions)
    return isinstance(exc, _CONNECTION_ERRORS)


def _unauthorized(exc: BaseException | None) -> bool:
    if isinstance(exc, BaseExceptionGroup):
        return any(_unauthorized(e) for e in exc.exceptions)
    return isinstance(exc, httpx2.HTTPStatusError) and exc.response.status_code == 401


def _never_reached(exc: BaseException) -> bool:
    """True only when the request cannot have been delivered: the connection could not be made,
    or the session's stream was already closed when the request was written."""
    if isinstance(exc, BaseExceptionGroup):
        return all(_never_reached(e) for e in exc.exceptions)
    return isinstance(
        exc,
        (
            _NotSent,
            aiohttp.ClientConnectorError,
            httpx2.ConnectError,
            httpcore2.ConnectError,
            anyio.ClosedResourceError,
            anyio.BrokenResourceError,
            ConnectionRefusedError,
        ),
    )


# The SDK's stdio transport keeps the process it spawns to itself; the one thing we need from it is
# the exit status of a server that died at start. Its spawn function is wrapped to hand the process
# to the entry whose task spawned it (a context variable set by that task), nothing else.
_spawning: contextvars.ContextVar["_Entry | None"] = contextvars.ContextVar("agentapi_mcp_spawning", default=None)
_sdk_spawn = sdk_stdio._create_platform_compatible_process


async def _spawn_and_keep(*args, **kwargs):
    process = await _sdk_spawn(*args, **kwargs)
    entry = _spawning.get()
    if entry is not None:
        entry.process = process
    return process


sdk_stdio._create_platform_compatible_process = _spawn_and_keep


def _http_client(checked: outbound.CheckedURL, headers: dict, entry=None, **kwargs) -> httpx2.AsyncClient:
    # Connections go only to the addresses the outbound check approved (agentapi.http).
    transport = http.async_pinned_transport(checked)
    timeout = httpx2.Timeout(settings.MCP_CALL_TIMEOUT, connect=settings.MCP_CONNECT_TIMEOUT)

    async def note_refusal(response):
        if entry is not None and response.status_code == 401:
            entry.refused = True

    return httpx2.AsyncClient(
        transport=transport,
        headers=headers,
        timeout=timeout,
        follow_redirects=False,
        trust_env=False,
        event_hooks={"response": [note_refusal]},
        **kwargs,
    )


class Pool:
    """Upstream sessions by Target.key, with a breaker and a concurrency limit per configuration."""

    def __init__(self):
        self.entries: dict[tuple, _Entry] = {}
        self._connecting: dict[tuple, asyncio.Future] = {}
        self._limits: dict[int, asyncio.Semaphore] = {}
        self._breakers: dict[int, Breaker] = {}
        self._starting: list[_Entry] = []  # sessions between spawn and handshake (they count too)
        self.redis = SharedRedis(settings.REDIS_URL)
        self._reaper = None

    # -- guards -------------------------------------------------------------------------------

    def breaker(self, configuration_id: int) -> Breaker:
        if configuration_id not in self._breakers:
            self._breakers[configuration_id] = Breaker(
                f"mcp:{configuration_id}",
                self.redis,
                fail_max=settings.MCP_BREAKER_FAIL_MAX,
                reset_timeout=settings.MCP_BREAKER_RESET_TIMEOUT,
                sync_interval=settings.MCP_BREAKER_SYNC_INTERVAL,
                on_change=metrics.breaker_changed,
            )
        return self._breakers[configuration_id]

    def _limit(self, configuration_id: int) -> asyncio.Semaphore:
        if configuration_id not in self._limits:
            self._limits[configuration_id] = asyncio.Semaphore(settings.MCP_MAX_CONCURRENT_CALLS)
        return self._limits[configuration_id]

    async def run(self, target: Target, operation, *, reads: bool, timeout: float):
        """Await operation(client) against target's pooled session, guarded. Raises UpstreamError."""
        self._start_reaper()
        breaker = self.breaker(target.configuration_id)
        try:
            await breaker.before_call()
        except BreakerOpen as exc:
            raise UpstreamUnavailable(
                "The server failed repeatedly; calls are paused until it recovers.", retry_after=exc.retry_after
            ) from None
        limit = self._limit(target.configuration_id)
        try:
            await asyncio.wait_for(limit.acquire(), settings.MCP_QUEUE_TIMEOUT)
        except TimeoutError:
            raise UpstreamBusy("The server already has as many calls in flight as allowed.", retry_after=1) from None
        try:
            async with asyncio.timeout(timeout):
                if reads:
                    result = await retry_async(
                        lambda: self._attempt(target, operation, reads=True),
                        attempts=settings.MCP_READ_ATTEMPTS,
                        retry_on=(UpstreamError,),
                    )
                else:
                    result = await self._attempt(target, operation, reads=False)
        except TimeoutError:
            await breaker.failure()
            raise UpstreamTimeout(f"The server did not answer within {timeout:g} seconds.") from None
        except (UpstreamRejected, UpstreamUnauthorized, UpstreamTooLarge):
            await breaker.success()  # it answered: it is up
            raise
        except UpstreamRefused:
            raise
        except UpstreamError:
            await breaker.failure()
            raise
        finally:
            limit.release()
        await breaker.success()
        return result

    async def _attempt(self, target: Target, operation, *, reads: bool):
        entry = await self._get(target)
        try:
            return await self._use(entry, operation)
        except MCPError as exc:
            if entry.refused:
                await self._discard(entry)  # refused at the door: nothing ran; the caller renews
                raise UpstreamUnauthorized("The server refused the credential it was sent (401).") from None
            if not _dropped(exc):
                raise UpstreamRejected(exc) from None
            failure = exc
        except Exception as exc:  # classified below: anything else from a transport is a failure
            if isinstance(exc, UpstreamError):
                raise
            failure = exc
        if _dropped(failure) and entry.task is not None and not isinstance(failure, aiohttp.ClientError):
            # "Connection closed" says only that the session ended; what ended it tells whether
            # this request can have been delivered (a failed connect means it was not). A failure
            # on the wire's own connection (aiohttp) ends no SDK session: nothing to wait for.
            await asyncio.wait({entry.task}, timeout=1)
            if entry.ended_by is not None and _never_reached(entry.ended_by):
                failure = entry.ended_by
        await self._discard(entry)
        if _unauthorized(failure):
            raise UpstreamUnauthorized("The server refused the credential it was sent (401).")
        if not (reads or _never_reached(failure)):
            log.warning("mcp call failed after it may have reached the server: %s", _describe(failure))
            raise UpstreamError("The connection to the server failed during the call.") from None
        # Re-established once: the old session is gone, and the request either only reads or
        # never went out.
        metrics.reconnects.labels(str(target.configuration_id)).inc()
        entry = await self._get(target)
        try:
            return await self._use(entry, operation)
        except MCPError as exc:
            if not _dropped(exc):
                raise UpstreamRejected(exc) from None
            await self._discard(entry)
            raise UpstreamError("The server closed the connection.") from None
        except UpstreamError:
            raise
        except Exception as exc:
            await self._discard(entry)
            raise UpstreamError(f"The connection to the server failed ({type(exc).__name__}).") from None

    async def _use(self, entry: _Entry, operation):
        if entry.closed:
            raise _NotSent()
        entry.in_use += 1
        try:
            return await operation(Upstream(entry))
        finally:
            entry.in_use -= 1
            entry.last_used = time.monotonic()

    # -- sessions -----------------------------------------------------------------------------

    async def _get(self, target: Target) -> _Entry:
        entry = self.entries.get(target.key)
        if entry is not None and not entry.closed:
            return entry
        pending = self._connecting.get(target.key)
        if pending is not None:
            return await asyncio.shield(pending)
        future = asyncio.get_running_loop().create_future()
        self._connecting[target.key] = future
        try:
            entry = await self._connect(target)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: waiters get it; nobody waiting is fine too
            raise
        else:
            future.set_result(entry)
            return entry
        finally:
            del self._connecting[target.key]

    async def _connect(self, target: Target) -> _Entry:
        # A changed configuration or credential replaces the sessions made for the old one.
        for key, old in list(self.entries.items()):
            if key[0] == target.configuration_id and key[1] != target.revision:
                await self._discard(old)
        if target.transport == "stdio":
            await self._make_room_for_process(target.organization_id)
        entry = _Entry(target=target, in_use=1)
        ready = asyncio.get_running_loop().create_future()
        entry.task = asyncio.get_running_loop().create_task(self._hold(entry, ready))
        self._starting.append(entry)
        try:
            async with asyncio.timeout(settings.MCP_CONNECT_TIMEOUT):
                entry.client = await asyncio.shield(ready)
        except TimeoutError:
            await self._discard(entry)
            raise UpstreamTimeout("The server did not complete the MCP handshake in time.") from None
        except outbound.OutboundURLRefused as exc:
            raise UpstreamRefused(str(exc)) from None
        except MCPError as exc:
            if entry.refused:
                raise UpstreamUnauthorized("The server refused the credential it was sent (401).") from None
            await self._raise_if_exited(entry)
            raise UpstreamError(f"The server refused the MCP handshake: {str(exc.error.message)[:200]}") from None
        except Exception as exc:  # any transport failure while connecting
            await self._raise_if_exited(entry)
            if entry.refused or _unauthorized(exc):
                raise UpstreamUnauthorized("The server refused the credential it was sent (401).") from None
            raise UpstreamError(f"Could not connect to the server ({_describe(exc)}).") from None
        finally:
            self._starting.remove(entry)
            entry.in_use -= 1
        metrics.handshakes.labels(str(target.configuration_id)).inc()
        self.entries[target.key] = entry
        metrics.pool_size.set(len(self.entries))
        return entry

    async def _raise_if_exited(self, entry: _Entry) -> None:
        """For a stdio server whose handshake failed: when its process ended, say so, with the
        last lines it wrote to stderr."""
        if entry.target.transport != "stdio" or entry.task is None:
            return
        await asyncio.wait({entry.task}, timeout=2)
        if entry.task.done() and entry.stderr_tail is not None:
            status = getattr(entry.process, "returncode", None)
            exited = "exited" + (f" with exit status {status}" if status is not None else "")
            said = f" Its last output: {entry.stderr_tail}" if entry.stderr_tail else " It wrote nothing to stderr."
            raise UpstreamExited(f"The stdio server {exited} as it started." + said) from None

    async def _hold(self, entry: _Entry, ready: asyncio.Future) -> None:
        """The session's own task: connect, hand the client over, hold it until told to close."""
        workdir = None
        _spawning.set(entry)  # this task's own context
        try:
            async with contextlib.AsyncExitStack() as stack:
                transport, workdir = self._transport(entry.target, stack, entry)
                client = Client(transport, cache=None, read_timeout_seconds=settings.MCP_CALL_TIMEOUT)
                await stack.enter_async_context(client)
                ready.set_result(client)
                await entry.closing.wait()
        except BaseException as exc:  # the session ended: report it to a waiting connect, else log
            entry.ended_by = exc
            if not ready.done():
                ready.set_exception(exc if isinstance(exc, Exception) else UpstreamError("The connection was closed."))
            elif not isinstance(exc, asyncio.CancelledError):
                log.info("mcp session ended: %s", _describe(exc))
        finally:
            entry.closed = True
            if self.entries.get(entry.target.key) is entry:
                del self.entries[entry.target.key]
                metrics.pool_size.set(len(self.entries))
            if workdir:
                shutil.rmtree(workdir, ignore_errors=True)
            if entry.stderr_path:
                entry.stderr_tail = stdio.stderr_tail(entry.stderr_path)
                with contextlib.suppress(OSError):
                    os.unlink(entry.stderr_path)

    def _transport(self, target: Target, stack, entry: _Entry | None = None):
        headers = dict(target.headers)
        if target.transport == "stdio":
            executable, argv, env = target.stdio
            workdir = tempfile.mkdtemp(prefix="mcp-stdio-", dir=settings.MCP_STDIO_ROOT or None)
            env = {"PATH": stdio.BASE_PATH, "HOME": workdir, "LANG": "C.UTF-8", **dict(env)}
            descriptor, path = tempfile.mkstemp(prefix="mcp-stderr-", dir=settings.MCP_STDIO_ROOT or None)
            if entry is not None:
                entry.stderr_path = path
            errlog = stack.enter_context(os.fdopen(descriptor, "w"))
            params = StdioServerParameters(
                command=executable, args=list(argv), env=env, cwd=target.workspace or workdir
            )
            return stdio_client(params, errlog=errlog), workdir
        checked = outbound.check_url(target.url)  # checked again when dialled, and pinned
        if target.transport == "sse":

            def factory(headers=None, timeout=None, auth=None):
                return _http_client(checked, headers or {}, entry, auth=auth)

            return sse_client(target.url, headers=headers, httpx_client_factory=factory), None
        client = _http_client(checked, headers, entry)
        stack.push_async_callback(client.aclose)
        if entry is not None:
            entry.wire = http.pinned_session(
                checked, headers, connect=settings.MCP_CONNECT_TIMEOUT, read=settings.MCP_CALL_TIMEOUT
            )
            stack.push_async_callback(entry.wire.close)
        return streamable_http_client(target.url, http_client=client), None

    async def _make_room_for_process(self, organization_id: int) -> None:
        processes = [
            e
            for e in [*self.entries.values(), *self._starting]
            if e.target.transport == "stdio" and e.target.organization_id == organization_id
        ]
        if len(processes) < settings.MCP_STDIO_MAX_PROCESSES_PER_ORGANIZATION:
            return
        idle = sorted((e for e in processes if e.in_use == 0), key=lambda e: e.last_used)
        if not idle:
            raise UpstreamBusy("The organization runs as many stdio servers as it may.", retry_after=1)
        await self._discard(idle[0])

    async def _discard(self, entry: _Entry) -> None:
        """Close a session and wait (bounded) until its transport and process are gone."""
        entry.closed = True
        if self.entries.get(entry.target.key) is entry:
            del self.entries[entry.target.key]
            metrics.pool_size.set(len(self.entries))
        entry.closing.set()
        if entry.task is not None and not entry.task.done():
            done, _ = await asyncio.wait({entry.task}, timeout=15)
            if not done:
                entry.task.cancel()
                await asyncio.wait({entry.task}, timeout=5)

    async def close_idle(self, max_idle: float) -> int:
        now = time.monotonic()
        idle = [e for e in self.entries.values() if e.in_use == 0 and now - e.last_used > max_idle]
        for entry in idle:
            await self._discard(entry)
        return len(idle)

    async def close_all(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
        for entry in list(self.entries.values()):
            await self._discard(entry)

    def _start_reaper(self) -> None:
        if self._reaper is None or self._reaper.done():
            self._reaper = asyncio.get_running_loop().create_task(self._reap())

    async def close_ended_workspaces(self) -> int:
        """Discard the sessions of stdio servers whose agent session's workspace is gone: whichever
        process ended the session removed the directory, and this is how every web process learns it."""
        ended = [e for e in self.entries.values() if e.target.workspace and not os.path.isdir(e.target.workspace)]
        for entry in ended:
            await self._discard(entry)
        return len(ended)

    async def _reap(self) -> None:
        interval = max(0.5, min(30.0, settings.MCP_POOL_IDLE_SECONDS / 2))
        tick = min(interval, settings.SESSION_WORKSPACE_CHECK_SECONDS)
        waited = 0.0
        while True:
            await asyncio.sleep(tick)
            waited += tick
            await self.close_ended_workspaces()
            if waited >= interval:
                waited = 0.0
                await self.close_idle(settings.MCP_POOL_IDLE_SECONDS)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, BaseExceptionGroup):
        return ", ".join(sorted({_describe(e) for e in exc.exceptions}))
    if isinstance(exc, FileNotFoundError):
        return "command not found"
    return type(exc).__name__


# -- the loop ----------------------------------------------------------------------------------
#
# One pool per process, on one event loop. In the web process that is the ASGI server's own loop,
# adopted when it starts serving (agentapi.asgi calls adopt_running_loop): the data plane awaits
# calls on it directly, and the management plane's worker threads hand theirs to it. Elsewhere
# (Celery workers, commands, tests) the pool starts a loop of its own in a daemon thread on first
# use; after a fork it starts again.

_lock = threading.Lock()
_runtime: tuple | None = None  # (pid, loop, pool, owned: whether the loop is the pool's own thread)


def breakers_mode() -> str:
    """How this process's breakers are kept: "shared" through Redis, or "local" while Redis is being
    skipped after a failure (SharedRedis backs off a few seconds, then tries it again)."""
    runtime = _runtime
    if not settings.REDIS_URL:
        return "local"
    if runtime is None or runtime[0] != os.getpid():
        return "shared"  # no breaker used yet in this process: the next one starts shared
    return "shared" if runtime[2].redis.available else "local"


def adopt_running_loop() -> None:
    """Make the running event loop the pool's (the web process, before it serves a request)."""
    global _runtime
    loop = asyncio.get_running_loop()
    with _lock:
        if _runtime is None or _runtime[0] != os.getpid():
            _runtime = (os.getpid(), loop, Pool(), False)


def _runtime_for_process():
    global _runtime
    with _lock:
        if _runtime is None or _runtime[0] != os.getpid():
            loop = asyncio.new_event_loop()
            started = threading.Event()

            def run():
                asyncio.set_event_loop(loop)
                loop.call_soon(started.set)
                loop.run_forever()

            threading.Thread(target=run, name="mcp-pool", daemon=True).start()
            started.wait()
            pool = asyncio.run_coroutine_threadsafe(_make_pool(), loop).result()
            _runtime = (os.getpid(), loop, pool, True)
        return _runtime


async def _make_pool() -> Pool:
    return Pool()


def submit(coroutine_function, *args, timeout: float):
    """Run coroutine_function(pool, *args) on the pool's loop; wait at most `timeout` seconds."""
    _, loop, pool, _ = _runtime_for_process()
    future = asyncio.run_coroutine_threadsafe(coroutine_function(pool, *args), loop)
    try:
        return future.result(timeout)
    except concurrent.futures.TimeoutError:
        future.cancel()
        raise UpstreamTimeout(f"The server did not answer within {timeout:g} seconds.") from None


def call(target: Target, operation, *, reads: bool, timeout: float | None = None):
    """Run operation(client) against the target, guarded (see Pool.run). Raises UpstreamError."""
    timeout = timeout or settings.MCP_CALL_TIMEOUT

    async def run(pool):
        return await pool.run(target, operation, reads=reads, timeout=timeout)

    # The loop enforces the deadline; the margin covers the breaker and queue checks around it.
    return submit(run, timeout=timeout + settings.MCP_QUEUE_TIMEOUT + 5)


async def acall(target: Target, operation, *, reads: bool, timeout: float | None = None):
    """call() for async code: awaited on the pool's loop when it is the running one (the data
    plane in the web process), else handed to it. Raises UpstreamError."""
    timeout = timeout or settings.MCP_CALL_TIMEOUT
    running = asyncio.get_running_loop()
    with _lock:
        runtime = _runtime if _runtime is not None and _runtime[0] == os.getpid() else None
    if runtime is None:
        runtime = _runtime_for_process()
    _, loop, pool, _ = runtime
    coroutine = pool.run(target, operation, reads=reads, timeout=timeout)
    if loop is running:
        return await coroutine
    return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coroutine, loop))


def shared_redis():
    """The pool's Redis client (agentapi.resilience.SharedRedis) when the running loop is the
    pool's, else None: other data-plane code uses it rather than opening its own."""
    with _lock:
        runtime = _runtime if _runtime is not None and _runtime[0] == os.getpid() else None
    if runtime is None or runtime[1] is not asyncio.get_running_loop():
        return None
    return runtime[2].redis


def shutdown() -> None:
    """Close every pooled session (tests, and a worker that is stopping); stop the pool's own loop."""
    global _runtime
    with _lock:
        runtime, _runtime = _runtime, None
    if runtime is None or runtime[0] != os.getpid():
        return
    _, loop, pool, owned = runtime

    async def close():
        await pool.close_all()
        await pool.redis.close()
        await aio.close()  # the data plane's connections made on this loop

    if not owned:
        asyncio.run_coroutine_threadsafe(close(), loop)  # the server's loop: it closes as it stops
        return
    asyncio.run_coroutine_threadsafe(close(), loop).result(30)
    loop.call_soon_threadsafe(loop.stop)


def run_on_pool_loop(coroutine_function, *args, timeout: float = 60):
    """Run coroutine_function(*args) on the pool's loop from a synchronous caller (tests drive the
    data plane this way, on the loop it shares with the pool, as the web process does)."""
    _, loop, _, _ = _runtime_for_process()
    return asyncio.run_coroutine_threadsafe(coroutine_function(*args), loop).result(timeout)
