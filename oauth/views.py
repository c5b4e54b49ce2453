"""The provider's redirect target: a page for the person, and a message for the window that opened
it (the connect popup). Nothing is stored when the flow fails; every outcome is audited."""

from django.contrib.auth.decorators import login_required
from django.db import transaction
from django.http import HttpResponseBadRequest
from django.shortcuts import redirect, render
from django.views.decorators.csrf import ensure_csrf_cookie
from django.views.decorators.http import require_GET, require_http_methods

from agentapi import ratelimit
from agentapi.middleware import client_ip
from oauth import services
from oauth.models import Kind, OAuthProvider, OAuthToken
from tenants import scoping
from tenants.authentication import session_membership


def _keeps_opener(response):
    """The callback runs in the popup after a visit to the provider's origin: with the default
    same-origin opener policy the browser would cut it from the page that opened it, and the page
    would never hear the result (it posts only to its own origin, see the template)."""
    response["Cross-Origin-Opener-Policy"] = "unsafe-none"
    return response


@require_GET
@transaction.non_atomic_requests  # the exchange waits on the provider; writes have their own transactions
def callback(request):
    state = request.GET.get("state", "")[:200]
    try:
        # The `auth` class's limit per address: a browser comes back once per connection made.
        ratelimit.check(ratelimit.limits_for("auth", {"address": client_ip(request) or "unknown"}))
    except ratelimit.RateLimited as refused:
        context = {"ok": False, "code": "rate_limited", "message": str(refused.detail), "provider": None,
                   "result": {"ok": False, "code": "rate_limited"}}  # fmt: skip
        response = render(request, "oauth/callback.html", context, status=429)
        response["Retry-After"] = str(int(refused.wait))
        for name, value in ratelimit.headers(refused.decision).items():
            response[name] = value
        return _keeps_opener(response)
    except ratelimit.LimitsUnavailable as unavailable:
        context = {"ok": False, "code": "rate_limits_unavailable", "message": str(unavailable.detail),
                   "provider": None, "result": {"ok": False, "code": "rate_limits_unavailable"}}  # fmt: skip
        response = render(request, "oauth/callback.html", context, status=503)
        response["Retry-After"] = str(unavailable.wait)
        return _keeps_opener(response)
    try:
        token = services.authorization_complete(
            state=state, code=request.GET.get("code", "")[:2000], error=request.GET.get("error", "")[:200]
        )
    except services.FlowError as failure:
        result = {"ok": False, "code": failure.code}
        context = {
            "ok": False,
            "code": failure.code,
            "message": str(failure),
            "provider": failure.provider,
            "result": result,
        }
        return _keeps_opener(render(request, "oauth/callback.html", context, status=failure.status))
    result = {"ok": True, "code": "connected", "connection": token.pk, "provider": token.provider_id}
    context = {
        "ok": True,
        "code": "connected",
        "message": "Your account is connected.",
        "provider": token.provider,
        "result": result,
    }
    return _keeps_opener(render(request, "oauth/callback.html", context))


@login_required
@ensure_csrf_cookie  # the page's script calls the API with the session: it needs the CSRF cookie
@require_http_methods(["GET", "POST"])
def connections(request):
    """The signed-in user's connections in their chosen organization: providers open to them,
    connect (a popup; see the template), each connection's status, disconnect."""
    membership = session_membership(request, request.user)
    if membership is None:
        return render(request, "oauth/connections.html", {"membership": None}, status=403)
    actor = scoping.Actor(kind="user", user_id=request.user.pk, label=request.user.email)
    with scoping.organization_scope(membership.organization, actor=actor):
        if request.method == "POST":
            token = OAuthToken.objects.filter(pk=_int(request.POST.get("connection")), user=request.user).first()
            if token is None:
                return HttpResponseBadRequest("Not one of your connections.")
            services.revoke(token=token)
            return redirect("oauth-connections")
        tokens = {t.provider_id: t for t in OAuthToken.objects.filter(user=request.user).select_related("provider")}
        providers = [p for p in OAuthProvider.objects.order_by("name") if p.kind != Kind.MCP or p.pk in tokens]
        rows = [{"provider": p, "connection": tokens.get(p.pk)} for p in providers]
        response = render(request, "oauth/connections.html", {"membership": membership, "rows": rows})
        # The popup goes to the provider and back: the page keeps its link to it.
        response["Cross-Origin-Opener-Policy"] = "same-origin-allow-popups"
        return response


def _int(value) -> int | None:
    return int(value) if isinstance(value, str) and value.isdigit() else None
