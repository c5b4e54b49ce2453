"""The user pages' choice of organization: a signed-in person acts in one of their memberships."""

from django.contrib.auth.decorators import login_required
from django.http import HttpResponseBadRequest
from django.shortcuts import redirect, render
from django.utils.http import url_has_allowed_host_and_scheme

from tenants.authentication import SESSION_ORGANIZATION_KEY, session_membership
from tenants.models import memberships_of


@login_required
def choose_organization(request):
    memberships = memberships_of(request.user)
    if request.method == "POST":
        chosen = request.POST.get("organization", "")
        if not chosen.isdigit() or int(chosen) not in {m.organization_id for m in memberships}:
            return HttpResponseBadRequest("Not one of your organizations.")
        request.session[SESSION_ORGANIZATION_KEY] = int(chosen)
        next_url = request.POST.get("next", "")
        if not url_has_allowed_host_and_scheme(next_url, {request.get_host()}, request.is_secure()):
            next_url = "/admin/"
        return redirect(next_url)
    current = session_membership(request, request.user)
    return render(
        request,
        "tenants/choose_organization.html",
        {"memberships": memberships, "current": current.organization_id if current else None},
    )
