"""The one place the admin and the user pages put a signed-in user's organizations in scope.

API requests are scoped by their view (tenants.api.base) and skipped here. Operators (superusers)
see every organization through the audited crossing, recorded once per admin session; staff who
are owners or admins of organizations see exactly those; anyone else, their chosen organization.
"""

from contextlib import ExitStack

from asgiref.sync import async_to_sync, sync_to_async

from agentapi import context as request_context
from agentapi.db.scope import DatabaseScope, use_scope
from agentapi.middleware import HybridMiddleware
from tenants import scoping
from tenants.models import MANAGER_ROLES, Membership

CROSSING_RECORDED_KEY = "_agentapi_crossing_recorded"


def actor_for(user) -> scoping.Actor:
    return scoping.Actor(kind="user", user_id=user.pk, label=user.email)


def manageable_organization_ids(user) -> list[int]:
    with use_scope(DatabaseScope(user_id=user.pk)):
        return list(
            Membership._base_manager.filter(
                user=user, role__in=MANAGER_ROLES, organization__is_active=True
            ).values_list("organization_id", flat=True)
        )


def _is_api(request) -> bool:
    return request.path.startswith("/api/")


class SessionOrganizationMiddleware(HybridMiddleware):
    def call(self, request):
        user = getattr(request, "user", None)
        if _is_api(request) or user is None or not user.is_authenticated:
            return self.get_response(request)
        with ExitStack() as stack:
            stack.enter_context(self._scope_for(request, user))
            request_context.annotate(user=str(user.pk))
            return self.get_response(request)

    async def acall(self, request):
        if _is_api(request):  # the API view scopes its own request: straight through
            return await self.get_response(request)
        # Admin and user pages read the session and memberships (sync database work): they take
        # the sync path in a thread. They are not the hot path; the API is.
        return await sync_to_async(self._call_in_thread)(request)

    def _call_in_thread(self, request):
        user = request.user
        if not user.is_authenticated:
            return async_to_sync(self.get_response)(request)
        with self._scope_for(request, user):
            request_context.annotate(user=str(user.pk))
            return async_to_sync(self.get_response)(request)

    def _scope_for(self, request, user):
        actor = actor_for(user)
        if user.is_superuser:
            first_time = not request.session.get(CROSSING_RECORDED_KEY)
            if first_time:
                request.session[CROSSING_RECORDED_KEY] = True
            return scoping.dangerously_all_organizations(reason="operator admin session", record=first_time)
        return scoping.organizations_scope(manageable_organization_ids(user), actor=actor)
