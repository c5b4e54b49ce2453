from django.db import migrations, models

from agentapi.db.operations import EnableRowLevelSecurity


def give_prefixes(apps, schema_editor):
    """Sessions opened before prefixes existed: each server's prefix from its name, in attach order."""
    from agentapi.db.scope import DatabaseScope, use_scope
    from sessions_app.naming import prefix_for

    SessionServer = apps.get_model("sessions_app", "SessionServer")
    servers = SessionServer.objects.using(schema_editor.connection.alias)  # the migrating connection
    with use_scope(DatabaseScope(all_organizations=True)):
        taken: dict = {}
        for server in servers.select_related("configuration").order_by("attached_at", "id"):
            names = taken.setdefault(server.session_id, set())
            server.prefix = prefix_for(server.configuration.name, names)
            names.add(server.prefix)
            server.save(update_fields=["prefix"])


class Migration(migrations.Migration):
    dependencies = [("sessions_app", "0002_agent_sessions")]

    operations = [
        migrations.AddField(
            model_name="sessionserver",
            name="prefix",
            field=models.CharField(
                default="",
                help_text="What the session's names of this server's tools begin with (sessions_app.naming).",
                max_length=24,
            ),
            preserve_default=False,
        ),
        migrations.RunPython(give_prefixes, migrations.RunPython.noop),
        migrations.AddConstraint(
            model_name="sessionserver",
            constraint=models.UniqueConstraint(fields=("session", "prefix"), name="session_server_prefix_unique"),
        ),
        # The session token is presented before its organization is known: its hash admits
        # exactly its own session (never an empty hash: a closed session's token is cleared).
        EnableRowLevelSecurity(
            "agentsession",
            extra="mcp_token_hash <> '' AND mcp_token_hash = current_setting('app.secret_hash', true)",
        ),
    ]
