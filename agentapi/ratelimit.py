"""Rate limits: per credential and per organization, per class of endpoint (DESIGN.md: `mcp`,
`agent`, `write`, `read`, `auth`), shared by every process through Redis.

Every limit that applies to a request is decided in one Redis round trip: one Lua script runs GCRA
(the generic cell rate algorithm) over each limit's key on Redis's own clock (so the hosts' clocks
do not matter), and refuses if any limit would be exceeded, in which case it spends nothing of the
others. A limit of N per period admits a burst of N, then one every period/N.

Why not django-ratelimit, which the design card names (tenants.signin keeps it for the admin's
sign-in, where it fits): its counter is a fixed window of two cache round trips per limit (a burst
across a window's edge gets twice the rate, and several limits cost several round trips), it
refuses with 403, sends no RateLimit headers, and fails closed when the cache does. None of those
can be configured away; a script of our own is a dozen lines.

When Redis is unreachable, RATE_LIMIT_FAIL_MODE decides: `local` (each process limits on its own,
at each limit divided by RATE_LIMIT_EXPECTED_PROCESSES), `open` (nothing is limited) or `closed`
(every limited request is refused with 503 and Retry-After); the `auth` class is never open (open
falls back to local for it).

An organization's own limits are its setting `rate_limits`, `{"read": {"credential": "600/minute",
"organization": "6000/minute"}, ...}`, over the defaults in RATE_LIMITS.
"""

import logging
import math
import threading
import time
from contextvars import ContextVar
from dataclasses import dataclass, replace

from django.conf import settings
from prometheus_client import Counter
from rest_framework import exceptions

log = logging.getLogger(__name__)

CLASSES = ("mcp", "agent", "write", "read", "auth")
SCOPES = ("credential", "organization", "address")
PERIODS = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}

# The data plane's admitted request: its RateLimit fields, sent with its answer.
admitted_headers: ContextVar[dict] = ContextVar("agentapi_rate_limit_headers", default={})  # noqa: B039 (never mutated)

REFUSED = Counter("agentapi_rate_limited_total", "Requests refused by a rate limit", ["class", "scope"])


@dataclass(frozen=True)
class Limit:
    klass: str
    scope: str
    subject: str  # whose: the credential, the organization, the address
    count: int
    period: int
    spend: bool = True  # False: only checked (an address's failed authentications, on a success)

    @property
    def policy(self) -> str:
        return f"{self.klass}-{self.scope}"

    @property
    def key(self) -> str:
        return f"agentapi:rl:{self.klass}:{self.scope}:{self.subject}"

    @property
    def rate(self) -> str:
        name = next(name for name, seconds in PERIODS.items() if seconds == self.period)
        return f"{self.count}/{name}"


@dataclass
class Decision:
    limits: list[Limit]
    refused_by: Limit | None
    retry_after: float  # seconds (0 when allowed)
    remaining: list[int]
    reset: list[float]  # seconds until each limit is whole again


class RateLimited(exceptions.Throttled):
    """429 `rate_limited`, naming the limit, with Retry-After (agentapi.errors)."""

    def __init__(self, decision: Decision):
        limit = decision.refused_by
        super().__init__(
            wait=max(1, math.ceil(decision.retry_after)),
            detail=f"Rate limit exceeded: {limit.rate} for {limit.klass} requests per {limit.scope}.",
        )
        self.decision = decision
        self.details = {"limit": limit.policy, "rate": limit.rate}


class LimitsUnavailable(exceptions.APIException):
    """503: Redis is down and the limits fail closed."""

    status_code = 503
    default_detail = "Rate limits cannot be checked right now; try again shortly."
    default_code = "rate_limits_unavailable"

    def __init__(self):
        super().__init__()
        self.wait = 5


# -- rates ---------------------------------------------------------------------------------------


def parse(rate) -> tuple[int, int]:
    """ "600/minute" -> (600, 60). Raises ValueError."""
    if not isinstance(rate, str) or rate.count("/") != 1:
        raise ValueError("A rate is COUNT/PERIOD, e.g. 600/minute.")
    count, period = rate.split("/")
    if not count.isdigit() or not 0 < int(count) <= 10_000_000 or period not in PERIODS:
        raise ValueError(f"A rate is COUNT/PERIOD: a count from 1 to 10000000, a period of {', '.join(PERIODS)}.")
    return int(count), PERIODS[period]


def check_overrides(value) -> dict:
    """An organization's `rate_limits` setting, checked. Raises ValueError naming what is wrong."""
    if not isinstance(value, dict):
        raise ValueError('An object of classes to scopes to rates: {"read": {"credential": "600/minute"}}.')
    for klass, scopes in value.items():
        if klass not in CLASSES:
            raise ValueError(f"Unknown class {klass!r}; the classes are {', '.join(CLASSES)}.")
        if not isinstance(scopes, dict):
            raise ValueError(f"{klass}: an object of scopes ({', '.join(SCOPES)}) to rates.")
        for scope, rate in scopes.items():
            if scope not in SCOPES:
                raise ValueError(f"{klass}: unknown scope {scope!r}; the scopes are {', '.join(SCOPES)}.")
            try:
                parse(rate)
            except ValueError as exc:
                raise ValueError(f"{klass}.{scope}: {exc}") from None
    return value


def limits_for(klass: str, subjects: dict[str, str], overrides: dict | None = None) -> list[Limit]:
    """The limits of a class for the given subjects ({"credential": "key:12", "organization": "3"}),
    the organization's own rates over the defaults."""
    defaults = settings.RATE_LIMITS.get(klass, {})  # checked at start-up (agentapi.checks)
    own = (overrides or {}).get(klass) or {}
    found = []
    for scope, subject in subjects.items():
        rate = own.get(scope) if isinstance(own, dict) else None
        try:
            count, period = parse(rate) if rate is not None else parse(defaults[scope])
        except ValueError:  # an organization's stored rate that no longer parses: the default holds
            log.warning("rate limits: ignoring an invalid rate %r for %s.%s", str(rate)[:50], klass, scope)
            count, period = parse(defaults[scope])
        except KeyError:
            continue  # no limit of this scope for this class
        if subject:
            found.append(Limit(klass, scope, str(subject), count, period))
    return found


# -- deciding ------------------------------------------------------------------------------------

# KEYS: one per limit. ARGV: per limit, its emission interval and its burst tolerance (the
# period), in microseconds, and 1 to spend from it or 0 only to check it. Returns: the refusing
# limit's position (0: none) and how long until it admits, then per limit what remains and how
# long until it is whole. Nothing is written when one refuses.
# A key holds "TAT:INTERVAL": when the limit's rate has changed since (an organization's own rates
# edited), what was spent carries over as a number of requests, rescaled to the new interval, so a
# raised limit admits at once what it now allows and a lowered one refuses at once.
GCRA = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local refused, wait, tats = 0, 0, {}
for i = 1, #KEYS do
  local interval, tau = tonumber(ARGV[3 * i - 2]), tonumber(ARGV[3 * i - 1])
  local stored, tat = redis.call('GET', KEYS[i]), now
  if stored then
    local at, was = string.match(stored, '^([%d%.]+):([%d%.]+)$')
    tat = tonumber(at or stored) or now
    was = tonumber(was)
    if was and was > 0 and was ~= interval and tat > now then tat = now + (tat - now) * interval / was end
  end
  if tat < now then tat = now end
  tats[i] = tat + interval
  if tats[i] - tau > now and refused == 0 then refused, wait = i, tats[i] - tau - now end
end
local out = {refused, wait}
for i = 1, #KEYS do
  local interval, tau, spend = tonumber(ARGV[3 * i - 2]), tonumber(ARGV[3 * i - 1]), ARGV[3 * i] == '1'
  local tat = tats[i]
  if refused == 0 and spend then
    redis.call('SET', KEYS[i], string.format('%.0f:%.0f', tat, interval), 'PX', math.ceil((tat - now) / 1000) + 1)
  else
    tat = tat - interval
  end
  out[#out + 1] = math.max(0, math.floor((now + tau - tat) / interval))
  out[#out + 1] = math.max(0, tat - now)
end
return out
"""


def _arguments(limits: list[Limit]) -> list[int]:
    argv = []
    for limit in limits:
        period = limit.period * 1_000_000
        argv += [period // limit.count, period, int(limit.spend)]
    return argv


def _decision(limits: list[Limit], reply, scale: float = 1e6) -> Decision:
    refused, wait = int(reply[0]), float(reply[1]) / scale
    remaining = [int(reply[2 + 2 * i]) for i in range(len(limits))]
    reset = [float(reply[3 + 2 * i]) / scale for i in range(len(limits))]
    return Decision(limits, limits[refused - 1] if refused else None, wait, remaining, reset)


class _Local:
    """The same algorithm in this process's memory (Redis down, fail mode `local`), each limit
    divided by RATE_LIMIT_EXPECTED_PROCESSES."""

    def __init__(self):
        self.tats: dict[str, tuple[float, float]] = {}  # key: (TAT, the interval it was spent at)
        self.lock = threading.Lock()

    def decide(self, limits: list[Limit]) -> Decision:
        share = max(1, settings.RATE_LIMIT_EXPECTED_PROCESSES)
        now = time.monotonic()
        with self.lock:
            if len(self.tats) > 100_000:
                self.tats = {key: kept for key, kept in self.tats.items() if kept[0] > now}
            refused, wait, tats = None, 0.0, []
            for limit in limits:
                count = max(1, limit.count // share)
                interval, tau = limit.period / count, float(limit.period)
                tat, was = self.tats.get(limit.key, (now, interval))
                if was != interval and tat > now:  # the rate changed: what was spent carries over
                    tat = now + (tat - now) * interval / was
                tat = max(tat, now) + interval
                tats.append((tat, interval, tau, count))
                if tat - tau > now and refused is None:
                    refused, wait = limit, tat - tau - now
            remaining, reset = [], []
            for limit, (tat, interval, tau, _count) in zip(limits, tats, strict=True):
                if refused is None and limit.spend:
                    self.tats[limit.key] = (tat, interval)
                else:
                    tat -= interval
                remaining.append(max(0, math.floor((now + tau - tat) / interval)))
                reset.append(max(0.0, tat - now))
        # The fields say what this process enforces: each limit's share.
        shares = [replace(limit, count=max(1, limit.count // share)) for limit in limits]
        refused_share = shares[limits.index(refused)] if refused is not None else None
        return Decision(shares, refused_share, wait, remaining, reset)


_local = _Local()


def _fallback(limits: list[Limit]) -> Decision | None:
    """Redis is unreachable: the fail mode's answer (None: not limited)."""
    mode = settings.RATE_LIMIT_FAIL_MODE
    if mode == "open":  # for every class but `auth`, which is decided locally
        limits = [limit for limit in limits if limit.klass == "auth"]
        if not limits:
            return None
    if mode == "closed":
        raise LimitsUnavailable()
    return _local.decide(limits)


def _finish(decision: Decision | None) -> Decision | None:
    if decision is not None and decision.refused_by is not None:
        REFUSED.labels(decision.refused_by.klass, decision.refused_by.scope).inc()
        raise RateLimited(decision)
    return decision


class _SyncRedis:
    """The synchronous planes' client: after a failure, Redis is skipped for a few seconds instead
    of every request waiting on its timeout."""

    def __init__(self):
        self.client = None
        self.script = None
        self.down_until = 0.0

    def get(self):
        if not settings.REDIS_URL or time.monotonic() < self.down_until:
            return None
        if self.client is None:
            import redis

            self.client = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=0.25, socket_connect_timeout=0.25)
            self.script = self.client.register_script(GCRA)
        return self.client

    def failed(self):
        self.down_until = time.monotonic() + 5.0


_sync = _SyncRedis()


def redis_down() -> bool:
    """Whether the limits are on their fallback (readiness says so)."""
    return bool(settings.REDIS_URL) and time.monotonic() < _sync.down_until


def check(limits: list[Limit]) -> Decision | None:
    """Decide, synchronously; raises RateLimited (or LimitsUnavailable, failing closed)."""
    if not limits:
        return None
    client = _sync.get()
    if client is None:
        return _finish(_fallback(limits))
    try:
        reply = _sync.script(keys=[limit.key for limit in limits], args=_arguments(limits), client=client)
    except Exception as exc:  # any Redis failure: the fail mode decides
        log.warning("rate limits: redis unavailable (%s)", type(exc).__name__)
        _sync.failed()
        return _finish(_fallback(limits))
    return _finish(_decision(limits, reply))


_async_scripts: dict[int, tuple] = {}  # each event loop's client, and its registered script


async def check_async(limits: list[Limit], redis) -> Decision | None:
    """check() on an event loop; `redis` an agentapi.resilience.SharedRedis or None."""
    if not limits:
        return None
    if redis is None or not redis.available:
        return _finish(_fallback(limits))
    keys, args = [limit.key for limit in limits], _arguments(limits)
    script = _async_scripts.get(id(redis.client))
    if script is None or script[0] is not redis.client:
        script = _async_scripts[id(redis.client)] = (redis.client, redis.client.register_script(GCRA))
    # EVALSHA (the script by its digest), loaded again by redis-py if Redis has forgotten it.
    reply = await redis.run(lambda client: script[1](keys=keys, args=args, client=client))
    if reply is None:
        return _finish(_fallback(limits))
    return _finish(_decision(limits, reply))


def headers(decision: Decision | None) -> dict[str, str]:
    """The IETF fields (draft-ietf-httpapi-ratelimit-headers): every policy that applied, and
    what remains of each (the one closest to refusing first). A limit only checked (an address's
    failed authentications, on a request that authenticated) is named only when it refused."""
    if decision is None:
        return {}
    shown = [i for i, limit in enumerate(decision.limits) if limit.spend or limit is decision.refused_by]
    if not shown:
        return {}
    policy = ", ".join(f'"{decision.limits[i].policy}";q={decision.limits[i].count};w={decision.limits[i].period}'
                       for i in shown)  # fmt: skip
    order = sorted(shown, key=lambda i: decision.remaining[i])
    current = ", ".join(
        f'"{decision.limits[i].policy}";r={decision.remaining[i]};t={math.ceil(decision.reset[i])}' for i in order
    )
    return {"RateLimit-Policy": policy, "RateLimit": current}


# -- failed authentications ------------------------------------------------------------------------
# An address that fails to authenticate more than RATE_LIMIT_AUTH_FAILURES times is refused (429)
# until its failures age out, whatever it presents next, valid or not, so that it learns nothing
# from guessing. Only failures spend (an attacker pays, a user does not); a request that
# authenticates has the address's failures checked in the same round trip as its own limits
# (tenants.ratelimits.limits), so this costs legitimate traffic nothing.


def failure_limit(address: str | None, *, spend: bool) -> Limit | None:
    if not address:
        return None
    count, period = parse(settings.RATE_LIMIT_AUTH_FAILURES)
    return Limit("auth", "failures", address, count, period, spend=spend)


def _address() -> str | None:
    from agentapi import context

    current = context.current()
    return current.ip if current is not None else None


def after_failure(exc: exceptions.APIException) -> exceptions.APIException:
    """What to answer for a refused credential (an AuthenticationFailed, not a missing one) from
    the request's address: the exception itself, or RateLimited once the address has failed too
    often. Synchronous planes."""
    limit = failure_limit(_address(), spend=True) if isinstance(exc, exceptions.AuthenticationFailed) else None
    if limit is None:
        return exc
    try:
        check([limit])
    except (RateLimited, LimitsUnavailable) as refusal:
        return refusal
    return exc


async def after_failure_async(exc: exceptions.APIException) -> exceptions.APIException:
    """after_failure on an event loop (the data plane)."""
    limit = failure_limit(_address(), spend=True) if isinstance(exc, exceptions.AuthenticationFailed) else None
    if limit is None:
        return exc
    try:
        await check_async([limit], shared_redis())
    except (RateLimited, LimitsUnavailable) as refusal:
        return refusal
    return exc


_shared: tuple | None = None  # (loop, agentapi.resilience.SharedRedis)


def shared_redis():
    """The running loop's Redis client for the limits (one per process, made on its loop)."""
    import asyncio

    from agentapi.resilience import SharedRedis

    global _shared
    if not settings.REDIS_URL:
        return None
    loop = asyncio.get_running_loop()
    if _shared is None or _shared[0] is not loop:
        _shared = (loop, SharedRedis(settings.REDIS_URL))
    return _shared[1]
