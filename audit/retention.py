"""Removing old audit events: the one privileged path that may delete from the log.

It runs on the tables' owner connection (DATABASE_OWNER_URL), inside a transaction that sets
app.privileged_maintenance, which the append-only trigger accepts only from the owner. For each
chain it first stores an anchor (the seq and hash of the last event removed), so that what remains
still verifies, then deletes, then records the purge in the chain with the application's own role.
"""

from datetime import timedelta

from django.db import connections, transaction
from django.utils import timezone

from agentapi.db.privileges import privileged_alias
from agentapi.db.scope import DatabaseScope, use_scope
from audit.models import AuditChainAnchor, AuditEvent
from audit.services import audit_record
from tenants import scoping


def _purge_chain(using: str, organization_id: int | None, cutoff) -> int:
    events = AuditEvent._base_manager.using(using).filter(organization_id=organization_id)
    # Only what is chained: an event still waiting for the sequencer is never purged.
    last = events.filter(occurred_at__lt=cutoff, seq__isnull=False).order_by("-seq").values_list("seq", "hash").first()
    if last is None:
        return 0
    AuditChainAnchor._base_manager.using(using).create(organization_id=organization_id, seq=last[0], hash=last[1])
    deleted, _ = events.filter(seq__lte=last[0]).delete()
    return deleted


def audit_events_purge(*, older_than_days: int) -> dict[int | None, int]:
    """Delete events older than the given age from every chain; returns {organization id: count}."""
    cutoff = timezone.now() - timedelta(days=older_than_days)
    using = privileged_alias()
    purged = {}
    with use_scope(DatabaseScope(all_organizations=True)), transaction.atomic(using=using):
        connection = connections[using]
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute("SELECT set_config('app.privileged_maintenance', 'on', true)")
        chains = (
            AuditEvent._base_manager.using(using)
            .filter(occurred_at__lt=cutoff, seq__isnull=False)
            .values_list("organization_id", flat=True)
            .distinct()
        )
        for organization_id in list(chains):
            count = _purge_chain(using, organization_id, cutoff)
            if count:
                purged[organization_id] = count
    with scoping.dangerously_all_organizations(reason="record audit purge", record=False):
        for organization_id, count in purged.items():
            audit_record(
                "audit.events.purge",
                organization_id=organization_id,
                details={"deleted": count, "older_than_days": older_than_days, "cutoff": cutoff.isoformat()},
            )
    return purged
