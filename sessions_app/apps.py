from django.apps import AppConfig


class SessionsConfig(AppConfig):
    name = "sessions_app"
    verbose_name = "Agents and sessions"

    def ready(self):
        from tenants import idempotency

        idempotency.REBUILDERS["sessions_app.agentrun"] = "sessions_app.dataplane.rebuild_answer"
