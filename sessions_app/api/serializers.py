from rest_framework import serializers

from sessions_app.models import PromptScope, PromptVersion, SystemPrompt
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
