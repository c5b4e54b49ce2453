"""The prompts API (layers by role, their versions, rollback, the composed prompt) and the
sessions API (open, list, get, close; the session's tools, resources and prompts).

The calls (`tools/call/`, `resources/read/`, `prompts/get/`) are served on the data plane
(sessions_app.dataplane) where it runs; these views serve them on the embedded profile."""

from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from rest_framework import mixins, serializers, status
from rest_framework.decorators import action
from rest_framework.response import Response

from agentapi.errors import APIError
from agentapi.pagination import CursorPagination
from mcp.api import serializers as mcp_serializers
from sessions_app import agents, prompts, runs, services, tools
from sessions_app.api import serializers as s
from sessions_app.models import AgentBackend, AgentMessage, AgentRun
from tenants import idempotency
from tenants.api.base import IsOrganizationMember, TenantViewSet
from tenants.idempotency import idempotent


class PromptViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, TenantViewSet):
    """Global prompts are the operators', organization prompts its owners' and admins', user
    prompts each member's own (another member's is 404, as another organization's)."""

    permission_classes = [IsOrganizationMember]
    serializer_class = s.PromptSerializer

    def get_queryset(self):
        return prompts.visible_to(self.principal).order_by("id")

    @extend_schema(request=s.PromptCreateSerializer, responses={201: s.PromptSerializer})
    @idempotent
    def create(self, request):
        data = s.PromptCreateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        prompt = prompts.prompt_create(principal=self.principal, **data.validated_data)
        return Response(s.PromptSerializer(prompt).data, status=status.HTTP_201_CREATED)

    @extend_schema(request=s.PromptWriteSerializer, responses=s.PromptSerializer)
    def partial_update(self, request, pk=None):
        prompt = self.get_object()  # before the body: another organization's id is 404
        data = s.PromptWriteSerializer(data=request.data, partial=True)
        data.is_valid(raise_exception=True)
        prompt = prompts.prompt_update(principal=self.principal, prompt=prompt, **data.validated_data)
        return Response(s.PromptSerializer(prompt).data)

    @extend_schema(responses={204: None})
    def destroy(self, request, pk=None):
        prompts.prompt_delete(principal=self.principal, prompt=self.get_object())
        return Response(status=status.HTTP_204_NO_CONTENT)

    @extend_schema(responses=s.PromptVersionSerializer(many=True))
    @action(detail=True, methods=["get"])
    def versions(self, request, pk=None):
        prompt = self.get_object()
        return Response(s.PromptVersionSerializer(prompt.versions.order_by("-version"), many=True).data)

    @extend_schema(request=s.RollbackSerializer, responses=s.PromptSerializer)
    @action(detail=True, methods=["post"])
    def rollback(self, request, pk=None):
        prompt = self.get_object()
        data = s.RollbackSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        prompt = prompts.prompt_rollback(principal=self.principal, prompt=prompt, **data.validated_data)
        return Response(s.PromptSerializer(prompt).data)

    @extend_schema(request=s.ComposeSerializer, responses=s.ComposedSerializer)
    @action(detail=False, methods=["post"])
    def compose(self, request):
        data = s.ComposeSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        return Response(prompts.compose(principal=self.principal, **data.validated_data))


class SessionPagination(CursorPagination):
    ordering = ("-created_at", "id")


class AgentSessionViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, TenantViewSet):
    """A member's own sessions; owners and admins see every member's (`?user=`). `DELETE` closes."""

    permission_classes = [IsOrganizationMember]
    serializer_class = s.AgentSessionSerializer
    pagination_class = SessionPagination
    lookup_value_regex = r"[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}"

    def get_queryset(self):
        user = self.request.query_params.get("user") if self.action == "list" else None
        if user is not None and not user.isdigit():
            raise APIError("invalid", "`user` is a user id.", details={"user": ["A whole number."]})
        sessions = services.visible_to(self.principal, user_id=int(user) if user else None)
        return sessions.prefetch_related("servers")

    @extend_schema(parameters=[OpenApiParameter("user", int, description="Owners and admins: one member's sessions.")])
    def list(self, request, *args, **kwargs):
        return super().list(request, *args, **kwargs)

    @extend_schema(request=s.AgentSessionCreateSerializer, responses={201: s.AgentSessionCreatedSerializer})
    @idempotent
    def create(self, request):
        data = s.AgentSessionCreateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        session, token = services.session_create(principal=self.principal, **data.validated_data)
        session.mcp_token = token
        body = s.AgentSessionCreatedSerializer(session, context={"request": request}).data
        return Response(body, status=status.HTTP_201_CREATED)

    @extend_schema(responses={204: None})
    def destroy(self, request, pk=None):
        services.session_close(session=self.get_object())
        return Response(status=status.HTTP_204_NO_CONTENT)


_LISTED = inline_serializer(
    "SessionListing", {"count": serializers.IntegerField(), "unavailable": serializers.JSONField()}
)
_RESULT = inline_serializer("SessionCallResult", {"result": serializers.JSONField()})


def _listing(key: str, found) -> dict:
    items, unavailable = found
    return {key: items, "count": len(items), "unavailable": [vars(u) for u in unavailable]}


class SessionToolsViewSet(TenantViewSet):
    """The session's tools, resources and prompts, used with its user's credentials: only that
    user's own session (another member's, even to an owner, is 404 here)."""

    permission_classes = [IsOrganizationMember]
    lookup_value_regex = AgentSessionViewSet.lookup_value_regex

    def get_queryset(self):
        return services.own_sessions(self.principal)

    def get_serializer_class(self):
        # What each call takes (OPTIONS describes it); the listings take nothing.
        return {
            "tools_call": mcp_serializers.ToolCallSerializer,
            "resources_read": mcp_serializers.ResourceReadSerializer,
            "prompts_get": mcp_serializers.PromptGetSerializer,
        }.get(self.action, serializers.Serializer)

    def _valid(self, serializer_class) -> dict:
        data = serializer_class(data=self.request.data)
        data.is_valid(raise_exception=True)
        return data.validated_data

    @extend_schema(responses=_LISTED)
    @action(detail=True, methods=["get"])
    def tools(self, request, pk=None):
        return Response(_listing("tools", tools.list_tools(self.get_object())))

    @extend_schema(request=mcp_serializers.ToolCallSerializer, responses=_RESULT)
    @action(detail=True, methods=["post"], url_path="tools/call")
    def tools_call(self, request, pk=None):
        session = self.get_object()
        data = self._valid(mcp_serializers.ToolCallSerializer)
        return Response(tools.call_tool(session, data["name"], data["arguments"]))

    @extend_schema(responses=_LISTED)
    @action(detail=True, methods=["get"])
    def resources(self, request, pk=None):
        return Response(_listing("resources", tools.list_resources(self.get_object())))

    @extend_schema(request=mcp_serializers.ResourceReadSerializer, responses=_RESULT)
    @action(detail=True, methods=["post"], url_path="resources/read")
    def resources_read(self, request, pk=None):
        session = self.get_object()
        return Response(tools.read_resource(session, self._valid(mcp_serializers.ResourceReadSerializer)["uri"]))

    @extend_schema(responses=_LISTED)
    @action(detail=True, methods=["get"])
    def prompts(self, request, pk=None):
        return Response(_listing("prompts", tools.list_prompts(self.get_object())))

    @extend_schema(request=mcp_serializers.PromptGetSerializer, responses=_RESULT)
    @action(detail=True, methods=["post"], url_path="prompts/get")
    def prompts_get(self, request, pk=None):
        session = self.get_object()
        data = self._valid(mcp_serializers.PromptGetSerializer)
        return Response(tools.get_prompt(session, data["name"], data["arguments"]))


class AgentBackendViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, TenantViewSet):
    """The backends the organization's sessions may use: its own (owners and admins manage them)
    and the platform's (operators manage them). The API key is write-only."""

    permission_classes = [IsOrganizationMember]
    serializer_class = s.AgentBackendSerializer

    def get_queryset(self):
        return AgentBackend.objects.order_by("id")

    @extend_schema(request=s.AgentBackendCreateSerializer, responses={201: s.AgentBackendSerializer})
    @idempotent
    def create(self, request):
        data = s.AgentBackendCreateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        backend = agents.agent_create(principal=self.principal, **data.validated_data)
        return Response(s.AgentBackendSerializer(backend).data, status=status.HTTP_201_CREATED)

    @extend_schema(request=s.AgentBackendUpdateSerializer, responses=s.AgentBackendSerializer)
    def partial_update(self, request, pk=None):
        backend = self.get_object()  # before the body: another organization's id is 404
        data = s.AgentBackendUpdateSerializer(data=request.data, partial=True)
        data.is_valid(raise_exception=True)
        backend = agents.agent_update(principal=self.principal, backend=backend, **data.validated_data)
        return Response(s.AgentBackendSerializer(backend).data)

    @extend_schema(responses={204: None})
    def destroy(self, request, pk=None):
        agents.agent_delete(principal=self.principal, backend=self.get_object())
        return Response(status=status.HTTP_204_NO_CONTENT)

    @extend_schema(request=None, responses=_RESULT)
    @action(detail=True, methods=["post"])
    def test(self, request, pk=None):
        """Send the backend one tiny request: `ok`, `latency_ms`, and `reply` or `error`."""
        return Response(agents.agent_test(principal=self.principal, backend=self.get_object()))


class MessagePagination(CursorPagination):
    ordering = ("seq",)


class RunPagination(CursorPagination):
    ordering = ("-created_at", "id")


_UUID = r"[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}"


class ConversationViewSet(TenantViewSet):
    """A session's conversation with its agent: its user's own session only (as its tools). The
    event stream, `GET .../events/`, is served on the data plane (sessions_app.streams)."""

    permission_classes = [IsOrganizationMember]
    lookup_value_regex = AgentSessionViewSet.lookup_value_regex

    def get_queryset(self):
        return services.own_sessions(self.principal)

    def get_serializer_class(self):
        return s.MessageCreateSerializer if self.action == "messages" else serializers.Serializer

    @extend_schema(methods=["GET"], responses=s.MessageSerializer(many=True), description="The conversation, in order.")
    @extend_schema(
        methods=["POST"],
        request=s.MessageCreateSerializer,
        responses={202: s.MessageSentSerializer},
        parameters=[idempotency.PARAMETER],
        description="Send a message: 202 with it and its run; `409 session_busy` while a run is going.",
    )
    @action(detail=True, methods=["get", "post"])
    @idempotent
    def messages(self, request, pk=None):
        session = self.get_object()
        if request.method == "GET":
            paginator = MessagePagination()
            page = paginator.paginate_queryset(AgentMessage.objects.filter(session=session), request, view=self)
            return paginator.get_paginated_response(s.MessageSerializer(page, many=True).data)
        data = s.MessageCreateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        message, run = runs.message_send(principal=self.principal, session=session, **data.validated_data)
        body = {"message": s.MessageSerializer(message).data, "run": s.RunSerializer(run).data}
        return Response(body, status=status.HTTP_202_ACCEPTED)

    @extend_schema(responses=s.RunSerializer(many=True))
    @action(detail=True, methods=["get"], url_path="runs")
    def runs_list(self, request, pk=None):
        session = self.get_object()
        paginator = RunPagination()
        page = paginator.paginate_queryset(AgentRun.objects.filter(session=session), request, view=self)
        return paginator.get_paginated_response(s.RunSerializer(page, many=True).data)

    def _run(self, session, run_id: str) -> AgentRun:
        run = AgentRun.objects.filter(session=session, pk=run_id).first()
        if run is None:
            raise APIError("not_found", "No such run in this session.", status=404)
        return run

    @extend_schema(responses=s.RunSerializer)
    @action(detail=True, methods=["get"], url_path=rf"runs/(?P<run_id>{_UUID})")
    def run_detail(self, request, pk=None, run_id=None):
        return Response(s.RunSerializer(self._run(self.get_object(), run_id)).data)

    @extend_schema(request=None, responses=s.RunSerializer)
    @action(detail=True, methods=["post"], url_path=rf"runs/(?P<run_id>{_UUID})/cancel")
    def run_cancel(self, request, pk=None, run_id=None):
        """Stop a run (it is `cancelled` at once; its worker stops within a heartbeat). An ended
        run is answered as it is."""
        session = self.get_object()
        run = runs.run_cancel(session=session, run=self._run(session, run_id))
        return Response(s.RunSerializer(run).data)

    @extend_schema(responses=s.UsageSerializer)
    @action(detail=True, methods=["get"])
    def usage(self, request, pk=None):
        """Token usage of the session's runs, summed."""
        return Response(runs.usage(AgentRun.objects.filter(session=self.get_object())))

    @extend_schema(
        operation_id="v1_sessions_usage_total",
        responses=s.UsageSerializer,
        description="Token usage summed over the organization's sessions (owners and admins), or the caller's own.",
    )
    @action(detail=False, methods=["get"], url_path="usage")
    def usage_total(self, request):
        visible = services.visible_to(self.principal)
        return Response(runs.usage(AgentRun.objects.filter(session__in=visible)))
