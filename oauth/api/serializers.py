from rest_framework import serializers

from oauth.models import Kind, OAuthProvider, OAuthToken


class OAuthProviderSerializer(serializers.ModelSerializer):
    platform = serializers.SerializerMethodField()
    has_client_secret = serializers.SerializerMethodField()

    class Meta:
        model = OAuthProvider
        fields = [
            "id", "name", "display_name", "kind", "platform", "client_id", "has_client_secret", "authorization_endpoint",
            "token_endpoint", "revocation_endpoint", "issuer", "discovery_url", "scopes", "extra_authorize_params",
            "token_endpoint_auth_method", "resource", "created_at", "updated_at",
        ]  # fmt: skip
        read_only_fields = fields

    def get_platform(self, provider) -> bool:
        return provider.organization_id is None

    def get_has_client_secret(self, provider) -> bool:
        return bool(provider.client_secret_sealed)


class OAuthProviderCreateSerializer(serializers.Serializer):
    name = serializers.SlugField(max_length=63)
    display_name = serializers.CharField(max_length=200, required=False, allow_blank=True, default="")
    kind = serializers.ChoiceField(choices=[c for c in Kind.choices if c[0] != Kind.MCP])
    platform = serializers.BooleanField(
        default=False, help_text="Operators only: a provider every organization may use."
    )
    client_id = serializers.CharField(max_length=500)
    client_secret = serializers.CharField(
        max_length=4096, required=False, allow_blank=True, default="", write_only=True, trim_whitespace=False
    )
    tenant = serializers.CharField(
        max_length=200, required=False, allow_blank=True, default="", help_text="Microsoft Entra ID"
    )
    domain = serializers.CharField(max_length=253, required=False, allow_blank=True, default="", help_text="Auth0")
    discovery_url = serializers.URLField(max_length=2048, required=False, allow_blank=True, default="")
    authorization_endpoint = serializers.URLField(max_length=2048, required=False, allow_blank=True, default="")
    token_endpoint = serializers.URLField(max_length=2048, required=False, allow_blank=True, default="")
    revocation_endpoint = serializers.URLField(max_length=2048, required=False, allow_blank=True, default="")
    scopes = serializers.ListField(
        child=serializers.CharField(max_length=200), required=False, default=list, max_length=100
    )
    extra_authorize_params = serializers.DictField(
        child=serializers.CharField(max_length=500), required=False, default=dict
    )
    token_endpoint_auth_method = serializers.ChoiceField(
        choices=["client_secret_post", "client_secret_basic", "none"], default="client_secret_post"
    )


class OAuthProviderUpdateSerializer(serializers.Serializer):
    display_name = serializers.CharField(max_length=200, required=False, allow_blank=True)
    client_id = serializers.CharField(max_length=500, required=False)
    client_secret = serializers.CharField(
        max_length=4096, required=False, allow_blank=True, write_only=True, trim_whitespace=False
    )
    authorization_endpoint = serializers.URLField(max_length=2048, required=False)
    token_endpoint = serializers.URLField(max_length=2048, required=False)
    revocation_endpoint = serializers.URLField(max_length=2048, required=False, allow_blank=True)
    scopes = serializers.ListField(child=serializers.CharField(max_length=200), required=False, max_length=100)
    extra_authorize_params = serializers.DictField(child=serializers.CharField(max_length=500), required=False)


class AuthorizeSerializer(serializers.Serializer):
    provider = serializers.IntegerField(required=False, min_value=1)
    mcp_configuration = serializers.IntegerField(required=False, min_value=1)

    def validate(self, data):
        if ("provider" in data) == ("mcp_configuration" in data):
            raise serializers.ValidationError('Give exactly one of "provider" and "mcp_configuration".')
        return data


class AuthorizeResponseSerializer(serializers.Serializer):
    authorization_url = serializers.URLField()
    state = serializers.CharField()
    expires_at = serializers.DateTimeField()


class OAuthTokenSerializer(serializers.ModelSerializer):
    """A connection, without any secret."""

    provider = serializers.IntegerField(source="provider_id", read_only=True)
    provider_name = serializers.CharField(source="provider.name", read_only=True)

    class Meta:
        model = OAuthToken
        fields = [
            "id", "provider", "provider_name", "status", "token_type", "scopes", "expires_at", "refreshed_at",
            "last_error", "created_at", "updated_at",
        ]  # fmt: skip
        read_only_fields = fields
