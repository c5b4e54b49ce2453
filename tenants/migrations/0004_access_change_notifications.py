from django.db import migrations

from agentapi.db.operations import NotifyChanges


class Migration(migrations.Migration):
    """What decides a credential's access is announced when it changes (agentapi.db.aio.Changes)."""

    dependencies = [
        ("tenants", "0003_idempotency_records"),
    ]

    operations = [
        NotifyChanges("organization", organization_column="id"),
        NotifyChanges("membership"),
        NotifyChanges("apikey", ignored=["last_used_at"]),
        NotifyChanges("user", organization_column="", ignored=["last_login"]),
    ]
