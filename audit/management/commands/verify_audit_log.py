from django.core.management.base import BaseCommand, CommandError

from audit import chain
from audit.models import AuditEvent
from tenants import scoping
from tenants.models import Organization


class Command(BaseCommand):
    help = "Verify the audit log's hash chains; exits non-zero at the first broken link."

    def add_arguments(self, parser):
        parser.add_argument("--organization", help="Only this organization's chain (slug).")

    def handle(self, organization=None, **options):
        with scoping.dangerously_all_organizations(reason="verify_audit_log"):
            if organization:
                org = Organization.objects.filter(slug=organization).first()
                if org is None:
                    raise CommandError(f"No organization with slug '{organization}'.")
                chains = [org.pk]
            else:
                chains = list(AuditEvent.objects.values_list("organization_id", flat=True).distinct().order_by())
            total, breaks = 0, []
            for organization_id in chains:
                checked, first_break = chain.verify(organization_id)
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
