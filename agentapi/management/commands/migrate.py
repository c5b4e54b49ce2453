"""`migrate` as the tables' owner, then grant the application role what it may do.

DESIGN.md: DATABASE_URL is the application's role (owns nothing, no BYPASSRLS); DATABASE_OWNER_URL,
when set, is the role that migrates. Running plain `manage.py migrate` does the right thing.
"""

from django.core.management.commands.migrate import Command as DjangoMigrate
from django.db import DEFAULT_DB_ALIAS

from agentapi.db.privileges import grant_application_role, privileged_alias


class Command(DjangoMigrate):
    def handle(self, *args, **options):
        if options["database"] == DEFAULT_DB_ALIAS:
            options["database"] = privileged_alias()
        super().handle(*args, **options)
        statements = grant_application_role(options["database"])
        if statements and options["verbosity"] >= 1:
            self.stdout.write(f"Granted the application role its privileges ({len(statements)} statements).")
