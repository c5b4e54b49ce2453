"""Privileges of the application's database role, which owns nothing.

`migrate` runs as the tables' owner (DATABASE_OWNER_URL) and then calls grant_application_role():
the application role may read and write tenant tables (row-level security decides which rows),
and may only read and insert into append-only tables (models with `append_only = True`), except
for the columns such a model names in `chain_fields`, which it may update (the trigger of
agentapi.db.operations.ChainedOnce lets them be filled in once, nothing more).
"""

from django.apps import apps
from django.conf import settings
from django.db import connections

OWNER_ALIAS = "owner"


def privileged_alias() -> str:
    """The alias that connects as the tables' owner: 'owner' when configured, else 'default'."""
    return OWNER_ALIAS if OWNER_ALIAS in settings.DATABASES else "default"


def grant_application_role(using: str) -> list[str]:
    """Grant the application role what it needs on every table; return the statements run."""
    connection = connections[using]
    app_role = settings.DATABASES["default"].get("USER")
    if connection.vendor != "postgresql" or not app_role or using == "default":
        return []
    quote = connection.ops.quote_name
    role = quote(app_role)
    statements = [
        f"GRANT USAGE ON SCHEMA public TO {role}",
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {role}",
        f"GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {role}",
        f"REVOKE TRUNCATE, REFERENCES, TRIGGER ON ALL TABLES IN SCHEMA public FROM {role}",
    ]
    for model in apps.get_models():
        if getattr(model, "append_only", False):
            table = quote(model._meta.db_table)
            statements.append(f"REVOKE UPDATE, DELETE, TRUNCATE ON {table} FROM {role}")
            chain_fields = getattr(model, "chain_fields", ())
            if chain_fields:
                columns = ", ".join(quote(model._meta.get_field(name).column) for name in chain_fields)
                statements.append(f"GRANT UPDATE ({columns}) ON {table} TO {role}")
    with connection.cursor() as cursor:
        for statement in statements:
            cursor.execute(statement)
    return statements
