from datetime import UTC

from django.utils import timezone
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from agentapi import ratelimit
from tenants.models import DEFAULT_LIMITS, APIKey, Membership, Organization, Role, User


class UserSerializer(serializers.ModelSerializer):
    class Meta:
        model = User
        fields = ["id", "email", "name"]


class OrganizationSummarySerializer(serializers.ModelSerializer):
    class Meta:
        model = Organization
        fields = ["id", "slug", "name"]


class MeSerializer(serializers.Serializer):
    user = UserSerializer()
    organization = OrganizationSummarySerializer()
    role = serializers.ChoiceField(choices=Role.choices)
    authentication = serializers.ChoiceField(choices=["api_key", "jwt", "session"])
    api_key_prefix = serializers.CharField(allow_null=True)
    is_operator = serializers.BooleanField()


class MembershipSerializer(serializers.ModelSerializer):
    user = UserSerializer(read_only=True)

    class Meta:
        model = Membership
        fields = ["id", "user", "role", "created_at"]


class MembershipCreateSerializer(serializers.Serializer):
    email = serializers.EmailField(max_length=254)
    name = serializers.CharField(max_length=200, required=False, default="", allow_blank=True)
    role = serializers.ChoiceField(choices=Role.choices, default=Role.MEMBER)


class MembershipUpdateSerializer(serializers.Serializer):
    role = serializers.ChoiceField(choices=Role.choices)


@extend_schema_field(OpenApiTypes.INT)
class ScopedMembershipField(serializers.PrimaryKeyRelatedField):
    """A member of the caller's organization; another organization's id is "does not exist"."""

    def get_queryset(self):
        return Membership.objects.select_related("user", "organization")

    def to_internal_value(self, data):
        from tenants import security

        try:
            return super().to_internal_value(data)
        except serializers.ValidationError:
            if isinstance(data, int) and not isinstance(data, bool):
                security.report("lookup_denied", model=Membership._meta.label, pk=data)
            raise


class APIKeySerializer(serializers.ModelSerializer):
    member = serializers.IntegerField(source="membership_id", read_only=True)
    user = UserSerializer(source="membership.user", read_only=True)
    status = serializers.ChoiceField(choices=["active", "expired", "revoked"], read_only=True)

    class Meta:
        model = APIKey
        fields = [
            "id", "name", "prefix", "member", "user", "status",
            "created_at", "expires_at", "revoked_at", "last_used_at",
        ]  # fmt: skip

    VALUES = (
        "id", "name", "prefix", "membership_id", "membership__user__id", "membership__user__email",
        "membership__user__name", "created_at", "expires_at", "revoked_at", "last_used_at",
    )  # fmt: skip

    @staticmethod
    def from_values(row: dict, now=None) -> dict:
        """The representation of a row read with .values(*VALUES): the same as serializing it."""
        now = now or timezone.now()
        expires_at, revoked_at, last_used_at = row["expires_at"], row["revoked_at"], row["last_used_at"]
        status = "revoked" if revoked_at else ("expired" if expires_at and expires_at <= now else "active")
        return {
            "id": row["id"],
            "name": row["name"],
            "prefix": row["prefix"],
            "member": row["membership_id"],
            "user": {
                "id": row["membership__user__id"],
                "email": row["membership__user__email"],
                "name": row["membership__user__name"],
            },
            "status": status,
            "created_at": _when(row["created_at"]),
            "expires_at": _when(expires_at) if expires_at else None,
            "revoked_at": _when(revoked_at) if revoked_at else None,
            "last_used_at": _when(last_used_at) if last_used_at else None,
        }


def _when(value) -> str:
    """DRF's DateTimeField output for an aware datetime (ISO 8601, UTC as "Z"), without its
    per-value timezone lookups: the database hands back UTC (TIME_ZONE = "UTC")."""
    text = value.astimezone(UTC).isoformat()
    return text[:-6] + "Z" if text.endswith("+00:00") else text


class APIKeyCreatedSerializer(APIKeySerializer):
    key = serializers.CharField(read_only=True, help_text="The key itself. Shown once, never again.")

    class Meta(APIKeySerializer.Meta):
        fields = APIKeySerializer.Meta.fields + ["key"]


class APIKeyCreateSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=100)
    member = ScopedMembershipField(
        required=False, help_text="Membership id of the key's user; the caller when omitted."
    )
    expires_at = serializers.DateTimeField(required=False, allow_null=True)

    def validate_expires_at(self, value):
        if value is not None and value <= timezone.now():
            raise serializers.ValidationError("Must be in the future.")
        return value


class OrganizationSettingsSerializer(serializers.Serializer):
    max_members = serializers.IntegerField(min_value=1, max_value=1_000_000, required=False)
    max_api_keys = serializers.IntegerField(min_value=1, max_value=1_000_000, required=False)
    max_sessions_per_user = serializers.IntegerField(min_value=1, max_value=1_000_000, required=False)
    rate_limits = serializers.JSONField(
        required=False,
        help_text='The organization\'s own rate limits over the defaults: {"read": {"credential": "600/minute", '
        '"organization": "6000/minute"}, ...}; classes mcp, agent, write, read, auth; periods second, minute, '
        "hour, day.",
    )

    def validate_rate_limits(self, value):
        try:
            return ratelimit.check_overrides(value)
        except ValueError as exc:
            raise serializers.ValidationError(str(exc)) from None

    def to_internal_value(self, data):
        if isinstance(data, dict):
            unknown = sorted(set(data) - set(DEFAULT_LIMITS) - {"rate_limits"})
            if unknown:
                raise serializers.ValidationError({name: "Unknown setting." for name in unknown[:20]})
        return super().to_internal_value(data)


class OrganizationSerializer(serializers.ModelSerializer):
    settings = OrganizationSettingsSerializer(required=False)

    class Meta:
        model = Organization
        fields = ["id", "slug", "name", "is_active", "settings", "created_at"]
        read_only_fields = ["id", "created_at"]
        extra_kwargs = {"slug": {"validators": []}}


class OrganizationUpdateSerializer(OrganizationSerializer):
    class Meta(OrganizationSerializer.Meta):
        read_only_fields = ["id", "slug", "created_at"]
