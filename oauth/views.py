"""The provider's redirect target: a page for the person, and a message for the window that opened
it (the connect popup). Nothing is stored when the flow fails; every outcome is audited."""

from django.db import transaction
from django.shortcuts import render
from django.views.decorators.http import require_GET

from oauth import services


@require_GET
@transaction.non_atomic_requests  # the exchange waits on the provider; writes have their own transactions
def callback(request):
    state = request.GET.get("state", "")[:200]
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
        return render(request, "oauth/callback.html", context, status=failure.status)
    result = {"ok": True, "code": "connected", "connection": token.pk, "provider": token.provider_id}
    context = {
        "ok": True,
        "code": "connected",
        "message": "Your account is connected.",
        "provider": token.provider,
        "result": result,
    }
    return render(request, "oauth/callback.html", context)
