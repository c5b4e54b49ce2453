from django.utils import timezone
from rest_framework import serializers

from mcp.models import StdioTemplate
from sessions_app.models import (
    AGENT_SETTINGS_DEFAULTS,
    AgentBackend,
    AgentKind,
    AgentMessage,
    AgentRun,
    AgentSession,
    PromptScope,
    PromptVersion,
    SystemPrompt,
)
from sessions_app.templating import MAX_OUTPUT


class PromptSerializer(serializers.ModelSerializer):
    user = serializers.IntegerField(source="user_id", read_only=True, allow_null=True)

    class Meta:
        model = SystemPrompt
        fields = [
            "id", "scope", "name", "content", "priority", "enabled", "version", "findings", "user", "created_at",
            "updated_at",
        ]  # fmt: skip
        read_only_fields = fields


class PromptWriteSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=200)
    content = serializers.CharField(max_length=MAX_OUTPUT, trim_whitespace=False)
    priority = serializers.IntegerField(min_value=-1_000_000, max_value=1_000_000, default=100)
    enabled = serializers.BooleanField(default=True)


class PromptCreateSerializer(PromptWriteSerializer):
    scope = serializers.ChoiceField(choices=PromptScope.choices)


class PromptVersionSerializer(serializers.ModelSerializer):
    created_by = serializers.IntegerField(source="created_by_id", read_only=True, allow_null=True)

    class Meta:
        model = PromptVersion
        fields = ["version", "name", "content", "priority", "enabled", "findings", "created_by", "created_at"]
        read_only_fields = fields


class RollbackSerializer(serializers.Serializer):
    version = serializers.IntegerField(min_value=1, max_value=2**31 - 1)


class ComposeSerializer(serializers.Serializer):
    variables = serializers.DictField(required=False, default=dict)


class ComposedLayerSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    scope = serializers.CharField()
    name = serializers.CharField()
    version = serializers.IntegerField()


class ComposedSerializer(serializers.Serializer):
    prompt = serializers.CharField()
    layers = ComposedLayerSerializer(many=True)
    sha256 = serializers.CharField()
    findings = serializers.ListField(child=serializers.DictField())


class AgentSessionSerializer(serializers.ModelSerializer):
    status = serializers.SerializerMethodField()
    user = serializers.IntegerField(source="user_id", read_only=True)
    mcp_configurations = serializers.SerializerMethodField()
    agent = serializers.SerializerMethodField()
    mcp_url = serializers.SerializerMethodField()

    class Meta:
        model = AgentSession
        fields = [
            "id", "name", "status", "user", "mcp_configurations", "agent", "system_prompt", "prompt_layers",
            "metadata", "created_at", "last_active_at", "expires_at", "mcp_url",
        ]  # fmt: skip
        read_only_fields = fields

    def get_status(self, session) -> str:
        return session.current_status(timezone.now())

    def get_mcp_configurations(self, session) -> list[int]:
        return [server.configuration_id for server in session.servers.all()]

    def get_agent(self, session) -> int | None:
        return session.agent_id  # None: a tools-only session

    def get_mcp_url(self, session) -> str:
        path = f"/mcp/sessions/{session.id}/"
        request = self.context.get("request")
        return request.build_absolute_uri(path) if request is not None else path


class AgentSessionCreatedSerializer(AgentSessionSerializer):
    mcp_token = serializers.CharField(read_only=True, help_text="Shown once: the session's MCP endpoint token.")

    class Meta(AgentSessionSerializer.Meta):
        fields = [*AgentSessionSerializer.Meta.fields, "mcp_token"]
        read_only_fields = fields


class AgentSessionCreateSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=200, required=False, allow_blank=True, default="")
    mcp_configurations = serializers.ListField(
        child=serializers.IntegerField(min_value=1, max_value=2**63 - 1),
        required=False,
        allow_null=True,
        default=None,
        max_length=100,
        help_text="Default: every enabled configuration the caller may use.",
    )
    metadata = serializers.DictField(required=False, default=dict)
    variables = serializers.DictField(required=False, default=dict, help_text="For the system prompt's templates.")
    agent = serializers.IntegerField(
        min_value=1, max_value=2**63 - 1, required=False, allow_null=True, default=None,
        help_text="An agent backend of the organization or the platform; none: a tools-only session.",
    )  # fmt: skip


_SETTINGS_HELP = "temperature (0-2), max_output_tokens, max_steps (default 20), run_timeout_seconds (default 600)"


_TEMPLATE_HELP = (
    "agentapi only, instead of base_url: the name of an operator's stdio template that starts a terminal agent "
    "behind coder/agentapi for each session (its arguments name {port})."
)
_TEMPLATE_ARGUMENTS_HELP = 'What the template lets you set: {"arguments": {option: value}, "env": {NAME: value}}.'


class AgentBackendSerializer(serializers.ModelSerializer):
    platform = serializers.SerializerMethodField()
    template = serializers.SlugRelatedField(slug_field="name", read_only=True, allow_null=True)
    has_api_key = serializers.SerializerMethodField()
    settings = serializers.SerializerMethodField()

    class Meta:
        model = AgentBackend
        fields = ["id", "name", "kind", "platform", "base_url", "template", "template_arguments", "model",
                  "has_api_key", "settings", "enabled", "created_at", "updated_at"]  # fmt: skip
        read_only_fields = fields

    def get_platform(self, backend) -> bool:
        return backend.organization_id is None

    def get_has_api_key(self, backend) -> bool:
        return bool(backend.api_key_sealed)

    def get_settings(self, backend) -> dict:
        return {name: backend.setting(name) for name in AGENT_SETTINGS_DEFAULTS}


class AgentBackendCreateSerializer(serializers.Serializer):
    name = serializers.SlugField(max_length=63)
    kind = serializers.ChoiceField(choices=AgentKind.choices)
    platform = serializers.BooleanField(
        default=False, help_text="Operators only: a backend every organization may use."
    )
    base_url = serializers.URLField(max_length=2048, required=False, allow_blank=True, default="")
    template = serializers.SlugRelatedField(
        slug_field="name", queryset=StdioTemplate.objects.all(), required=False, allow_null=True, default=None,
        help_text=_TEMPLATE_HELP,
    )  # fmt: skip
    template_arguments = serializers.JSONField(required=False, default=dict, help_text=_TEMPLATE_ARGUMENTS_HELP)
    model = serializers.CharField(max_length=200, required=False, allow_blank=True, default="")
    api_key = serializers.CharField(
        max_length=4096, required=False, allow_blank=True, default="", write_only=True, trim_whitespace=False
    )
    settings = serializers.JSONField(required=False, default=dict, help_text=_SETTINGS_HELP)
    enabled = serializers.BooleanField(default=True)


class AgentBackendUpdateSerializer(serializers.Serializer):
    base_url = serializers.URLField(max_length=2048, required=False, allow_blank=True)
    template = serializers.SlugRelatedField(
        slug_field="name", queryset=StdioTemplate.objects.all(), required=False, allow_null=True,
        help_text=_TEMPLATE_HELP,
    )  # fmt: skip
    template_arguments = serializers.JSONField(required=False, help_text=_TEMPLATE_ARGUMENTS_HELP)
    model = serializers.CharField(max_length=200, required=False, allow_blank=True)
    api_key = serializers.CharField(
        max_length=4096, required=False, allow_blank=True, write_only=True, trim_whitespace=False
    )
    settings = serializers.JSONField(required=False, help_text=_SETTINGS_HELP)
    enabled = serializers.BooleanField(required=False)


class RunSerializer(serializers.ModelSerializer):
    usage = serializers.SerializerMethodField()

    class Meta:
        model = AgentRun
        fields = [
            "id",
            "status",
            "error",
            "usage",
            "steps",
            "tool_calls",
            "first_event_ms",
            "created_at",
            "finished_at",
        ]
        read_only_fields = fields

    def get_usage(self, run) -> dict:
        return {"input_tokens": run.input_tokens, "output_tokens": run.output_tokens}


class MessageSerializer(serializers.ModelSerializer):
    run = serializers.UUIDField(source="run_id", read_only=True, allow_null=True)

    class Meta:
        model = AgentMessage
        fields = ["id", "seq", "role", "content", "tool_calls", "tool_call_id", "tool_name", "is_error", "run",
                  "created_at"]  # fmt: skip
        read_only_fields = fields


class MessageCreateSerializer(serializers.Serializer):
    content = serializers.CharField(max_length=100_000, trim_whitespace=False)


class MessageSentSerializer(serializers.Serializer):
    message = MessageSerializer()
    run = RunSerializer()


class UsageSerializer(serializers.Serializer):
    runs = serializers.IntegerField()
    input_tokens = serializers.IntegerField()
    output_tokens = serializers.IntegerField()
    steps = serializers.IntegerField()
    tool_calls = serializers.IntegerField()
