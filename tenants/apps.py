from django.apps import AppConfig


class TenantsConfig(AppConfig):
    name = "tenants"
    verbose_name = "Organizations and identity"

    def ready(self):
        from django.contrib import admin

        from tenants import signin
        from tenants.models import IdempotencyRecord
        from tenants.secrets import register_sealed_field

        register_sealed_field(IdempotencyRecord, "response", lambda row: row.context())

        admin.site.login_form = signin.ThrottledAdminAuthenticationForm
