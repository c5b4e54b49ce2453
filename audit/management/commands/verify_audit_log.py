from django.core.management.base import BaseCommand, CommandError

from audit import chain, sequencer
from audit.models import AuditEvent
from audit.services import audit_chain_verify
from tenants import scoping
from tenants.models import Organization


class Command(BaseCommand):
    help = (
        "Verify the audit log's hash chains; exits non-zero at the first broken link. Reports the events "
        "still waiting for the sequencer."
    )

    def add_arguments(self, parser):
        parser.add_argument("--organization", help="Only this organization's chain (slug).")
        parser.add_argument(
            "--chain-first", action="store_true", help="Run the sequencer once first (chain what waits)."
        )

    def handle(self, organization=None, chain_first=False, **options):
        if chain_first:
            chained = sequencer.audit_chain_extend()
            self.stdout.write(f"Chained {chained} waiting event(s).")
        with scoping.dangerously_all_organizations(reason="verify_audit_log"):
            if organization:
                org = Organization.objects.filter(slug=organization).first()
                if org is None:
                    raise CommandError(f"No organization with slug '{organization}'.")
                chains = [org.pk]
                waiting = chain.waiting(org.pk)
            else:
                waiting = chain.waiting(every_chain=True)
                chains = list(AuditEvent.objects.values_list("organization_id", flat=True).distinct().order_by())
            total, breaks = 0, []
            for organization_id in chains:
                checked, first_break = audit_chain_verify(organization_id)
                total += checked
                if first_break:
                    breaks.append(first_break)
        for item in breaks:
            self.stderr.write(
                f"BROKEN chain of organization {item.organization_id}: event {item.event_id} "
                f"(seq {item.seq}): {item.reason}"
            )
        if breaks:
            raise CommandError(f"{len(breaks)} broken chain(s); {total} events verified before the breaks.")
        self.stdout.write(f"OK: {total} events in {len(chains)} chain(s) verified.")
        age = waiting.as_dict()["oldest_pending_seconds"]
        self.stdout.write(
            f"Waiting to be chained: {waiting.count}" + (f" (the oldest for {age:.1f} s)." if waiting.count else ".")
        )
