"""A session's events: stored durably, woken across processes, streamed as Server-Sent Events.

Writing (`append`, synchronous: the run's worker and the management API). An event is a row in the
organization's scope (AgentEvent), inserted under a lock its other writers take too (the session's
row for sending and ending runs; a running run's own row for its worker, whose rows `_finish`
updates: sessions_app.runs): the ids of one session's events are therefore committed in the order
they were assigned, so a reader that has seen id N never later finds a smaller id appear (what
makes `Last-Event-ID` exact). Once committed, its id is
published on Redis (`agentapi:session-events:<session>`); without Redis nothing is lost, streams
poll instead.

Reading (`stream`, async, on the data plane: sessions_app.streams). Each web process keeps one
Redis subscription for every stream it holds (`Wakeup`, a pattern subscription); a stream waits on
its session's wake-up (no thread held), then reads what follows its last id from the database. A
wake-up that is lost (Redis down, a message dropped) costs at most one poll interval: streams read
every SESSION_EVENTS_POLL_SECONDS while the subscription is down, and every heartbeat otherwise.
"""

import asyncio
import json
import logging

from django.conf import settings
from django.db import transaction
from redis.exceptions import RedisError

from sessions_app.liveness import sync_redis
from sessions_app.models import AgentEvent, AgentSession

log = logging.getLogger(__name__)

CHANNEL_PREFIX = "agentapi:session-events:"


def channel(session_id) -> str:
    return f"{CHANNEL_PREFIX}{session_id}"


def append(session: AgentSession, type_: str, data: dict, *, run_id=None, locked: bool = False) -> AgentEvent:
    """Store one event of a session and wake its streams once it is committed. `locked`: the
    caller's transaction holds the session's lock already (sessions_app.runs)."""
    return append_many(session, [(type_, data)], run_id=run_id, locked=locked)[0]


def append_many(session: AgentSession, items, *, run_id=None, locked: bool = False) -> list[AgentEvent]:
    """append() for several events, in order, in one insert."""
    session_id = session.pk
    with transaction.atomic():
        if not locked:
            # The session's row, locked: one session's event ids commit in the order they are taken.
            lock(session_id)
        created = AgentEvent.objects.bulk_create(
            [
                AgentEvent(
                    organization_id=session.organization_id, session_id=session_id, run_id=run_id, type=type_, data=data
                )  # fmt: skip
                for type_, data in items
            ]
        )
        last = created[-1].pk
        transaction.on_commit(lambda: publish(session_id, last))
    return created


def lock(session_id) -> None:
    """Take the session's row lock for the rest of the transaction (events and messages are
    ordered under it)."""
    list(AgentSession.objects.select_for_update(no_key=True).filter(pk=session_id).values_list("pk"))


def publish(session_id, event_id: int) -> None:
    client = sync_redis()
    if client is None:
        return
    try:
        client.publish(channel(session_id), str(event_id))
    except (RedisError, OSError) as exc:  # the streams poll meanwhile
        log.warning("redis unavailable, event streams will poll: %s", type(exc).__name__)


def sse(event_id: int | None, type_: str | None, data) -> bytes:
    """One Server-Sent Event (JSON data on one line)."""
    lines = []
    if event_id is not None:
        lines.append(f"id: {event_id}")
    if type_ is not None:
        lines.append(f"event: {type_}")
    lines.append("data: " + json.dumps(data, separators=(",", ":"), default=str))
    return ("\n".join(lines) + "\n\n").encode()


HEARTBEAT = b": heartbeat\n\n"


class Wakeup:
    """This process's one Redis subscription for every event stream it holds, on one event loop."""

    def __init__(self):
        self.waiters: dict[str, set[asyncio.Event]] = {}
        self.connected = False
        self._task: asyncio.Task | None = None

    def register(self, session_id: str) -> asyncio.Event:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._listen())
        event = asyncio.Event()
        self.waiters.setdefault(session_id, set()).add(event)
        return event

    def unregister(self, session_id: str, event: asyncio.Event) -> None:
        found = self.waiters.get(session_id)
        if found is not None:
            found.discard(event)
            if not found:
                del self.waiters[session_id]

    def interval(self) -> float:
        """How long a stream waits before reading anyway."""
        return settings.SESSION_EVENTS_HEARTBEAT_SECONDS if self.connected else settings.SESSION_EVENTS_POLL_SECONDS

    async def _listen(self) -> None:
        import redis.asyncio as aioredis

        while self.waiters or not self.connected:
            if not settings.REDIS_URL:
                return
            client = aioredis.Redis.from_url(settings.REDIS_URL, socket_connect_timeout=1.0)
            try:
                async with client.pubsub(ignore_subscribe_messages=True) as pubsub:
                    await pubsub.psubscribe(CHANNEL_PREFIX + "*")
                    self.connected = True
                    self._wake_all()  # anything published while it was down
                    while self.waiters:
                        message = await pubsub.get_message(timeout=5.0)
                        if message is None:
                            continue
                        session_id = message["channel"].decode()[len(CHANNEL_PREFIX) :]
                        for event in self.waiters.get(session_id, ()):
                            event.set()
                    self.connected = False
                    return
            except (RedisError, OSError) as exc:
                if self.connected:
                    log.warning("redis subscription lost, event streams poll: %s", type(exc).__name__)
                self.connected = False
                await asyncio.sleep(settings.SESSION_EVENTS_POLL_SECONDS)
            finally:
                self.connected = False
                await client.aclose()

    def _wake_all(self) -> None:
        for events in self.waiters.values():
            for event in events:
                event.set()


_wakeups: dict[int, Wakeup] = {}


def wakeup() -> Wakeup:
    """The running loop's subscription (one per loop: a web process has one)."""
    loop = asyncio.get_running_loop()
    found = _wakeups.get(id(loop))
    if found is None or found._task is not None and found._task.get_loop() is not loop:
        found = _wakeups[id(loop)] = Wakeup()
    return found


async def wait(event: asyncio.Event, timeout: float) -> bool:
    """True when woken, False when the timeout passed first."""
    try:
        await asyncio.wait_for(event.wait(), timeout)
    except TimeoutError:
        return False
    event.clear()
    return True
