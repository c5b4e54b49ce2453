from django.apps import AppConfig


class AuditConfig(AppConfig):
    name = "audit"
    verbose_name = "Audit log"

    def ready(self):
        from audit import recorders
        from tenants import scoping, security, services

        services.on_change(recorders.record_change)
        scoping.on_crossing(recorders.record_crossing)
        security.on_security_event(recorders.record_security_event)
