"""A session's liveness: every use slides its idle expiry without a database write per call.

A use sets `agentapi:session:seen:<id>` in Redis to the time (expiring with the idle time itself)
and, at most once per SESSION_TOUCH_INTERVAL_SECONDS per session (a `SET NX` with that expiry
decides, shared by every process), writes `last_active_at` and the slid `expires_at` to the
session's row: one Redis round trip per call, alongside the upstream call, and a database write
per interval. The expiry job reads the `seen` times before it expires anything, so a session in use
is never expired for a database copy that is up to an interval old.

Without Redis (the embedded profile, or Redis down) each process throttles its own writes the same
way: the database is then written at most once per interval per session and process.
"""

import logging
import threading
import time
from datetime import UTC, datetime, timedelta

import redis
from django.conf import settings
from redis.exceptions import RedisError

from agentapi.db import aio
from agentapi.db.scope import DatabaseScope
from sessions_app.models import AgentSession, SessionStatus

log = logging.getLogger(__name__)

_local_writes: dict[str, float] = {}
# A process that recorded a use of a session this recently skips Redis for the next: the `seen`
# time is kept in whole seconds, so nothing is lost but Redis round trips on a busy session.
SEEN_RESOLUTION_SECONDS = 1.0
_seen_here: dict[str, float] = {}
_local_lock = threading.Lock()
_client: redis.Redis | None = None


def seen_key(session_id) -> str:
    return f"agentapi:session:seen:{session_id}"


def _due_key(session_id) -> str:
    return f"agentapi:session:written:{session_id}"


def _locally_due(session_id: str, now: float) -> bool:
    with _local_lock:
        if now - _local_writes.get(session_id, 0.0) < settings.SESSION_TOUCH_INTERVAL_SECONDS:
            return False
        _local_writes[session_id] = now
        if len(_local_writes) > 100_000:  # forget the oldest half rather than grow without end
            for key in sorted(_local_writes, key=_local_writes.get)[:50_000]:
                del _local_writes[key]
        return True


def _seen_just_now(session_id: str, now: float) -> bool:
    """Whether this process recorded a use of the session within SEEN_RESOLUTION_SECONDS (and if
    not, that it does now)."""
    with _local_lock:
        if now - _seen_here.get(session_id, 0.0) < SEEN_RESOLUTION_SECONDS:
            return True
        if len(_seen_here) > 100_000:
            _seen_here.clear()
        _seen_here[session_id] = now
        return False


def _update_sql() -> str:
    table = AgentSession._meta.db_table
    return (
        f'UPDATE "{table}" SET last_active_at = %s, expires_at = LEAST(%s, ends_at) '  # noqa: S608
        "WHERE id = %s AND status = %s AND last_active_at < %s"
    )


def _slid(now: float) -> tuple[datetime, datetime]:
    used = datetime.fromtimestamp(now, UTC)
    return used, used + timedelta(seconds=settings.SESSION_IDLE_TTL_SECONDS)


async def touch(session: AgentSession) -> None:
    """Record a use of the session (on the data plane's loop). Never raises for Redis."""
    from mcp import pool

    now = time.time()
    sid = str(session.pk)
    if _seen_just_now(sid, now):
        return
    shared = pool.shared_redis()
    due = None
    if shared is not None:

        async def record(client):
            pipe = client.pipeline(transaction=False)
            pipe.set(seen_key(sid), int(now), ex=settings.SESSION_IDLE_TTL_SECONDS)
            pipe.set(_due_key(sid), 1, nx=True, ex=settings.SESSION_TOUCH_INTERVAL_SECONDS)
            return await pipe.execute()

        answered = await shared.run(record)
        due = bool(answered[1]) if answered is not None else None
    if due is None:
        due = _locally_due(sid, now)
    if due:
        used, expires = _slid(now)
        scope = DatabaseScope(organization_ids=(session.organization_id,), user_id=session.user_id)
        await aio.run(scope, [(_update_sql(), [used, expires, sid, SessionStatus.ACTIVE, used])])


def sync_redis() -> redis.Redis | None:
    global _client
    if not settings.REDIS_URL:
        return None
    if _client is None:
        _client = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=0.25, socket_connect_timeout=0.25)
    return _client


def touch_sync(session: AgentSession) -> None:
    """touch() for synchronous code (the management plane's views, the embedded profile)."""
    now = time.time()
    sid = str(session.pk)
    if _seen_just_now(sid, now):
        return
    due = None
    client = sync_redis()
    if client is not None:
        try:
            pipe = client.pipeline(transaction=False)
            pipe.set(seen_key(sid), int(now), ex=settings.SESSION_IDLE_TTL_SECONDS)
            pipe.set(_due_key(sid), 1, nx=True, ex=settings.SESSION_TOUCH_INTERVAL_SECONDS)
            due = bool(pipe.execute()[1])
        except (RedisError, OSError) as exc:
            log.warning("redis unavailable, session liveness written locally: %s", type(exc).__name__)
    if due is None:
        due = _locally_due(sid, now)
    if due:
        used, expires = _slid(now)
        AgentSession.objects.filter(pk=session.pk, status=SessionStatus.ACTIVE, last_active_at__lt=used).update(
            last_active_at=used, expires_at=min(expires, session.ends_at)
        )


def last_seen(session_ids: list) -> dict[str, datetime]:
    """When each session was last used according to Redis (those Redis knows of)."""
    client = sync_redis()
    if client is None or not session_ids:
        return {}
    try:
        values = client.mget([seen_key(sid) for sid in session_ids])
    except (RedisError, OSError) as exc:
        log.warning("redis unavailable, expiring by the database alone: %s", type(exc).__name__)
        return {}
    return {
        str(sid): datetime.fromtimestamp(int(value), UTC)
        for sid, value in zip(session_ids, values, strict=True)
        if value is not None
    }
