from django.utils import timezone
from drf_spectacular.utils import extend_schema
from rest_framework import mixins, status
from rest_framework.response import Response
from rest_framework.views import APIView

from tenants import services
from tenants.api import serializers as s
from tenants.api.base import (
    IsOperator,
    IsOrganizationManager,
    IsOrganizationMember,
    ManagersWriteMembersRead,
    TenantAPIViewMixin,
    TenantViewSet,
)
from tenants.idempotency import idempotent
from tenants.models import MANAGER_ROLES, APIKey, Membership, Organization


class MeView(TenantAPIViewMixin, APIView):
    permission_classes = [IsOrganizationMember]

    @extend_schema(responses=s.MeSerializer)
    def get(self, request):
        principal = self.principal
        return Response(
            s.MeSerializer(
                {
                    "user": request.user,
                    "organization": principal.organization,
                    "role": principal.role,
                    "authentication": principal.method,
                    "api_key_prefix": principal.api_key.prefix if principal.api_key else None,
                    "is_operator": request.user.is_superuser,
                }
            ).data
        )


class MemberViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, mixins.DestroyModelMixin, TenantViewSet):
    permission_classes = [ManagersWriteMembersRead]
    serializer_class = s.MembershipSerializer
    http_method_names = ["get", "post", "patch", "delete", "head", "options"]

    def get_queryset(self):
        return Membership.objects.select_related("user")

    @extend_schema(request=s.MembershipCreateSerializer, responses={201: s.MembershipSerializer})
    @idempotent
    def create(self, request):
        data = s.MembershipCreateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        membership = services.membership_create(
            organization=self.principal.organization, acting_role=self.principal.role, **data.validated_data
        )
        return Response(s.MembershipSerializer(membership).data, status=status.HTTP_201_CREATED)

    @extend_schema(request=s.MembershipUpdateSerializer, responses=s.MembershipSerializer)
    def partial_update(self, request, pk=None):
        membership = self.get_object()
        data = s.MembershipUpdateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        services.membership_update_role(
            membership=membership, role=data.validated_data["role"], acting_role=self.principal.role
        )
        return Response(s.MembershipSerializer(membership).data)

    def perform_destroy(self, instance):
        services.membership_delete(membership=instance, acting_role=self.principal.role)


class APIKeyViewSet(mixins.RetrieveModelMixin, TenantViewSet):
    """Owners and admins see and manage every key; members see and revoke their own."""

    permission_classes = [IsOrganizationMember]
    serializer_class = s.APIKeySerializer

    def get_queryset(self):
        keys = APIKey.objects.select_related("membership__user")
        if self.principal.role not in MANAGER_ROLES:
            keys = keys.filter(membership_id=self.principal.membership.pk)
        return keys

    @extend_schema(responses=s.APIKeySerializer(many=True))
    def list(self, request):
        # The list is the endpoint integrations poll; rows are read as plain values and shaped by
        # one function (APIKeySerializer.from_values), not instantiated and serialized one by one.
        # The shape is APIKeySerializer's: tests/tenants/test_api_keys.py compares the two.
        rows = self.get_queryset().values(*s.APIKeySerializer.VALUES)
        page = self.paginate_queryset(rows)
        now = timezone.now()  # one "now" for the page's statuses, not a clock read per row
        return self.get_paginated_response([s.APIKeySerializer.from_values(row, now) for row in page])

    def get_permissions(self):
        if self.action == "create":
            return [IsOrganizationManager()]
        return super().get_permissions()

    @extend_schema(request=s.APIKeyCreateSerializer, responses={201: s.APIKeyCreatedSerializer})
    @idempotent
    def create(self, request):
        data = s.APIKeyCreateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        membership = data.validated_data.get("member") or self.principal.membership
        api_key, key = services.api_key_create(
            membership=membership,
            name=data.validated_data["name"],
            expires_at=data.validated_data.get("expires_at"),
            created_by=request.user,
        )
        api_key.key = key
        return Response(s.APIKeyCreatedSerializer(api_key).data, status=status.HTTP_201_CREATED)

    @extend_schema(responses={204: None})
    def destroy(self, request, pk=None):
        services.api_key_revoke(api_key=self.get_object())
        return Response(status=status.HTTP_204_NO_CONTENT)


class OrganizationCreateSerializer(s.OrganizationSerializer):
    owner_email = s.serializers.EmailField(required=False, write_only=True)

    class Meta(s.OrganizationSerializer.Meta):
        fields = s.OrganizationSerializer.Meta.fields + ["owner_email"]


class OrganizationViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, TenantViewSet):
    """Operators only: every organization on the platform. Organizations are global rows."""

    permission_classes = [IsOperator]
    serializer_class = s.OrganizationSerializer
    http_method_names = ["get", "post", "patch", "head", "options"]
    lookup_value_regex = r"[0-9]+"

    def get_queryset(self):
        return Organization.objects.all()

    @extend_schema(request=OrganizationCreateSerializer, responses={201: s.OrganizationSerializer})
    def create(self, request):
        data = OrganizationCreateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        owner_email = data.validated_data.pop("owner_email", None)
        organization = services.organization_create(**data.validated_data)
        if owner_email:
            from tenants import scoping

            with scoping.organization_scope(organization):
                services.membership_create(organization=organization, email=owner_email, role="owner")
        return Response(s.OrganizationSerializer(organization).data, status=status.HTTP_201_CREATED)

    @extend_schema(request=s.OrganizationUpdateSerializer, responses=s.OrganizationSerializer)
    def partial_update(self, request, pk=None):
        organization = self.get_object()
        data = s.OrganizationUpdateSerializer(organization, data=request.data, partial=True)
        data.is_valid(raise_exception=True)
        fields = dict(data.validated_data)
        if "settings" in fields:
            fields["settings"] = {**organization.settings, **fields["settings"]}
        services.organization_update(organization=organization, **fields)
        return Response(s.OrganizationSerializer(organization).data)
