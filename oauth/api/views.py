"""The OAuth API: providers, starting a connection, and the caller's connections."""

from django.conf import settings
from drf_spectacular.utils import extend_schema
from rest_framework import mixins, status
from rest_framework.decorators import action
from rest_framework.response import Response
from rest_framework.views import APIView

from agentapi.errors import APIError, error_body
from oauth import services
from oauth.api import serializers as s
from oauth.models import OAuthProvider, OAuthToken, TokenStatus
from tenants.api.base import IsOrganizationMember, TenantAPIViewMixin, TenantViewSet
from tenants.idempotency import idempotent
from tenants.models import MANAGER_ROLES

# Other apps resolve their own targets for POST /authorize/ (the MCP app: "mcp_configuration"):
# name -> callable(principal, id, redirect_uri) -> (provider, resource). Registered at start-up, so
# this app needs no import of theirs.
AUTHORIZE_TARGETS: dict = {}


def redirect_uri(request) -> str:
    return settings.OAUTH_REDIRECT_URI or request.build_absolute_uri("/oauth/callback/")


class OAuthProviderViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, TenantViewSet):
    """Providers the organization may use: its own, and the platform's. Owners and admins manage
    the organization's; operators manage the platform's."""

    permission_classes = [IsOrganizationMember]
    serializer_class = s.OAuthProviderSerializer

    def get_queryset(self):
        return OAuthProvider.objects.all()

    def _may_write(self, provider_is_platform: bool) -> None:
        user = self.request.user
        allowed = user.is_superuser if provider_is_platform else self.principal.role in MANAGER_ROLES
        if not allowed:
            raise APIError("permission_denied", "You may not change this provider.", status=403)

    @extend_schema(request=s.OAuthProviderCreateSerializer, responses={201: s.OAuthProviderSerializer})
    @idempotent
    def create(self, request):
        data = s.OAuthProviderCreateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        fields = dict(data.validated_data)
        platform = fields.pop("platform")
        self._may_write(platform)
        provider = services.provider_create(organization=None if platform else self.principal.organization, **fields)
        return Response(s.OAuthProviderSerializer(provider).data, status=status.HTTP_201_CREATED)

    @extend_schema(request=s.OAuthProviderUpdateSerializer, responses=s.OAuthProviderSerializer)
    def partial_update(self, request, pk=None):
        provider = self.get_object()
        self._may_write(provider.organization_id is None)
        data = s.OAuthProviderUpdateSerializer(data=request.data, partial=True)
        data.is_valid(raise_exception=True)
        provider = services.provider_update(provider=provider, **data.validated_data)
        return Response(s.OAuthProviderSerializer(provider).data)

    @extend_schema(responses={204: None})
    def destroy(self, request, pk=None):
        provider = self.get_object()
        self._may_write(provider.organization_id is None)
        services.provider_delete(provider=provider)
        return Response(status=status.HTTP_204_NO_CONTENT)


class AuthorizeView(TenantAPIViewMixin, APIView):
    permission_classes = [IsOrganizationMember]

    @extend_schema(request=s.AuthorizeSerializer, responses=s.AuthorizeResponseSerializer)
    def post(self, request):
        data = s.AuthorizeSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        callback = redirect_uri(request)
        if "provider" in data.validated_data:
            provider = OAuthProvider.objects.filter(pk=data.validated_data["provider"]).first()
            if provider is None:
                raise APIError("invalid", "No such provider.", status=400, details={"provider": ["No such provider."]})
            resource = ""
        else:
            resolve = AUTHORIZE_TARGETS.get("mcp_configuration")
            if resolve is None:
                raise APIError("invalid", "MCP servers are not available.", status=400)
            provider, resource = resolve(self.principal, data.validated_data["mcp_configuration"], callback)
        started = services.authorization_start(
            organization=self.principal.organization,
            user=self.principal.membership.user,
            provider=provider,
            redirect_uri=callback,
            resource=resource,
        )
        return Response(s.AuthorizeResponseSerializer(started).data)


class OAuthTokenViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, TenantViewSet):
    """The caller's own connections (no secret is ever shown); refresh, revoke."""

    permission_classes = [IsOrganizationMember]
    serializer_class = s.OAuthTokenSerializer

    def get_queryset(self):
        return OAuthToken.objects.filter(user_id=self.principal.membership.user_id).select_related("provider")

    @extend_schema(request=None, responses=s.OAuthTokenSerializer)
    @action(detail=True, methods=["post"], url_path="refresh")
    def refresh(self, request, pk=None):
        token = self.get_object()
        generation = token.generation
        token = services.refresh(token=token, reason="requested", force=True)
        data = s.OAuthTokenSerializer(token).data
        if token.status == TokenStatus.ACTIVE and token.generation == generation:
            # The exchange failed (the provider was unreachable, timed out or answered an error):
            # the connection keeps its current tokens. Answered, not raised, so that the failure's
            # record (the count, last_error, the audit event) is committed with the request.
            code = token.last_error.split(":", 1)[0]
            body = error_body("refresh_failed", "The provider did not refresh the connection; it keeps its "
                              "current tokens.", {"error": code, "token": data})  # fmt: skip
            return Response(body, status=status.HTTP_502_BAD_GATEWAY)
        return Response(data)

    @extend_schema(responses={204: None})
    def destroy(self, request, pk=None):
        services.revoke(token=self.get_object())
        return Response(status=status.HTTP_204_NO_CONTENT)
