"""The base of every API view: the one place an API request's organization is put in scope.

Views under /api/v1/ inherit TenantAPIViewMixin (tests/tenants/test_coverage.py fails for one that
does not, unless it is listed as an operator-only global view). The mixin authenticates, enters the
principal's organization for the rest of the request, and turns a lookup that found nothing into a
404 that is reported (the audit app records it as denied when the id exists in another organization).
"""

from contextlib import ExitStack

from django.http import Http404
from rest_framework import permissions, viewsets

from agentapi import context as request_context
from tenants import scoping, security
from tenants.authentication import Principal
from tenants.models import MANAGER_ROLES


class TenantAPIViewMixin:
    def initial(self, request, *args, **kwargs):
        self.perform_authentication(request)
        principal = request.auth
        if isinstance(principal, Principal):
            self._tenant_scope = ExitStack()
            self._tenant_scope.enter_context(scoping.organization_scope(principal.organization, actor=principal.actor))
            request_context.annotate(user=str(principal.membership.user_id))
        super().initial(request, *args, **kwargs)

    def dispatch(self, request, *args, **kwargs):
        try:
            return super().dispatch(request, *args, **kwargs)
        finally:
            scope = getattr(self, "_tenant_scope", None)
            if scope is not None:
                scope.close()

    def get_object(self):
        try:
            return super().get_object()
        except Http404:
            lookup = self.kwargs.get(self.lookup_url_kwarg or self.lookup_field)
            model = self.get_queryset().model
            security.report("lookup_denied", model=model._meta.label, pk=lookup)
            raise

    @property
    def principal(self) -> Principal:
        return self.request.auth


class TenantViewSet(TenantAPIViewMixin, viewsets.GenericViewSet):
    """A viewset over one tenant model: its queryset is scoped by the model's default manager."""

    lookup_value_regex = r"[0-9]+"


class IsOrganizationMember(permissions.BasePermission):
    def has_permission(self, request, view):
        return isinstance(request.auth, Principal)


class IsOrganizationManager(IsOrganizationMember):
    """Owners and admins manage members, keys and their organization's configuration."""

    def has_permission(self, request, view):
        return super().has_permission(request, view) and request.auth.role in MANAGER_ROLES


class ManagersWriteMembersRead(IsOrganizationMember):
    def has_permission(self, request, view):
        if not super().has_permission(request, view):
            return False
        return request.method in permissions.SAFE_METHODS or request.auth.role in MANAGER_ROLES


class IsOperator(permissions.BasePermission):
    """Platform operators (superusers) manage organizations."""

    def has_permission(self, request, view):
        user = request.user
        return bool(user and user.is_authenticated and user.is_superuser)
