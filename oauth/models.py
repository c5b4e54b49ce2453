"""OAuth providers, flows in progress, and the token sets users connect.

Secrets (client secrets, access and refresh tokens, PKCE verifiers) are sealed by tenants.secrets
under the organization's data key, bound to their row and field; a platform-wide provider's client
secret, which belongs to no organization, is sealed under the master keyring directly.
"""

import datetime
import hashlib
import uuid

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone

from agentapi.crypto import keyring
from tenants import secrets
from tenants.models import TenantManager, TenantModel


class Kind(models.TextChoices):
    GITHUB = "github", "GitHub"
    GOOGLE = "google", "Google"
    ENTRA = "entra", "Microsoft Entra ID"
    AUTH0 = "auth0", "Auth0"
    OIDC = "oidc", "OpenID Connect (discovery)"
    OAUTH2 = "oauth2", "OAuth 2.0 (explicit endpoints)"
    MCP = "mcp", "An MCP server's own authorization server"


class ProviderManager(TenantManager):
    """Providers of the organizations in scope, and the platform's global ones."""

    def get_queryset(self):
        return models.Manager.get_queryset(self).filter(
            Q(organization__in_current_scope=True) | Q(organization__isnull=True)
        )


class OAuthProvider(models.Model):
    organization = models.ForeignKey(
        "tenants.Organization", null=True, blank=True, on_delete=models.CASCADE, related_name="+"
    )
    uuid = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    name = models.SlugField(max_length=63)
    display_name = models.CharField(max_length=200, blank=True)
    kind = models.CharField(max_length=16, choices=Kind.choices)
    client_id = models.CharField(max_length=500)
    client_secret_sealed = models.TextField(blank=True, editable=False)
    authorization_endpoint = models.URLField(max_length=2048)
    token_endpoint = models.URLField(max_length=2048)
    revocation_endpoint = models.URLField(max_length=2048, blank=True)
    issuer = models.CharField(max_length=2048, blank=True)
    discovery_url = models.URLField(max_length=2048, blank=True)
    scopes = models.JSONField(default=list, blank=True)
    extra_authorize_params = models.JSONField(default=dict, blank=True)
    token_endpoint_auth_method = models.CharField(max_length=32, default="client_secret_post")
    resource = models.CharField(max_length=2048, blank=True, help_text="RFC 8707 resource indicator (MCP servers).")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = ProviderManager()

    class Meta:
        verbose_name = "OAuth provider"
        verbose_name_plural = "OAuth providers"
        ordering = ["name"]
        constraints = [
            models.UniqueConstraint(
                fields=["organization", "name"], name="oauth_provider_unique_name", nulls_distinct=False
            )
        ]

    def __str__(self):
        return self.name

    def _context(self) -> str:
        return f"oauth.provider:{self.organization_id or 'platform'}:{self.uuid}:client_secret"

    def set_client_secret(self, secret: str) -> None:
        if not secret:
            self.client_secret_sealed = ""
        elif self.organization_id is None:
            self.client_secret_sealed = keyring().encrypt(secret, context=self._context())
        else:
            self.client_secret_sealed = secrets.seal(self.organization_id, secret, context=self._context())

    def client_secret(self) -> str:
        """Raises DecryptionError; "" for public clients."""
        if not self.client_secret_sealed:
            return ""
        if self.organization_id is None:
            return keyring().decrypt(self.client_secret_sealed, context=self._context())
        return secrets.unseal(self.organization_id, self.client_secret_sealed, context=self._context())


def hash_state(state: str) -> str:
    return hashlib.sha256(state.encode()).hexdigest()


class AuthorizationFlow(TenantModel):
    """One authorization code flow in progress: its state (stored hashed), PKCE verifier (sealed),
    and what it is bound to. Single use; expires after OAUTH_STATE_TTL_SECONDS."""

    state_hash = models.CharField(max_length=64, unique=True)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    provider = models.ForeignKey(OAuthProvider, on_delete=models.CASCADE, related_name="+")
    resource = models.CharField(max_length=2048, blank=True)
    code_verifier_sealed = models.TextField()
    redirect_uri = models.CharField(max_length=2048)
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField()
    used_at = models.DateTimeField(null=True, blank=True)

    def _context(self) -> str:
        return f"oauth.flow:{self.state_hash}:code_verifier"

    def set_code_verifier(self, verifier: str) -> None:
        self.code_verifier_sealed = secrets.seal(self.organization_id, verifier, context=self._context())

    def code_verifier(self) -> str:
        return secrets.unseal(self.organization_id, self.code_verifier_sealed, context=self._context())


class TokenStatus(models.TextChoices):
    ACTIVE = "active", "Active"
    NEEDS_REAUTH = "needs_reauth", "Needs re-authorization"
    REVOKED = "revoked", "Revoked"


class OAuthToken(TenantModel):
    """A user's connection to a provider: the token set, sealed. One per user and provider."""

    uuid = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    provider = models.ForeignKey(OAuthProvider, on_delete=models.CASCADE, related_name="tokens")
    access_token_sealed = models.TextField(blank=True)
    refresh_token_sealed = models.TextField(blank=True)
    token_type = models.CharField(max_length=32, default="Bearer")
    scopes = models.JSONField(default=list, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    status = models.CharField(max_length=16, choices=TokenStatus.choices, default=TokenStatus.ACTIVE)
    last_error = models.CharField(max_length=500, blank=True)
    refreshed_at = models.DateTimeField(null=True, blank=True)
    refresh_failures = models.PositiveIntegerField(default=0)
    # Bumped by every write of the token set: a process's cached copy is stale when it differs.
    generation = models.PositiveIntegerField(default=1)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name = "OAuth connection"
        verbose_name_plural = "OAuth connections"
        ordering = ["-id"]
        constraints = [
            models.UniqueConstraint(fields=["user", "provider"], name="oauth_token_one_per_user_and_provider")
        ]

    def _context(self, field: str) -> str:
        return f"oauth.token:{self.uuid}:{field}"

    def set_tokens(self, *, access_token: str, refresh_token: str | None) -> None:
        self.access_token_sealed = secrets.seal(self.organization_id, access_token, context=self._context("access"))
        if refresh_token is not None:  # a refresh response without one keeps the old one
            self.refresh_token_sealed = (
                secrets.seal(self.organization_id, refresh_token, context=self._context("refresh"))
                if refresh_token
                else ""
            )

    def access_token(self) -> str:
        return secrets.unseal(self.organization_id, self.access_token_sealed, context=self._context("access"))

    def refresh_token(self) -> str:
        if not self.refresh_token_sealed:
            return ""
        return secrets.unseal(self.organization_id, self.refresh_token_sealed, context=self._context("refresh"))

    def expires_within(self, seconds: float) -> bool:
        return self.expires_at is not None and self.expires_at <= timezone.now() + datetime.timedelta(seconds=seconds)
