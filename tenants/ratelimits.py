"""The rate limits a caller is held to (agentapi.ratelimit decides them in one Redis round trip):
its credential's (the API key, or the user for JWT and browser sessions) and its organization's,
at the organization's own rates (its setting `rate_limits`) over the defaults (RATE_LIMITS)."""

from django.conf import settings
from rest_framework.throttling import BaseThrottle

from agentapi import context as request_context
from agentapi import ratelimit
from tenants.authentication import Principal

SAFE_METHODS = ("GET", "HEAD", "OPTIONS")


def subjects(principal: Principal) -> dict[str, str]:
    credential = (
        f"key:{principal.api_key.pk}" if principal.api_key is not None else f"user:{principal.membership.user_id}"
    )
    return {"credential": credential, "organization": str(principal.organization.pk)}


def limits(klass: str, principal: Principal) -> list[ratelimit.Limit]:
    """The class's limits for the principal, and (only checked) its address's failed
    authentications: an address over them is refused even with a valid credential."""
    overrides = (principal.organization.settings or {}).get("rate_limits")
    found = ratelimit.limits_for(klass, subjects(principal), overrides if isinstance(overrides, dict) else None)
    current = request_context.current()
    failures = ratelimit.failure_limit(current.ip if current is not None else None, spend=False)
    return found if failures is None else [*found, failures]


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


# The limits each credential was last held to, by its hash: a data-plane request starts its Redis
# round trip for them while its database round trip authenticates it (speculate), instead of one
# after the other. Authentication still decides: the speculation is used only when the principal
# it returns is held to exactly those limits, and a refused credential's speculation is dropped.
_known: dict[str, tuple[str, list]] = {}
MAX_KNOWN = 20_000


def _credential_hash(authorization: str) -> str:
    import hashlib

    return hashlib.sha256(authorization.encode("utf-8", "replace")).hexdigest()


class Speculation:
    def __init__(self, klass: str, authorization: str):
        import asyncio

        self.key = _credential_hash(authorization)
        known = _known.get(self.key)
        self.limits = known[1] if known is not None and known[0] == klass else None
        self.task = None
        if self.limits:
            self.task = asyncio.ensure_future(self._decide())

    async def _decide(self):
        try:
            return await ratelimit.check_async(self.limits, ratelimit.shared_redis()), None
        except Exception as exc:  # kept for enforce_async; never "never retrieved"
            return None, exc

    def drop(self):
        if self.task is not None and not self.task.done():
            self.task.cancel()


def speculate(klass: str, authorization: str) -> Speculation:
    return Speculation(klass, authorization)


async def enforce_async(klass: str, principal: Principal, speculation: Speculation | None = None) -> None:
    """The data plane's limits, after its authentication: raises RateLimited; an admitted request's
    fields go out with its answer (agentapi.dataplane.serve sends ratelimit.admitted_headers)."""
    held = limits(klass, principal)
    if speculation is not None and speculation.task is not None and speculation.limits == held:
        decision, refused = await speculation.task
        if refused is not None:
            raise refused
    else:
        if speculation is not None:
            speculation.drop()
        decision = await ratelimit.check_async(held, ratelimit.shared_redis())
    if speculation is not None:
        if len(_known) > MAX_KNOWN:
            _known.clear()
        _known[speculation.key] = (klass, held)
    ratelimit.admitted_headers.set(ratelimit.headers(decision))
