"""`flush` through the owner's connection.

The application role may not TRUNCATE (and never touches append-only tables), so emptying the
database, which only tests and operators do, goes through the tables' owner inside a maintenance
transaction that the append-only trigger recognises.
"""

from django.core.management.commands.flush import Command as DjangoFlush
from django.db import DEFAULT_DB_ALIAS, connections, transaction

from agentapi.db.privileges import privileged_alias


class Command(DjangoFlush):
    def handle(self, **options):
        if options["database"] == DEFAULT_DB_ALIAS:
            options["database"] = privileged_alias()
        connection = connections[options["database"]]
        if connection.vendor != "postgresql":
            return super().handle(**options)
        with transaction.atomic(using=options["database"]):
            with connection.cursor() as cursor:
                cursor.execute("SELECT set_config('app.privileged_maintenance', 'on', true)")
            return super().handle(**options)
