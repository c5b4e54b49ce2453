"""The MCP configurations API, its proxy endpoints, and the operators' stdio templates.

The proxy endpoints (test, tools, call, resources, prompts) run outside the request transaction:
a call may wait on an upstream server for many seconds, and no database transaction or row lock
should be held meanwhile; each records its audit event in a transaction of its own.
"""

from django.db import transaction
from django.utils.decorators import method_decorator
from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.response import Response

from agentapi.errors import APIError
from mcp import catalogue, proxy, services
from mcp.api import serializers as s
from mcp.models import PinStatus, StdioTemplate, ToolPin
from tenants.api.base import IsOperator, IsOrganizationManager, IsOrganizationMember, TenantAPIViewMixin, TenantViewSet
from tenants.idempotency import idempotent

_ANY = inline_serializer("MCPResult", {"result": serializers.JSONField()})
_non_atomic = method_decorator(transaction.non_atomic_requests, name="dispatch")


class MCPConfigurationViewSet(
    mixins.ListModelMixin, mixins.RetrieveModelMixin, mixins.DestroyModelMixin, TenantViewSet
):
    """Shared servers are managed by owners and admins; anyone may add and manage their own."""

    permission_classes = [IsOrganizationMember]
    serializer_class = s.MCPConfigurationSerializer

    def get_queryset(self):
        return services.configurations_visible_to(self.principal).select_related("stdio_template")

    @extend_schema(request=s.MCPConfigurationCreateSerializer, responses={201: s.MCPConfigurationSerializer})
    @idempotent
    def create(self, request):
        data = s.MCPConfigurationCreateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        fields = dict(data.validated_data)
        shared = fields.pop("shared", self.principal.role in ("owner", "admin"))
        configuration = services.mcp_configuration_create(
            organization=self.principal.organization, principal=self.principal, shared=shared, **fields
        )
        return Response(s.MCPConfigurationSerializer(configuration).data, status=status.HTTP_201_CREATED)

    @extend_schema(request=s.MCPConfigurationUpdateSerializer, responses=s.MCPConfigurationSerializer)
    def partial_update(self, request, pk=None):
        configuration = self.get_object()  # before the body: another organization's id is 404
        data = s.MCPConfigurationUpdateSerializer(data=request.data, partial=True)
        data.is_valid(raise_exception=True)
        configuration = services.mcp_configuration_update(
            configuration=configuration, principal=self.principal, **data.validated_data
        )
        return Response(s.MCPConfigurationSerializer(configuration).data)

    def perform_destroy(self, instance):
        services.mcp_configuration_delete(configuration=instance, principal=self.principal)


@_non_atomic
class MCPProxyViewSet(TenantViewSet):
    """Calls to a configuration's server on the caller's behalf."""

    permission_classes = [IsOrganizationMember]
    serializer_class = s.MCPConfigurationSerializer

    def get_queryset(self):
        return services.configurations_visible_to(self.principal).select_related("stdio_template", "organization")

    def _call(self, function, serializer_class=None, **kwargs):
        # The object first: another organization's id is 404 whatever the body holds.
        configuration = self.get_object()
        if serializer_class is not None:
            data = serializer_class(data=self.request.data)
            data.is_valid(raise_exception=True)
            kwargs.update(data.validated_data)
        return function(configuration=configuration, user_id=self.principal.membership.user_id, **kwargs)

    @extend_schema(request=None, responses=_ANY)
    @action(detail=True, methods=["post"], url_path="test")
    def test(self, request, pk=None):
        return Response(self._call(proxy.test_connection))

    @extend_schema(
        parameters=[OpenApiParameter("refresh", bool, description="Bypass the cache and list again.")],
        responses=_ANY,
    )
    @action(detail=True, methods=["get"], url_path="tools")
    def tools(self, request, pk=None):
        refresh = request.query_params.get("refresh", "").lower() in ("1", "true", "yes")
        tools = self._call(proxy.list_tools, refresh=refresh)
        return Response({"tools": tools, "count": len(tools)})

    @extend_schema(request=s.ToolCallSerializer, responses=_ANY)
    @action(detail=True, methods=["post"], url_path="tools/call")
    def tools_call(self, request, pk=None):
        return Response(self._call(proxy.tool_call, s.ToolCallSerializer))

    @extend_schema(responses=_ANY)
    @action(detail=True, methods=["get"], url_path="resources")
    def resources(self, request, pk=None):
        return Response({"resources": self._call(proxy.list_resources)})

    @extend_schema(request=s.ResourceReadSerializer, responses=_ANY)
    @action(detail=True, methods=["post"], url_path="resources/read")
    def resources_read(self, request, pk=None):
        return Response(self._call(proxy.read_resource, s.ResourceReadSerializer))

    @extend_schema(responses=_ANY)
    @action(detail=True, methods=["get"], url_path="prompts")
    def prompts(self, request, pk=None):
        return Response({"prompts": self._call(proxy.list_prompts)})

    @extend_schema(request=s.PromptGetSerializer, responses=_ANY)
    @action(detail=True, methods=["post"], url_path="prompts/get")
    def prompts_get(self, request, pk=None):
        return Response(self._call(proxy.get_prompt, s.PromptGetSerializer))


class ToolPinViewSet(TenantViewSet):
    """Pinned tool definitions of a configuration; owners and admins approve changed ones."""

    permission_classes = [IsOrganizationMember]
    serializer_class = s.ToolPinSerializer

    def get_queryset(self):
        return services.configurations_visible_to(self.principal)

    @extend_schema(responses=s.ToolPinSerializer(many=True))
    @action(detail=True, methods=["get"], url_path="pins")
    def pins(self, request, pk=None):
        configuration = self.get_object()
        return Response(s.ToolPinSerializer(ToolPin.objects.filter(configuration=configuration), many=True).data)

    @extend_schema(request=s.ToolApproveSerializer, responses=s.ToolPinSerializer)
    @action(detail=True, methods=["post"], url_path="pins/approve", permission_classes=[IsOrganizationManager])
    def approve(self, request, pk=None):
        configuration = self.get_object()
        data = s.ToolApproveSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        if not ToolPin.objects.filter(
            configuration=configuration, name=data.validated_data["name"], status=PinStatus.PENDING
        ).exists():
            raise APIError("not_found", "No change of that tool waits for approval.", status=404)
        return Response(s.ToolPinSerializer(catalogue.approve(configuration, data.validated_data["name"])).data)


class StdioTemplateViewSet(TenantAPIViewMixin, viewsets.ModelViewSet):
    """Operators define the command lines stdio servers run from. Global."""

    permission_classes = [IsOperator]
    serializer_class = s.StdioTemplateSerializer
    queryset = StdioTemplate.objects.all()
    lookup_value_regex = r"[0-9]+"
    http_method_names = ["get", "post", "patch", "delete", "head", "options"]

    def perform_create(self, serializer):
        serializer.instance = services.stdio_template_create(**serializer.validated_data)

    def perform_update(self, serializer):
        serializer.instance = services.stdio_template_update(template=serializer.instance, **serializer.validated_data)

    def perform_destroy(self, instance):
        services.stdio_template_delete(template=instance)
