from django.apps import AppConfig


class TenantsConfig(AppConfig):
    name = "tenants"
    verbose_name = "Organizations and identity"

    def ready(self):
        from django.contrib import admin

        from tenants import signin

        admin.site.login_form = signin.ThrottledAdminAuthenticationForm
