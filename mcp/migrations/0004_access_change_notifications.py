from django.db import migrations

from agentapi.db.operations import NotifyChanges


class Migration(migrations.Migration):
    """A configuration or a tool's pin changing is announced (agentapi.db.aio.Changes); a health
    check that only records when it ran, or a status shown in the console, is not."""

    dependencies = [
        ("mcp", "0003_alter_mcpconfiguration_options_and_more"),
        ("tenants", "0004_access_change_notifications"),
    ]

    operations = [
        NotifyChanges(
            "mcpconfiguration", ignored=["last_checked_at", "status", "consecutive_failures", "updated_at"]
        ),
        NotifyChanges("toolpin"),
    ]
