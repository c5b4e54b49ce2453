"""The append-only audit log.

Each organization's events form a hash chain: an event's hash covers its own fields and the hash of
the event before it in the same organization, so a row edited, removed or inserted behind the
application's back breaks the chain at that point (audit.chain.verify).

An event is written with one INSERT that takes no lock (its `seq`, `prev_hash` and `hash` empty), so
that no request waits on another to append; one writer, the sequencer (audit.sequencer), gives the
waiting events their place in their chains in batches, about a second later. The application's
database role may SELECT and INSERT here, and UPDATE only the chain's columns; a trigger refuses
any UPDATE but that one (filling in an unchained event's chain columns, once, nothing else), and
every DELETE and TRUNCATE from anyone outside the owner's explicit maintenance path
(agentapi.db.operations.MakeAppendOnly, ChainedOnce).

No foreign key cascades into this table: the actor and organization are kept as ids plus a
snapshot, so deleting a user or an organization leaves its history intact.
"""

from django.db import models

from tenants.models import TenantManager, TenantModel

GENESIS_HASH = "0" * 64


class Outcome(models.TextChoices):
    SUCCESS = "success", "Success"
    FAILURE = "failure", "Failure"
    DENIED = "denied", "Denied"


class ActorType(models.TextChoices):
    USER = "user", "User"
    API_KEY = "api_key", "API key"
    SYSTEM = "system", "System"
    ANONYMOUS = "anonymous", "Anonymous"


class AuditEvent(models.Model):
    append_only = True
    # Filled in once by the sequencer, and the only columns the application role may update.
    chain_fields = ("seq", "prev_hash", "hash", "chained_at")

    organization = models.ForeignKey(
        "tenants.Organization",
        null=True,
        blank=True,
        on_delete=models.DO_NOTHING,
        db_constraint=False,
        related_name="+",
        help_text="Empty for platform events with no organization (a failed sign-in with an unknown key).",
    )
    seq = models.BigIntegerField(
        null=True, blank=True, help_text="Position in the organization's chain, from 1; empty until chained."
    )
    occurred_at = models.DateTimeField(db_index=True)
    actor_type = models.CharField(max_length=16, choices=ActorType.choices)
    actor_user_id = models.BigIntegerField(null=True, blank=True)
    actor_label = models.CharField(max_length=254, blank=True, help_text="E-mail at the time, or 'system'.")
    actor_api_key_id = models.BigIntegerField(null=True, blank=True)
    actor_api_key_prefix = models.CharField(max_length=32, blank=True)
    action = models.CharField(max_length=100, help_text="<domain>.<object>.<verb>")
    target_type = models.CharField(max_length=100, blank=True)
    target_id = models.CharField(max_length=64, blank=True)
    outcome = models.CharField(max_length=16, choices=Outcome.choices, default=Outcome.SUCCESS)
    ip = models.CharField(max_length=45, blank=True)  # text: hashed exactly as stored
    user_agent = models.CharField(max_length=512, blank=True)
    request_id = models.CharField(max_length=128, blank=True)
    details = models.JSONField(default=dict, blank=True)
    prev_hash = models.CharField(max_length=64, blank=True)
    # NULL until chained: unique, and every waiting event must be allowed to lack one.
    hash = models.CharField(max_length=64, unique=True, null=True, blank=True)
    chained_at = models.DateTimeField(null=True, blank=True, help_text="When the sequencer chained it.")

    objects = TenantManager()

    class Meta:
        ordering = ["-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["organization", "seq"],
                name="audit_event_chain_seq",
                condition=models.Q(seq__isnull=False),
                nulls_distinct=False,
            )
        ]
        indexes = [
            # The sequencer's queue: small, because events wait in it about a second.
            models.Index(fields=["id"], name="audit_unchained", condition=models.Q(hash__isnull=True)),
            models.Index(fields=["organization", "action"], name="audit_org_action"),
            models.Index(fields=["organization", "target_type", "target_id"], name="audit_org_target"),
        ]

    def __str__(self):
        return f"{self.action} by {self.actor_label} ({self.outcome})"


class AuditChainAnchor(models.Model):
    """Where a chain resumes after a purge: the seq and hash of the last event removed.

    Written only by purge_audit_events through the owner's connection; append-only like the log, so
    the application role cannot forge an anchor to hide a deletion.
    """

    append_only = True

    organization = models.ForeignKey(
        "tenants.Organization", null=True, on_delete=models.DO_NOTHING, db_constraint=False, related_name="+"
    )
    seq = models.BigIntegerField()
    hash = models.CharField(max_length=64)
    created_at = models.DateTimeField(auto_now_add=True)

    objects = TenantManager()

    class Meta:
        ordering = ["-seq"]

    def __str__(self):
        return f"anchor of {self.organization_id} at {self.seq}"


class ToolCallHour(TenantModel):
    """Tool calls (`mcp.tool.call` events) per server and hour, and how many failed or were refused,
    added up by the sequencer in the transaction that chains the events (audit.sequencer): each
    event is counted once, when it is chained. The console's chart reads these rows, not the events
    (100,000 events a day would be 100,000 rows to group on every page load)."""

    target_id = models.CharField(max_length=64, help_text="The MCP configuration's id.")
    hour = models.DateTimeField()
    calls = models.PositiveIntegerField(default=0)
    errors = models.PositiveIntegerField(default=0, help_text="Failed or refused.")

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["organization", "target_id", "hour"], name="audit_tool_call_hour_unique")
        ]
        indexes = [models.Index(fields=["hour"], name="audit_tool_call_hour_hour")]
