"""System prompt layers and their versions.

A prompt belongs to a layer: `global` (the platform's, written by operators; no organization),
`organization` (written by its owners and admins) or `user` (one member's own). Every edit makes a
new immutable version (PromptVersion, append-only); the prompt row holds the current one.
Composition (sessions_app.prompts) is always global, then organization, then user.

Agent sessions (AgentSession) are a user's: the servers attached (SessionServer), the composed
prompt they started with, and their lifetime.
"""

import uuid

from django.conf import settings
from django.db import models
from django.db.models import Q

from agentapi.crypto import keyring
from tenants import secrets
from tenants.models import TenantManager, TenantModel


class PromptScope(models.TextChoices):
    GLOBAL = "global", "Global (the platform's)"
    ORGANIZATION = "organization", "Organization"
    USER = "user", "User"


LAYER_ORDER = {PromptScope.GLOBAL: 0, PromptScope.ORGANIZATION: 1, PromptScope.USER: 2}


class PromptManager(TenantManager):
    """Prompts of the organizations in scope, and the platform's global ones."""

    def get_queryset(self):
        return models.Manager.get_queryset(self).filter(
            Q(organization__in_current_scope=True) | Q(organization__isnull=True)
        )


class SystemPrompt(models.Model):
    organization = models.ForeignKey(
        "tenants.Organization", null=True, blank=True, on_delete=models.CASCADE, related_name="+"
    )
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.CASCADE, related_name="+",
        help_text="The member a user-layer prompt belongs to.",
    )  # fmt: skip
    scope = models.CharField(max_length=16, choices=PromptScope.choices)
    name = models.CharField(max_length=200)
    content = models.TextField(help_text="A template (Jinja2, sandboxed): see the README for its variables.")
    priority = models.IntegerField(default=100, help_text="Lower comes first within its layer.")
    enabled = models.BooleanField(default=True)
    version = models.PositiveIntegerField(default=1, editable=False)
    findings = models.JSONField(default=list, blank=True, editable=False, help_text="What screening found.")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = PromptManager()

    class Meta:
        verbose_name = "system prompt"
        verbose_name_plural = "system prompts"
        ordering = ["scope", "priority", "name"]
        constraints = [
            models.CheckConstraint(
                name="system_prompt_layer_owner",
                condition=(
                    Q(scope=PromptScope.GLOBAL, organization__isnull=True, user__isnull=True)
                    | Q(scope=PromptScope.ORGANIZATION, organization__isnull=False, user__isnull=True)
                    | Q(scope=PromptScope.USER, organization__isnull=False, user__isnull=False)
                ),
            ),
        ]
        indexes = [models.Index(fields=["organization", "scope", "enabled"], name="system_prompt_layer")]

    def __str__(self):
        return f"{self.scope}: {self.name}"

    def sort_key(self) -> tuple:
        return (LAYER_ORDER[self.scope], self.priority, self.name, self.pk)


class PromptVersion(models.Model):
    """One saved state of a prompt. Append-only: the database refuses updates and deletes."""

    append_only = True

    prompt = models.ForeignKey(SystemPrompt, on_delete=models.DO_NOTHING, related_name="versions", db_constraint=False)
    organization = models.ForeignKey(
        "tenants.Organization", null=True, blank=True, on_delete=models.DO_NOTHING, related_name="+",
        db_constraint=False,
    )  # fmt: skip
    version = models.PositiveIntegerField()
    name = models.CharField(max_length=200)
    content = models.TextField()
    priority = models.IntegerField()
    enabled = models.BooleanField()
    findings = models.JSONField(default=list, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.DO_NOTHING, related_name="+",
        db_constraint=False,
    )  # fmt: skip
    created_at = models.DateTimeField(auto_now_add=True)

    objects = PromptManager()

    class Meta:
        verbose_name = "system prompt version"
        verbose_name_plural = "system prompt versions"
        ordering = ["prompt", "-version"]
        constraints = [models.UniqueConstraint(fields=["prompt", "version"], name="prompt_version_unique")]

    def __str__(self):
        return f"{self.name} v{self.version}"


class AgentKind(models.TextChoices):
    OPENAI = "openai", "OpenAI-compatible Chat Completions"
    ANTHROPIC = "anthropic", "Anthropic Messages"
    AGENTAPI = "agentapi", "coder/agentapi (a terminal agent)"


# What a backend's `settings` may hold, with their defaults (sessions_app.agents checks them).
AGENT_SETTINGS_DEFAULTS = {"temperature": None, "max_output_tokens": None, "max_steps": 20, "run_timeout_seconds": 600}


class AgentBackendManager(TenantManager):
    """Backends of the organizations in scope, and the platform's (every organization may use them)."""

    def get_queryset(self):
        return models.Manager.get_queryset(self).filter(
            Q(organization__in_current_scope=True) | Q(organization__isnull=True)
        )


class AgentBackend(models.Model):
    """What runs a session's agent: a model behind an OpenAI-compatible or Anthropic API, or a
    coder/agentapi server in front of a terminal agent. Its API key is sealed (the organization's
    data key; the platform's backends under the master keyring) and never shown."""

    organization = models.ForeignKey(
        "tenants.Organization", null=True, blank=True, on_delete=models.CASCADE, related_name="+",
        help_text="Empty: the platform's, for every organization.",
    )  # fmt: skip
    uuid = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    name = models.SlugField(max_length=63)
    kind = models.CharField(max_length=16, choices=AgentKind.choices)
    base_url = models.URLField(
        max_length=2048, blank=True,
        help_text="Checked against the outbound rules; pinned when dialled. Empty for an agentapi backend started "
        "per session from a template.",
    )  # fmt: skip
    template = models.ForeignKey(
        "mcp.StdioTemplate", null=True, blank=True, on_delete=models.PROTECT, related_name="+",
        help_text="agentapi only: the operator's template that starts a terminal agent per session "
        "(sessions_app.terminals); its arguments name {port}.",
    )  # fmt: skip
    template_arguments = models.JSONField(
        default=dict, blank=True, help_text='What the template lets you set: {"arguments": {...}, "env": {...}}.'
    )
    model = models.CharField(max_length=200, blank=True, help_text="The model name (openai and anthropic kinds).")
    api_key_sealed = models.TextField(blank=True, editable=False)
    settings = models.JSONField(
        default=dict, blank=True, help_text="temperature, max_output_tokens, max_steps, run_timeout_seconds"
    )
    enabled = models.BooleanField(default=True)
    revision = models.PositiveIntegerField(default=1, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = AgentBackendManager()

    class Meta:
        verbose_name = "agent backend"
        verbose_name_plural = "agent backends"
        ordering = ["name"]
        constraints = [
            models.UniqueConstraint(
                fields=["organization", "name"], name="agent_backend_unique_name", nulls_distinct=False
            )
        ]

    def __str__(self):
        return self.name

    def _context(self) -> str:
        return f"sessions.agent:{self.organization_id or 'platform'}:{self.uuid}:api_key"

    def set_api_key(self, key: str) -> None:
        if not key:
            self.api_key_sealed = ""
        elif self.organization_id is None:
            self.api_key_sealed = keyring().encrypt(key, context=self._context())
        else:
            self.api_key_sealed = secrets.seal(self.organization_id, key, context=self._context())

    def api_key(self) -> str:
        """Raises DecryptionError; "" when it has none."""
        if not self.api_key_sealed:
            return ""
        if self.organization_id is None:
            return keyring().decrypt(self.api_key_sealed, context=self._context())
        return secrets.unseal(self.organization_id, self.api_key_sealed, context=self._context())

    def setting(self, name: str):
        return (self.settings or {}).get(name, AGENT_SETTINGS_DEFAULTS[name])


class SessionStatus(models.TextChoices):
    ACTIVE = "active", "Active"
    CLOSED = "closed", "Closed"
    EXPIRED = "expired", "Expired"


class AgentSession(TenantModel):
    """A user's agent session: the servers it may use, the system prompt composed when it was
    opened (a snapshot: later edits of the layers do not change it), and its lifetime."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    name = models.CharField(max_length=200, blank=True)
    agent = models.ForeignKey(
        AgentBackend, null=True, blank=True, on_delete=models.SET_NULL, related_name="+",
        help_text="Empty: a tools-only session.",
    )  # fmt: skip
    status = models.CharField(max_length=16, choices=SessionStatus.choices, default=SessionStatus.ACTIVE)
    system_prompt = models.TextField(blank=True)
    prompt_layers = models.JSONField(default=list, blank=True, help_text="The layers and versions composed.")
    metadata = models.JSONField(default=dict, blank=True)
    mcp_token_hash = models.CharField(max_length=64, blank=True, editable=False, db_index=True)
    # The token of the terminal agent started for this session (sessions_app.terminals): a second
    # session token, minted by the worker that starts the process, ending with it or the session.
    agent_token_hash = models.CharField(max_length=64, blank=True, editable=False, db_index=True)
    created_at = models.DateTimeField(auto_now_add=True)
    last_active_at = models.DateTimeField()
    expires_at = models.DateTimeField(help_text="When it expires if unused (sliding), never after its maximum age.")
    ends_at = models.DateTimeField(help_text="Its maximum age.")
    closed_at = models.DateTimeField(null=True, blank=True)

    objects = TenantManager()

    class Meta:
        verbose_name = "agent session"
        verbose_name_plural = "agent sessions"
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["organization", "user", "status"], name="agent_session_user_status")]

    def __str__(self):
        return self.name or str(self.id)

    def current_status(self, now) -> str:
        if self.status == SessionStatus.ACTIVE and now >= min(self.expires_at, self.ends_at):
            return SessionStatus.EXPIRED
        return self.status


class SessionServer(TenantModel):
    """An MCP configuration attached to a session."""

    session = models.ForeignKey(AgentSession, on_delete=models.CASCADE, related_name="servers")
    configuration = models.ForeignKey("mcp.MCPConfiguration", on_delete=models.CASCADE, related_name="+")
    prefix = models.CharField(
        max_length=24, help_text="What the session's names of this server's tools begin with (sessions_app.naming)."
    )
    attached_at = models.DateTimeField(auto_now_add=True)

    objects = TenantManager()

    class Meta:
        verbose_name = "session server"
        verbose_name_plural = "session servers"
        ordering = ["attached_at", "id"]
        constraints = [
            models.UniqueConstraint(fields=["session", "configuration"], name="session_server_unique"),
            models.UniqueConstraint(fields=["session", "prefix"], name="session_server_prefix_unique"),
        ]


# -- conversations ------------------------------------------------------------------------------


class RunStatus(models.TextChoices):
    RUNNING = "running", "Running"
    COMPLETED = "completed", "Completed"
    FAILED = "failed", "Failed"
    CANCELLED = "cancelled", "Cancelled"


class AgentRun(TenantModel):
    """One turn of a session's agent: started by a user's message, run by a Celery worker
    (sessions_app.runs). At most one runs per session at a time (the database holds to it)."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    session = models.ForeignKey(AgentSession, on_delete=models.CASCADE, related_name="runs")
    backend = models.ForeignKey(AgentBackend, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    status = models.CharField(max_length=16, choices=RunStatus.choices, default=RunStatus.RUNNING)
    error = models.JSONField(null=True, blank=True, help_text="`code` and `message` when it failed.")
    input_tokens = models.PositiveBigIntegerField(default=0)
    output_tokens = models.PositiveBigIntegerField(default=0)
    steps = models.PositiveIntegerField(default=0, help_text="Model requests made.")
    tool_calls = models.PositiveIntegerField(default=0)
    first_event_ms = models.FloatField(null=True, blank=True, help_text="From the message to the agent's first output.")
    claimed_at = models.DateTimeField(null=True, blank=True, help_text="When a worker took it (once).")
    heartbeat_at = models.DateTimeField(null=True, blank=True, help_text="Its worker's last sign of life.")
    created_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    objects = TenantManager()

    class Meta:
        verbose_name = "agent run"
        verbose_name_plural = "agent runs"
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["session"], condition=Q(status="running"), name="agent_run_one_running_per_session"
            )
        ]
        indexes = [models.Index(fields=["status", "heartbeat_at"], name="agent_run_status_heartbeat")]

    def __str__(self):
        return f"run {self.id} ({self.status})"


class MessageRole(models.TextChoices):
    USER = "user", "User"
    ASSISTANT = "assistant", "Assistant"
    TOOL = "tool", "Tool result"


class AgentMessage(TenantModel):
    """One message of a session's conversation, in order (`seq`, from 0): the user's, the
    assistant's (its text and the tool calls it asked for), and each tool call's result."""

    session = models.ForeignKey(AgentSession, on_delete=models.CASCADE, related_name="messages")
    run = models.ForeignKey(AgentRun, null=True, blank=True, on_delete=models.SET_NULL, related_name="messages")
    seq = models.PositiveIntegerField(help_text="Its place in the conversation.")
    role = models.CharField(max_length=16, choices=MessageRole.choices)
    content = models.TextField(blank=True)
    tool_calls = models.JSONField(default=list, blank=True, help_text="The assistant's: id, name, arguments.")
    tool_call_id = models.CharField(max_length=200, blank=True, help_text="A tool result's call.")
    tool_name = models.CharField(max_length=128, blank=True)
    is_error = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)

    objects = TenantManager()

    class Meta:
        verbose_name = "agent message"
        verbose_name_plural = "agent messages"
        ordering = ["session", "seq"]
        constraints = [
            models.UniqueConstraint(fields=["session", "seq"], name="agent_message_order"),
            # A tool call has one result, however often its run is delivered.
            models.UniqueConstraint(
                fields=["run", "tool_call_id"], condition=Q(role="tool"), name="agent_message_one_result_per_call"
            ),
        ]

    def __str__(self):
        return f"{self.role} #{self.seq}"


class EventType(models.TextChoices):
    MESSAGE_UPDATE = "message_update", "Message update"
    TOOL_CALL = "tool_call", "Tool call"
    TOOL_RESULT = "tool_result", "Tool result"
    STATUS_CHANGE = "status_change", "Status change"
    AGENT_ERROR = "agent_error", "Agent error"


class AgentEvent(TenantModel):
    """What happened in a session, in the order its stream sends it (the id is the SSE `id:`).
    Written under a lock their other writers share, so ids are committed in order (sessions_app.events)."""

    id = models.BigAutoField(primary_key=True)
    session = models.ForeignKey(AgentSession, on_delete=models.CASCADE, related_name="events")
    run = models.ForeignKey(AgentRun, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    type = models.CharField(max_length=32, choices=EventType.choices)
    data = models.JSONField(default=dict)
    created_at = models.DateTimeField(auto_now_add=True)

    objects = TenantManager()

    class Meta:
        verbose_name = "agent event"
        verbose_name_plural = "agent events"
        ordering = ["id"]
        indexes = [models.Index(fields=["session", "id"], name="agent_event_stream")]

    def __str__(self):
        return f"{self.type} #{self.id}"
