"""Circuit breakers whose state every process shares through Redis, and retries with backoff.

Why not pybreaker: its Redis storage makes three to five synchronous Redis round trips on every
call (state, counters, opened_at), which would block the event loop the MCP pool runs on and adds
latency to the hot path; it also offers no way to read the state from a local copy. Here a closed
breaker is read from a local copy refreshed at most every `sync_interval` seconds, so a healthy
call costs no Redis round trip; failures, openings and probes always go to Redis, so a breaker
that opens in one process is seen open by every other within `sync_interval`. When Redis is
unreachable each process goes on with its local state (and readiness reports Redis as failing).

States: closed (calls pass, failures counted); open (calls refused with the seconds until the
reset timeout); after the reset timeout one caller, chosen through Redis (SET NX), probes: its
success closes the breaker, its failure opens it again.
"""

import asyncio
import logging
import random
import time
from dataclasses import dataclass

import redis.asyncio as aioredis
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

CLOSED, OPEN = "closed", "open"

# Count a failure and open the breaker when the count reaches fail_max, in one step.
_FAIL_SCRIPT = """
local failures = redis.call('HINCRBY', KEYS[1], 'failures', 1)
redis.call('PEXPIRE', KEYS[1], ARGV[3])
if tonumber(failures) >= tonumber(ARGV[1]) then
  redis.call('HSET', KEYS[1], 'state', 'open', 'opened_at', ARGV[2])
end
return redis.call('HMGET', KEYS[1], 'state', 'failures', 'opened_at')
"""


class BreakerOpen(Exception):
    def __init__(self, name: str, retry_after: float):
        super().__init__(f"circuit breaker {name} is open")
        self.retry_after = max(1, int(retry_after + 0.999))


@dataclass
class _State:
    state: str = CLOSED
    failures: int = 0
    opened_at: float = 0.0
    read_at: float = 0.0


class SharedRedis:
    """An asyncio Redis client for one event loop that backs off after a failure: while Redis is
    down, callers skip it for `retry_after` seconds instead of waiting on a timeout every call."""

    def __init__(self, url: str, *, timeout: float = 0.25, retry_after: float = 5.0):
        self.client = (
            aioredis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout) if url else None
        )
        self.retry_after = retry_after
        self.down_until = 0.0

    @property
    def available(self) -> bool:
        return self.client is not None and time.monotonic() >= self.down_until

    async def run(self, operation):
        """operation(client) awaited; None when Redis is unavailable or fails (then skipped a while)."""
        if not self.available:
            return None
        try:
            return await operation(self.client)
        except (RedisError, OSError) as exc:
            log.warning("redis unavailable, continuing without it: %s", type(exc).__name__)
            self.down_until = time.monotonic() + self.retry_after
            return None

    async def close(self):
        if self.client is not None:
            await self.client.aclose()


class Breaker:
    def __init__(
        self, name: str, redis: SharedRedis, *, fail_max=5, reset_timeout=30.0, sync_interval=1.0, on_change=None
    ):
        self.name = name
        self.redis = redis
        self.fail_max = fail_max
        self.reset_timeout = reset_timeout
        self.sync_interval = sync_interval
        self.on_change = on_change
        self.key = f"breaker:{name}"
        self._local = _State()
        self._probing = False

    @property
    def state(self) -> str:
        return self._local.state

    def _set(self, state: str, failures: int, opened_at: float) -> None:
        previous = self._local.state
        self._local = _State(state, failures, opened_at, time.monotonic())
        if previous != state and self.on_change:
            self.on_change(self.name, state)

    async def _refresh(self) -> None:
        if time.monotonic() - self._local.read_at < self.sync_interval and self._local.state == CLOSED:
            return
        values = await self.redis.run(lambda r: r.hmget(self.key, "state", "failures", "opened_at"))
        if values is None:
            self._local.read_at = time.monotonic()
            return
        self._from_redis(values)

    def _from_redis(self, values) -> None:
        state, failures, opened_at = values
        self._set(
            state.decode() if state else CLOSED,
            int(failures or 0),
            float(opened_at or 0.0),
        )

    async def before_call(self) -> None:
        """Raise BreakerOpen unless a call may go ahead (a closed breaker, or this caller probes)."""
        await self._refresh()
        if self._local.state != OPEN:
            return
        remaining = self._local.opened_at + self.reset_timeout - time.time()
        if remaining > 0:
            raise BreakerOpen(self.name, remaining)
        if self.redis.available:
            won = await self.redis.run(
                lambda r: r.set(f"{self.key}:probe", "1", nx=True, px=int(self.reset_timeout * 1000))
            )
        else:
            won = not self._probing
        if not won:
            raise BreakerOpen(self.name, 1)
        self._probing = True

    async def success(self) -> None:
        if self._local.state == CLOSED and self._local.failures == 0 and not self._probing:
            return
        self._probing = False
        await self.redis.run(lambda r: r.delete(self.key, f"{self.key}:probe"))
        self._set(CLOSED, 0, 0.0)

    async def failure(self) -> None:
        now = time.time()
        if self._probing or self._local.state == OPEN:
            self._probing = False

            async def reopen(r):
                await r.hset(self.key, mapping={"state": OPEN, "opened_at": now, "failures": self.fail_max})
                await r.pexpire(self.key, int(self.reset_timeout * 10_000))
                await r.delete(f"{self.key}:probe")

            await self.redis.run(reopen)
            self._set(OPEN, self.fail_max, now)
            return
        ttl_ms = int(max(self.reset_timeout * 10, 60) * 1000)
        values = await self.redis.run(lambda r: r.eval(_FAIL_SCRIPT, 1, self.key, self.fail_max, now, ttl_ms))
        if values is not None:
            self._from_redis(values)
            return
        failures = self._local.failures + 1
        self._set(OPEN if failures >= self.fail_max else CLOSED, failures, now if failures >= self.fail_max else 0.0)


async def retry_async(operation, *, attempts: int, retry_on, base: float = 0.1, cap: float = 2.0):
    """Await operation() up to `attempts` times, sleeping with full jitter (exponential backoff)
    between tries, for exceptions of the types in `retry_on` only. (tenacity does this too; the
    loop is short enough that a dependency is not worth it.)"""
    for attempt in range(attempts):
        try:
            return await operation()
        except retry_on:
            if attempt == attempts - 1:
                raise
            await asyncio.sleep(random.uniform(0, min(cap, base * 2**attempt)))
