from rest_framework import serializers

from mcp.models import AuthType, MCPConfiguration, StdioTemplate, ToolPin, Transport
from oauth.models import OAuthProvider


class MCPConfigurationSerializer(serializers.ModelSerializer):
    """What the API shows of a configuration: never a credential, only whether one is set."""

    stdio_template = serializers.SlugRelatedField(slug_field="name", read_only=True)
    owner = serializers.IntegerField(source="owner_id", read_only=True, allow_null=True)
    oauth_provider = serializers.IntegerField(source="oauth_provider_id", read_only=True, allow_null=True)

    class Meta:
        model = MCPConfiguration
        fields = [
            "id", "name", "transport", "url", "stdio_template", "stdio_arguments", "auth_type", "has_credentials",
            "oauth_provider", "owner", "allowed_tools", "enabled", "status", "last_error", "last_checked_at",
            "consecutive_failures", "revision", "created_at", "updated_at",
        ]  # fmt: skip
        read_only_fields = fields


class _WriteFields(serializers.Serializer):
    name = serializers.CharField(max_length=200)
    transport = serializers.ChoiceField(choices=Transport.choices, default=Transport.STREAMABLE_HTTP)
    url = serializers.CharField(max_length=2048, required=False, allow_blank=True, default="")
    stdio_template = serializers.SlugRelatedField(
        slug_field="name", queryset=StdioTemplate.objects.all(), required=False, allow_null=True, default=None
    )
    stdio_arguments = serializers.JSONField(required=False, default=dict)
    auth_type = serializers.ChoiceField(choices=AuthType.choices, default=AuthType.NONE)
    bearer_token = serializers.CharField(max_length=8192, required=False, write_only=True, trim_whitespace=False)
    headers = serializers.DictField(
        child=serializers.CharField(max_length=8192, allow_blank=True, trim_whitespace=False),
        required=False,
        write_only=True,
    )
    oauth_provider = serializers.PrimaryKeyRelatedField(
        queryset=OAuthProvider.objects.all(),
        required=False,
        allow_null=True,
        default=None,
        help_text="For auth_type oauth: a provider of the organization or the platform; empty to discover the server's own.",
    )
    allowed_tools = serializers.ListField(
        child=serializers.CharField(max_length=200), required=False, allow_null=True, default=None, max_length=1000
    )
    enabled = serializers.BooleanField(default=True)


class MCPConfigurationCreateSerializer(_WriteFields):
    shared = serializers.BooleanField(
        required=False,
        help_text="Shared with the organization (owners and admins), or the caller's own. Default: shared for owners and admins.",
    )


class MCPConfigurationUpdateSerializer(_WriteFields):
    """Partial: only what is sent changes."""


class ToolCallSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=200)
    arguments = serializers.DictField(required=False, default=dict)


class PromptGetSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=200)
    arguments = serializers.DictField(
        child=serializers.CharField(allow_blank=True, max_length=100_000), required=False, default=dict
    )


class ResourceReadSerializer(serializers.Serializer):
    uri = serializers.CharField(max_length=4096)


class ToolApproveSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=200)


class ToolPinSerializer(serializers.ModelSerializer):
    class Meta:
        model = ToolPin
        fields = [
            "name",
            "status",
            "definition_hash",
            "definition",
            "pending_hash",
            "pending_definition",
            "first_seen_at",
            "changed_at",
        ]
        read_only_fields = fields


class StdioTemplateSerializer(serializers.ModelSerializer):
    class Meta:
        model = StdioTemplate
        fields = [
            "id", "name", "description", "command", "arguments", "allowed_arguments", "allowed_env", "env",
            "memory_limit_mb", "cpu_limit_seconds", "open_files_limit", "created_at", "updated_at",
        ]  # fmt: skip
        read_only_fields = ["id", "created_at", "updated_at"]
        extra_kwargs = {
            "memory_limit_mb": {"min_value": 64, "max_value": 65536},
            "cpu_limit_seconds": {"min_value": 1, "max_value": 86400 * 30},
            "open_files_limit": {"min_value": 16, "max_value": 65536},
        }
