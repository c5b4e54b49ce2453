"""The one place the admin and the user pages put a signed-in user's organizations in scope.

API requests are scoped by their view (tenants.api.base) and skipped here. Operators (superusers)
see every organization through the audited crossing, recorded once per admin session; staff who
are owners or admins of organizations see exactly those; anyone else, nothing.
"""

from agentapi import context as request_context
from tenants import scoping
from tenants.models import MANAGER_ROLES, memberships_of

CROSSING_RECORDED_KEY = "_agentapi_crossing_recorded"


def actor_for(user) -> scoping.Actor:
    return scoping.Actor(kind="user", user_id=user.pk, label=user.email)


def manageable_organization_ids(user) -> list[int]:
    return [m.organization_id for m in memberships_of(user) if m.role in MANAGER_ROLES and m.organization.is_active]


class SessionOrganizationMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        user = getattr(request, "user", None)
        if request.path.startswith("/api/") or user is None or not user.is_authenticated:
            return self.get_response(request)
        with self._scope_for(request, user):
            request_context.annotate(user=str(user.pk))
            return self.get_response(request)

    def _scope_for(self, request, user):
        if user.is_superuser:
            first_time = not request.session.get(CROSSING_RECORDED_KEY)
            if first_time:
                request.session[CROSSING_RECORDED_KEY] = True
            return scoping.dangerously_all_organizations(
                reason="operator admin session", record=first_time, actor=actor_for(user)
            )
        return scoping.organizations_scope(manageable_organization_ids(user), actor=actor_for(user))
