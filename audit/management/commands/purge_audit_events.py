from django.core.management.base import BaseCommand, CommandError

from audit.retention import audit_events_purge


class Command(BaseCommand):
    help = "Delete audit events older than DAYS through the owner's privileged path (itself audited)."

    def add_arguments(self, parser):
        parser.add_argument("--older-than", type=int, required=True, metavar="DAYS")

    def handle(self, older_than, **options):
        if older_than < 1:
            raise CommandError("--older-than must be at least 1 day.")
        purged = audit_events_purge(older_than_days=older_than)
        self.stdout.write(f"Purged {sum(purged.values())} event(s) from {len(purged)} chain(s).")
