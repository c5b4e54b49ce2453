"""Terminal agents started per session from an operator's template (an `agentapi` backend with a
`template`; the agents issue).

A session whose backend has a template gets a coder/agentapi process of its own, in front of its
terminal agent, started by the Celery worker process that runs the session's first run and kept
between runs:

- Started by the rules of stdio templates (mcp.stdio.command_line): no shell; an environment built
  from nothing (PATH, HOME = the workspace, LANG, what the template and the backend set); prlimit's
  limits from its first instruction; in the session's workspace (sessions_app.workspaces); `{port}`
  a free loopback port. setpriv's --pdeathsig ends it with the worker process that started it, and
  it leads a process group of its own, so that stopping it stops whatever the agent started.
- Handed the session's MCP endpoint and a token for it, so that the agent uses the platform's tools
  (with the user's credentials, the breaker, limits and audit): PLATFORM_MCP_URL and
  PLATFORM_MCP_TOKEN in its environment, and the workspace's `.mcp.json` (the project file Claude
  Code and others read). The token is a second session token (AgentSession.agent_token_hash),
  minted at each start, valid at that session's endpoint only, cleared when the process stops or
  the session ends. Never on the command line, which every process on the host may read.
- Owned by one worker process, recorded in Redis (`agentapi:terminal:<session>`: node, owner, URL,
  backend revision, last use) under a lease its owner renews. Every process of the owner's Celery
  node may drive it (they share the host's loopback); a run delivered to another node is handed to
  the owner's node once, through Celery's direct queue (`worker_direct`), if that node answers a
  ping. When the owner is gone (its node does not answer, or its process does not) the record is
  stale, and the run starts a new process: the conversation is the platform's, only the terminal's
  own scrollback is lost.
- Stopped by its owner when the session ends (its token is cleared at once, by session_close),
  when it exits, when the backend changes (its revision) or it has been idle
  AGENT_TERMINAL_IDLE_SECONDS (both only while it is not running), or when the lease is lost.
  Starts and stops are audited.

Without Redis (the embedded profile runs one worker) the registry is the owner's own memory.

The processes of one host run as the worker's user: prlimit and a directory confine each of them,
not one from another. A deployment that runs agents it does not trust makes the template's command
a sandbox (bubblewrap, nsjail, gVisor) or gives each worker a container of its own.
"""

import asyncio
import contextlib
import contextvars
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import tempfile
import time
from dataclasses import dataclass

import httpx2
from asgiref.sync import sync_to_async
from django.conf import settings
from django.utils import timezone

from audit.services import audit_record
from mcp import stdio
from sessions_app import workspaces
from sessions_app.models import AgentBackend, AgentSession, SessionStatus
from sessions_app.services import SESSION_TOKEN_PREFIX, hash_session_token
from tenants import scoping

log = logging.getLogger(__name__)

MCP_CONFIG_FILE = ".mcp.json"


class StartFailed(Exception):
    """The terminal agent did not start; the message says why (its stderr's tail, redacted)."""


@dataclass
class Elsewhere:
    """The session's terminal agent is owned by another Celery node: the run goes there."""

    node: str


@dataclass
class Terminal:
    session_id: str
    organization_id: int
    revision: list  # [backend pk, backend revision]
    template: str
    url: str
    process: asyncio.subprocess.Process
    token_hash: str
    workspace: str
    stderr_path: str
    last_used: float  # wall clock, comparable with other processes' `used`


# This process's terminals, and the task that keeps them (both on the MCP pool's loop).
_terminals: dict[str, Terminal] = {}
_keeper: asyncio.Task | None = None


def _key(session_id) -> str:
    return f"agentapi:terminal:{session_id}"


def owner_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


# Claim the record if it is absent or already ours; renew it if ours (returning its last use);
# release it if ours. Lua, so that each is one atomic round trip.
_CLAIM = """
local owner = redis.call('HGET', KEYS[1], 'owner')
if owner and owner ~= ARGV[2] then return 0 end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], unpack(ARGV, 3))
redis.call('EXPIRE', KEYS[1], ARGV[1])
return 1
"""
_RENEW = """
if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[1] then return 0 end
redis.call('EXPIRE', KEYS[1], ARGV[2])
return redis.call('HGET', KEYS[1], 'used') or ''
"""
_RELEASE = """
if redis.call('HGET', KEYS[1], 'owner') == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


async def _registry(operation):
    """operation(client) on Redis; None when there is none or it fails (the owner acts alone)."""
    from mcp import pool

    shared = pool.shared_redis()  # terminals are kept on the pool's loop: its client serves them
    return None if shared is None else await shared.run(operation)


async def _read(session_id: str) -> dict | None:
    record = await _registry(lambda client: client.hgetall(_key(session_id)))
    return {k.decode(): v.decode() for k, v in record.items()} if record else None


def _lease() -> int:
    return max(1, int(settings.AGENT_TERMINAL_LEASE_SECONDS))


async def _claim(terminal: Terminal, node: str) -> bool:
    fields = {"node": node, "owner": owner_name(), "url": terminal.url, "revision": json.dumps(terminal.revision),
              "used": str(terminal.last_used)}  # fmt: skip
    flat = [item for pair in fields.items() for item in pair]
    claimed = await _registry(
        lambda client: client.eval(_CLAIM, 1, _key(terminal.session_id), _lease(), owner_name(), *flat)
    )
    return claimed is None or bool(claimed)


async def _touch_record(session_id: str) -> None:
    await _registry(lambda client: client.hset(_key(session_id), "used", str(time.time())))


# -- a run's terminal ---------------------------------------------------------------------------


async def acquire(session: AgentSession, backend: AgentBackend, key: str, *, node: str) -> str | Elsewhere:
    """The base URL of the session's terminal agent, started here if it has none; or Elsewhere,
    the node that owns it. Raises StartFailed."""
    session_id = str(session.pk)
    revision = [backend.pk, backend.revision]
    here = _terminals.get(session_id)
    if here is not None and here.process.returncode is None and here.revision == revision:
        here.last_used = time.time()
        await _touch_record(session_id)
        return here.url
    if here is not None:
        await stop(here, "exited" if here.process.returncode is not None else "backend_changed")
    record = await _read(session_id)
    if record is not None and record.get("owner") != owner_name():
        if record.get("node") != node and await _node_answers(record["node"]):
            return Elsewhere(record["node"])
        if record.get("node") == node and await _agent_status(record["url"]) is not None:
            await _touch_record(session_id)  # a process of this node owns it: the host's loopback reaches it
            return record["url"]
        # Its owner is gone (a worker stopped or restarted within the lease): the record is stale.
        await _registry(lambda client: client.eval(_RELEASE, 1, _key(session_id), record.get("owner", "")))
    terminal = await _start(session, backend, key)
    if not await _claim(terminal, node):  # another node started one meanwhile: use that one
        await stop(terminal, "duplicate")
        record = await _read(session_id)
        return Elsewhere(record["node"]) if record and record.get("node") != node else record["url"]
    _terminals[session_id] = terminal
    _ensure_keeper()
    return terminal.url


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _mint_token(session: AgentSession, token_hash: str) -> str | None:
    """The new token's hash on the session's row (while it is active), and its workspace on this
    host; None when the session has ended."""
    with scoping.organizations_scope((session.organization_id,)):
        now = timezone.now()
        set_ = AgentSession.objects.filter(
            pk=session.pk, status=SessionStatus.ACTIVE, expires_at__gt=now, ends_at__gt=now
        ).update(agent_token_hash=token_hash)
    return str(workspaces.create(session)) if set_ else None


def _write_mcp_config(workspace: str, url: str, token: str) -> None:
    """The project MCP file terminal agents read, naming the platform's endpoint (mode 0600)."""
    config = {"mcpServers": {"platform": {"type": "http", "url": url, "headers": {"Authorization": f"Bearer {token}"}}}}
    path = os.path.join(workspace, MCP_CONFIG_FILE)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as file:
        json.dump(config, file, indent=2)


async def _start(session: AgentSession, backend: AgentBackend, key: str) -> Terminal:
    token = SESSION_TOKEN_PREFIX + secrets.token_urlsafe(32)
    token_hash = hash_session_token(token)
    workspace = await sync_to_async(_mint_token, thread_sensitive=True)(session, token_hash)
    if workspace is None:
        raise StartFailed("The session has ended.")
    port = _free_port()
    mcp_url = settings.AGENT_TERMINAL_PLATFORM_URL.rstrip("/") + f"/mcp/sessions/{session.pk}/"
    _write_mcp_config(workspace, mcp_url, token)
    try:
        executable, argv, env = stdio.command_line(
            backend.template, backend.template_arguments or {}, workspace, port=port, api_key=key
        )
    except FileNotFoundError:
        raise StartFailed(f"The template {backend.template.name}'s command was not found.") from None
    env = {
        "PATH": stdio.BASE_PATH, "HOME": workspace, "LANG": "C.UTF-8", **env,
        "PLATFORM_MCP_URL": mcp_url, "PLATFORM_MCP_TOKEN": token, "PLATFORM_SESSION_ID": str(session.pk),
    }  # fmt: skip
    setpriv = shutil.which("setpriv", path=stdio.BASE_PATH) or "/usr/bin/setpriv"
    descriptor, stderr_path = tempfile.mkstemp(prefix="agent-terminal-", dir=settings.MCP_STDIO_ROOT or None)
    with os.fdopen(descriptor, "w") as errlog:
        # Forked from the pool loop's thread, which lives as long as the process: the death signal
        # follows the thread that started the child.
        process = await asyncio.create_subprocess_exec(
            setpriv, "--pdeathsig", "KILL", "--", executable, *argv, env=env, cwd=workspace,
            stdin=asyncio.subprocess.DEVNULL, stdout=errlog, stderr=errlog, start_new_session=True,
        )  # fmt: skip
    terminal = Terminal(
        session_id=str(session.pk), organization_id=session.organization_id, revision=[backend.pk, backend.revision],
        template=backend.template.name, url=f"http://127.0.0.1:{port}", process=process, token_hash=token_hash,
        workspace=workspace, stderr_path=stderr_path, last_used=time.time(),
    )  # fmt: skip
    try:
        await _wait_ready(terminal)
    except StartFailed:
        await stop(terminal, "start_failed", audit=False)
        raise
    log.info("terminal agent started", extra={"session": terminal.session_id, "pid": process.pid})
    await sync_to_async(_audit, thread_sensitive=True)(
        terminal, "agent.terminal.start", {"template": terminal.template}
    )
    return terminal


async def _wait_ready(terminal: Terminal) -> None:
    deadline = time.monotonic() + settings.AGENT_TERMINAL_START_SECONDS
    async with httpx2.AsyncClient(timeout=2.0, trust_env=False) as client:
        while time.monotonic() < deadline:
            if terminal.process.returncode is not None:
                break
            with contextlib.suppress(httpx2.HTTPError):
                if (await client.get(f"{terminal.url}/status")).status_code == 200:
                    return
            await asyncio.sleep(0.1)
    said = stdio.stderr_tail(terminal.stderr_path)
    how = "exited" if terminal.process.returncode is not None else "did not answer in time"
    raise StartFailed(f"The terminal agent {how}." + (f" Its last output: {said}" if said else ""))


def _audit(terminal: Terminal, action: str, details: dict) -> None:
    with scoping.organizations_scope((terminal.organization_id,)):
        session = AgentSession(pk=terminal.session_id, organization_id=terminal.organization_id)
        audit_record(action, target=session, organization_id=terminal.organization_id, details=details)


async def stop(terminal: Terminal, reason: str, *, audit: bool = True) -> None:
    """End the process (its group: TERM, then KILL), its token, its record and its config file."""
    if _terminals.get(terminal.session_id) is terminal:
        del _terminals[terminal.session_id]
    process = terminal.process
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), settings.AGENT_TERMINAL_STOP_SECONDS)
        except TimeoutError:
            pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)  # what it started, too
    with contextlib.suppress(Exception):
        await asyncio.wait_for(process.wait(), 5)
    await _registry(lambda client: client.eval(_RELEASE, 1, _key(terminal.session_id), owner_name()))
    with contextlib.suppress(OSError):
        os.unlink(os.path.join(terminal.workspace, MCP_CONFIG_FILE))
    with contextlib.suppress(OSError):
        os.unlink(terminal.stderr_path)
    await sync_to_async(_after_stop, thread_sensitive=True)(terminal, reason, audit)
    log.info("terminal agent stopped", extra={"session": terminal.session_id, "reason": reason})


def _after_stop(terminal: Terminal, reason: str, audit: bool) -> None:
    with scoping.organizations_scope((terminal.organization_id,)):
        AgentSession.objects.filter(pk=terminal.session_id, agent_token_hash=terminal.token_hash).update(
            agent_token_hash=""
        )
        session = AgentSession.objects.filter(pk=terminal.session_id).only("status", "organization_id").first()
    if session is None or session.status != SessionStatus.ACTIVE:
        workspaces.remove(session or AgentSession(pk=terminal.session_id, organization_id=terminal.organization_id))
    if audit:
        _audit(terminal, "agent.terminal.stop", {"reason": reason, "exit_code": terminal.process.returncode})


# -- the keeper ----------------------------------------------------------------------------------


def _ensure_keeper() -> None:
    global _keeper
    if _keeper is None or _keeper.done():
        # A context of its own: not the scope of the run that happened to start it.
        _keeper = asyncio.get_running_loop().create_task(_keep(), context=contextvars.Context())


def _state(terminal: Terminal) -> tuple[bool, bool, list | None]:
    """(whether the session is active, whether the terminal's token is still the session's, the
    backend's [pk, revision] or None)."""
    with scoping.organizations_scope((terminal.organization_id,)):
        session = AgentSession.objects.filter(pk=terminal.session_id).select_related("agent").first()
    if session is None:
        return False, False, None
    active = session.current_status(timezone.now()) == SessionStatus.ACTIVE
    backend = [session.agent.pk, session.agent.revision] if session.agent is not None else None
    return active, session.agent_token_hash == terminal.token_hash, backend


async def _agent_status(url: str) -> str | None:
    """What the coder/agentapi server at `url` says its agent is doing; None when it does not answer."""
    try:
        async with httpx2.AsyncClient(timeout=2.0, trust_env=False) as client:
            return (await client.get(f"{url}/status")).json().get("status")
    except (httpx2.HTTPError, ValueError, AttributeError):
        return None


async def _node_answers(node: str) -> bool:
    """Whether the Celery node is up (one control ping): a run is handed only to a live node."""
    from agentapi.celery import app

    def ping() -> bool:
        try:
            return bool(app.control.ping(destination=[node], timeout=settings.AGENT_TERMINAL_PING_SECONDS))
        except Exception:  # a broker without broadcast (the embedded profile's): no other node to hand to
            return False

    return await asyncio.to_thread(ping)


async def check(terminal: Terminal) -> str | None:
    """Why the terminal should stop now, or None."""
    if terminal.process.returncode is not None:
        return "exited"
    renewed = await _registry(lambda client: client.eval(_RENEW, 1, _key(terminal.session_id), owner_name(), _lease()))
    if isinstance(renewed, int):  # 0: the record is gone or another process's
        return "lease_lost"
    if renewed:
        terminal.last_used = max(terminal.last_used, float(renewed))
    active, ours, backend = await sync_to_async(_state, thread_sensitive=True)(terminal)
    if not active:
        return "session_ended"
    if not ours:
        return "replaced"
    if await _agent_status(terminal.url) == "running":
        terminal.last_used = time.time()
        return None
    if backend != terminal.revision:
        return "backend_changed"
    if time.time() - terminal.last_used > settings.AGENT_TERMINAL_IDLE_SECONDS:
        return "idle"
    return None


async def _keep() -> None:
    while _terminals:
        await asyncio.sleep(settings.AGENT_TERMINAL_CHECK_SECONDS)
        for terminal in list(_terminals.values()):
            try:
                reason = await check(terminal)
                if reason is not None:
                    await stop(terminal, reason)
            except Exception:  # one terminal's trouble must not stop the others being kept
                log.exception("terminal agent check failed", extra={"session": terminal.session_id})


def running_here() -> dict[str, int]:
    """This process's terminals: session id to process id."""
    return {session_id: terminal.process.pid for session_id, terminal in _terminals.items()}


async def _stop_all(reason: str) -> None:
    for terminal in list(_terminals.values()):
        await stop(terminal, reason)


def stop_all(reason: str = "worker_stopped") -> None:
    """This process's terminals stopped, their tokens and records cleared (the worker is shutting
    down: they would die with it, leaving their leases to run out)."""
    if not _terminals:
        return
    from mcp import pool

    try:
        pool.run_on_pool_loop(_stop_all, reason, timeout=settings.AGENT_TERMINAL_STOP_SECONDS + 15)
    except Exception:
        log.exception("terminal agents not stopped cleanly")
