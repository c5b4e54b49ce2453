from django.db import connection, transaction
from django.urls import path
from django.utils import timezone
from rest_framework.permissions import AllowAny
from rest_framework.response import Response
from rest_framework.views import APIView

from agentapi.urls import handler400, handler403, handler404, handler500  # noqa: F401 (the platform's error answers)
from agentapi.urls import urlpatterns as platform_urls
from tenants.api.base import IsOrganizationMember, TenantAPIViewMixin
from tenants.api.serializers import APIKeySerializer


class Hello(APIView):
    """The baseline: DRF with no authentication, no permission, no database."""

    authentication_classes = []
    permission_classes = [AllowAny]

    def get(self, request):
        return Response({"hello": "world"})


class Floor(TenantAPIViewMixin, APIView):
    """A measurement probe, not a platform endpoint: what the API-key list would cost with no ORM
    and no pagination at all. The same authentication, organization scope, transaction and
    row-level security as the platform's list, then one hand-written statement for the same 50 rows
    shaped by the same function. The gap between this and the real list is what the ORM and the
    paginator cost; the gap between this and the hello-world is what authenticating, scoping and
    reading rows cost at the least."""

    permission_classes = [IsOrganizationMember]
    SQL = (
        "SELECT k.id, k.name, k.prefix, k.membership_id, m.user_id, u.email, u.name, k.created_at, "
        "k.expires_at, k.revoked_at, k.last_used_at FROM tenants_apikey k "
        "JOIN tenants_membership m ON m.id = k.membership_id JOIN tenants_user u ON u.id = m.user_id "
        "WHERE k.organization_id = %s ORDER BY k.id DESC LIMIT 51"
    )

    def get(self, request):
        with connection.cursor() as cursor:
            cursor.execute(self.SQL, [self.principal.organization.pk])
            rows = cursor.fetchall()
        now = timezone.now()
        results = [APIKeySerializer.from_values(dict(zip(APIKeySerializer.VALUES, row)), now) for row in rows[:50]]
        return Response({"next": None, "previous": None, "results": results})


# Bare: not even the per-request transaction that ATOMIC_REQUESTS gives every platform view.
urlpatterns = [
    path("bench/hello/", transaction.non_atomic_requests(Hello.as_view())),
    path("bench/floor/", Floor.as_view()),
    *platform_urls,
]
