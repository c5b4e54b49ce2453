from django.http import StreamingHttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema
from rest_framework import mixins
from rest_framework.decorators import action
from rest_framework.response import Response
from rest_framework.views import APIView

from audit import chain, export
from audit.api.serializers import (
    AuditEventFilterSerializer,
    AuditEventSerializer,
    ExportFilterSerializer,
    VerificationSerializer,
)
from audit.models import AuditEvent
from audit.services import audit_chain_verify
from tenants.api.base import IsOrganizationManager, TenantAPIViewMixin, TenantViewSet


class AuditEventViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, TenantViewSet):
    """The caller's organization's audit events, newest first. Owners and admins only."""

    permission_classes = [IsOrganizationManager]
    serializer_class = AuditEventSerializer

    def get_queryset(self):
        return AuditEvent.objects.all()

    def filter_queryset(self, queryset):
        filters = AuditEventFilterSerializer(data=self.request.query_params)
        filters.is_valid(raise_exception=True)
        return filters.apply(queryset)

    @extend_schema(parameters=[AuditEventFilterSerializer])
    def list(self, request, *args, **kwargs):
        return super().list(request, *args, **kwargs)

    @extend_schema(
        parameters=[ExportFilterSerializer],
        responses={(200, "application/jsonl"): OpenApiTypes.STR, (200, "text/csv"): OpenApiTypes.STR},
    )
    @action(detail=False, methods=["get"], pagination_class=None)
    def export(self, request):
        filters = ExportFilterSerializer(data=request.query_params)
        filters.is_valid(raise_exception=True)
        fmt = filters.validated_data["format"]
        response = StreamingHttpResponse(
            export.stream(self.principal.organization, self.principal.actor, filters, fmt),
            content_type="text/csv; charset=utf-8" if fmt == "csv" else "application/jsonl",
        )
        response["Content-Disposition"] = f'attachment; filename="audit-events.{fmt}"'
        return response


class AuditVerifyView(TenantAPIViewMixin, APIView):
    """Walk the caller's organization's hash chain and report the first broken link, if any, and
    the events still waiting to be chained."""

    permission_classes = [IsOrganizationManager]

    @extend_schema(responses=VerificationSerializer)
    def get(self, request):
        waiting = chain.waiting(self.principal.organization.pk)  # before this verification's own record
        checked, first_break = audit_chain_verify(self.principal.organization.pk)
        body = {
            "ok": first_break is None,
            "checked": checked,
            "first_break": first_break and first_break.as_dict(),
            **waiting.as_dict(),
        }
        return Response(body)
