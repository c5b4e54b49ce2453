"""The rate limits a caller is held to (agentapi.ratelimit decides them in one Redis round trip):
its credential's (the API key, or the user for JWT and browser sessions) and its organization's,
at the organization's own rates (its setting `rate_limits`) over the defaults (RATE_LIMITS)."""

from django.conf import settings
from rest_framework.throttling import BaseThrottle

from agentapi import ratelimit
from tenants.authentication import Principal

SAFE_METHODS = ("GET", "HEAD", "OPTIONS")


def subjects(principal: Principal) -> dict[str, str]:
    credential = (
        f"key:{principal.api_key.pk}" if principal.api_key is not None else f"user:{principal.membership.user_id}"
    )
    return {"credential": credential, "organization": str(principal.organization.pk)}


def limits(klass: str, principal: Principal) -> list[ratelimit.Limit]:
    overrides = (principal.organization.settings or {}).get("rate_limits")
    return ratelimit.limits_for(klass, subjects(principal), overrides if isinstance(overrides, dict) else None)


def class_of(route_name: str | None, method: str) -> str:
    """A request's class: its route's (settings.RATE_LIMIT_ROUTE_CLASSES; `auth` routes whatever
    the method, the others when they POST), else `read` or `write` by its method."""
    klass = settings.RATE_LIMIT_ROUTE_CLASSES.get(route_name or "")
    if klass is not None and (klass == "auth" or method == "POST"):
        return klass
    return "read" if method in SAFE_METHODS else "write"


class RateLimitThrottle(BaseThrottle):
    """The management plane's limits, after authentication (DRF runs throttles then). A refusal is
    raised here (429 `rate_limited` naming the limit, with Retry-After and the RateLimit fields);
    an admitted request's fields are left on the request for agentapi.middleware to send."""

    def allow_request(self, request, view):
        principal = request.auth if isinstance(request.auth, Principal) else None
        if principal is None:
            return True  # anonymous routes (health, the OAuth callback) are limited where they live
        match = request.resolver_match
        klass = class_of(match.url_name if match else None, request.method)
        decision = ratelimit.check(limits(klass, principal))
        request._request.rate_limit_headers = ratelimit.headers(decision)
        return True


_shared: tuple | None = None  # (loop, agentapi.resilience.SharedRedis)


def _redis():
    import asyncio

    from agentapi.resilience import SharedRedis

    global _shared
    if not settings.REDIS_URL:
        return None
    loop = asyncio.get_running_loop()
    if _shared is None or _shared[0] is not loop:
        _shared = (loop, SharedRedis(settings.REDIS_URL))
    return _shared[1]


async def enforce_async(klass: str, principal: Principal) -> None:
    """The data plane's limits, after its authentication: raises RateLimited; an admitted request's
    fields go out with its answer (agentapi.dataplane.serve sends ratelimit.admitted_headers)."""
    decision = await ratelimit.check_async(limits(klass, principal), _redis())
    ratelimit.admitted_headers.set(ratelimit.headers(decision))
