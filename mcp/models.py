"""MCP server configurations, the stdio templates operators approve, and pinned tool definitions.

Credentials (a bearer token, custom headers) are sealed under the organization's data key
(tenants.secrets, envelope encryption under the versioned master keyring), bound to the row they
belong to (the row's uuid is in the associated data), and never leave the model except through
`credential_headers()`.
"""

import hashlib
import json
import uuid

from django.conf import settings
from django.db import models

from tenants import secrets
from tenants.models import TenantModel


class Transport(models.TextChoices):
    STREAMABLE_HTTP = "streamable-http", "Streamable HTTP"
    SSE = "sse", "SSE"
    STDIO = "stdio", "stdio"


class AuthType(models.TextChoices):
    NONE = "none", "None"
    BEARER = "bearer", "Bearer token"
    HEADERS = "headers", "Custom headers"
    OAUTH = "oauth", "OAuth connection"


class Status(models.TextChoices):
    UNKNOWN = "unknown", "Not checked yet"
    HEALTHY = "healthy", "Healthy"
    UNHEALTHY = "unhealthy", "Unhealthy"
    DISABLED = "disabled", "Disabled after repeated failures"


class StdioTemplate(models.Model):
    """A command line an operator approved. Global: tenants pick one and fill in only what it allows.

    `allowed_arguments` names the options a tenant may add (each followed by one value);
    `allowed_env` names the environment variables a tenant may set. Code-injecting variables are
    refused even here (mcp.stdio.DENIED_ENV).
    """

    name = models.SlugField(max_length=63, unique=True)
    description = models.CharField(max_length=500, blank=True)
    command = models.CharField(max_length=500, help_text="An absolute path or a name found on PATH.")
    arguments = models.JSONField(default=list, blank=True, help_text="Fixed arguments, always passed first.")
    allowed_arguments = models.JSONField(default=list, blank=True)
    allowed_env = models.JSONField(default=list, blank=True)
    env = models.JSONField(default=dict, blank=True, help_text="Fixed environment variables.")
    memory_limit_mb = models.PositiveIntegerField(default=1024)
    cpu_limit_seconds = models.PositiveIntegerField(default=3600)
    open_files_limit = models.PositiveIntegerField(default=256)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name = "stdio template"
        verbose_name_plural = "stdio templates"
        ordering = ["name"]

    def __str__(self):
        return self.name


class MCPConfiguration(TenantModel):
    """One MCP server an organization (or one of its users, `owner`) registered."""

    uuid = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    name = models.CharField(max_length=200)
    transport = models.CharField(max_length=16, choices=Transport.choices, default=Transport.STREAMABLE_HTTP)
    url = models.URLField(max_length=2048, blank=True)
    stdio_template = models.ForeignKey(StdioTemplate, null=True, blank=True, on_delete=models.PROTECT)
    stdio_arguments = models.JSONField(default=dict, blank=True)
    auth_type = models.CharField(max_length=16, choices=AuthType.choices, default=AuthType.NONE)
    bearer_token_encrypted = models.TextField(blank=True, editable=False)
    headers_encrypted = models.TextField(blank=True, editable=False)
    # auth_type oauth: the provider whose connection each user makes; empty until discovered (the
    # MCP server's own authorization server, registered dynamically) or chosen.
    oauth_provider = models.ForeignKey(
        "oauth.OAuthProvider", null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.CASCADE)
    allowed_tools = models.JSONField(null=True, blank=True)
    enabled = models.BooleanField(default=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.UNKNOWN)
    last_error = models.CharField(max_length=500, blank=True)
    last_checked_at = models.DateTimeField(null=True, blank=True)
    consecutive_failures = models.PositiveIntegerField(default=0)
    # Bumped by every change that affects how the server is reached: pooled sessions and cached
    # catalogues are keyed by it, so a change replaces them.
    revision = models.PositiveIntegerField(default=1)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name = "MCP configuration"
        verbose_name_plural = "MCP configurations"
        ordering = ["-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["organization", "owner", "name"], name="mcp_configuration_unique_name", nulls_distinct=False
            )
        ]

    def __str__(self):
        return self.name

    def _context(self, field: str) -> str:
        return f"mcp.configuration:{self.organization_id}:{self.uuid}:{field}"

    def _seal(self, field: str, plaintext: str) -> str:
        return secrets.seal(self.organization_id, plaintext, context=self._context(field)) if plaintext else ""

    def set_bearer_token(self, token: str) -> None:
        self.bearer_token_encrypted = self._seal("bearer_token", token)

    def set_headers(self, headers: dict) -> None:
        self.headers_encrypted = self._seal("headers", json.dumps(headers, sort_keys=True) if headers else "")

    def credential_headers(self) -> dict:
        """The headers that authenticate the platform to the server. Raises DecryptionError."""
        if self.auth_type == AuthType.BEARER and self.bearer_token_encrypted:
            token = secrets.unseal(
                self.organization_id, self.bearer_token_encrypted, context=self._context("bearer_token")
            )
            return {"Authorization": f"Bearer {token}"}
        if self.auth_type == AuthType.HEADERS and self.headers_encrypted:
            plaintext = secrets.unseal(self.organization_id, self.headers_encrypted, context=self._context("headers"))
            return json.loads(plaintext)
        return {}

    @property
    def has_credentials(self) -> bool:
        return bool(self.bearer_token_encrypted or self.headers_encrypted)

    def tool_allowed(self, name: str) -> bool:
        return self.allowed_tools is None or name in self.allowed_tools


class PinStatus(models.TextChoices):
    APPROVED = "approved", "Approved"
    PENDING = "pending", "Changed, waiting for approval"


def tool_definition_hash(definition: dict) -> str:
    """A stable hash of what a model reads about a tool: its name, description and schemas."""
    pinned = {key: definition.get(key) for key in ("name", "title", "description", "inputSchema", "outputSchema")}
    return hashlib.sha256(json.dumps(pinned, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


class ToolPin(TenantModel):
    """The definition of a tool as it was first seen (or last approved), to notice when it changes.

    A server that rewrites a tool's description or schema after it was approved can steer a model
    ("tool poisoning", a rug pull); the change is recorded and, where the organization asks for it,
    the tool is withheld until an admin approves the new definition.
    """

    configuration = models.ForeignKey(MCPConfiguration, on_delete=models.CASCADE, related_name="pins")
    name = models.CharField(max_length=200)
    definition_hash = models.CharField(max_length=64)
    definition = models.JSONField()
    status = models.CharField(max_length=16, choices=PinStatus.choices, default=PinStatus.APPROVED)
    pending_hash = models.CharField(max_length=64, blank=True)
    pending_definition = models.JSONField(null=True, blank=True)
    first_seen_at = models.DateTimeField(auto_now_add=True)
    changed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name = "tool pin"
        verbose_name_plural = "tool pins"
        ordering = ["name"]
        constraints = [models.UniqueConstraint(fields=["configuration", "name"], name="mcp_toolpin_unique")]

    def __str__(self):
        return f"{self.configuration_id}:{self.name}"
