"""The admin for MCP servers: credentials are write-only (a field to replace them, never to read
them), writes go through mcp.services (the same checks, encryption and audit as the API), and a
configuration the health check disabled is enabled again with an action."""

import json

from django import forms
from django.contrib import admin, messages

from agentapi.errors import APIError
from mcp import health, services
from mcp.models import MCPConfiguration, StdioTemplate, ToolPin
from tenants.admin import ORGANIZATION_FILTER, TenantScopedAdmin, form_error


class MCPConfigurationForm(forms.ModelForm):
    url = forms.URLField(max_length=2048, required=False, assume_scheme="https")
    bearer_token = forms.CharField(
        required=False,
        widget=forms.PasswordInput(render_value=False),
        help_text="Write-only: leave empty to keep the current token.",
    )
    headers = forms.CharField(
        required=False,
        widget=forms.Textarea(attrs={"rows": 3}),
        help_text='Write-only JSON object, e.g. {"X-Api-Key": "..."}; leave empty to keep the current headers.',
    )

    class Meta:
        model = MCPConfiguration
        fields = [
            "organization", "name", "owner", "transport", "url", "stdio_template", "stdio_arguments", "auth_type",
            "allowed_tools", "enabled",
        ]  # fmt: skip

    def secrets(self) -> dict:
        secrets = {}
        if self.cleaned_data.get("bearer_token"):
            secrets["bearer_token"] = self.cleaned_data["bearer_token"]
        if self.cleaned_data.get("headers"):
            try:
                secrets["headers"] = json.loads(self.cleaned_data["headers"])
            except ValueError:
                raise forms.ValidationError({"headers": "Not valid JSON."}) from None
        return secrets

    def clean(self):
        cleaned = super().clean()
        if self.errors:
            return cleaned
        configuration = self.instance
        for name in self.Meta.fields:
            if name in cleaned:
                setattr(configuration, name, cleaned[name])
        try:
            self._secrets = self.secrets()
            services._validate(configuration, dict(self._secrets))
        except APIError as exc:
            raise form_error(exc, self) from None
        return cleaned


@admin.register(MCPConfiguration)
class MCPConfigurationAdmin(TenantScopedAdmin):
    form = MCPConfigurationForm
    list_display = ["name", "organization", "transport", "auth_type", "enabled", "status", "last_checked_at", "owner"]
    list_filter = ["status", "enabled", "transport", "auth_type", ORGANIZATION_FILTER]
    search_fields = ["name", "url", "organization__slug"]
    readonly_fields = [
        "status",
        "last_error",
        "last_checked_at",
        "consecutive_failures",
        "revision",
        "has_credentials",
        "created_at",
        "updated_at",
    ]
    actions = ["check_configurations", "enable_configurations", "disable_configurations"]

    def lookup_allowed(self, lookup, value, request=None):
        return lookup == "id__in" or super().lookup_allowed(lookup, value, request)  # the console's open breakers

    def save_model(self, request, obj, form, change):
        services.mcp_configuration_save(configuration=obj, changed=set(form.changed_data), secrets=form._secrets)

    def delete_model(self, request, obj):
        from audit.services import audit_record

        audit_record(
            "mcp.configuration.delete", target=obj, organization_id=obj.organization_id, details={"name": obj.name}
        )
        obj.delete()

    @admin.action(description="Enable the selected configurations (after failed health checks)")
    def enable_configurations(self, request, queryset):
        for configuration in queryset:
            services.mcp_configuration_enable(configuration=configuration)
        self.message_user(request, f"Enabled {queryset.count()} configuration(s).")

    @admin.action(description="Disable the selected configurations (calls to them are refused)")
    def disable_configurations(self, request, queryset):
        for configuration in queryset:
            services.mcp_configuration_disable(configuration=configuration)
        self.message_user(request, f"Disabled {queryset.count()} configuration(s).")

    @admin.action(description="Test the selected configurations now (connect, list tools)")
    def check_configurations(self, request, queryset):
        from audit.services import audit_record

        for configuration in queryset.select_related("stdio_template", "organization"):
            ok = health.check(configuration)
            configuration.refresh_from_db(fields=["last_error", "status"])
            audit_record("mcp.configuration.test", target=configuration, organization_id=configuration.organization_id,
                         outcome="success" if ok else "failure",
                         details={"via": "admin", "error": configuration.last_error[:200]})  # fmt: skip
            self.message_user(
                request,
                f"{configuration.name}: {'healthy' if ok else 'unhealthy: ' + configuration.last_error}",
                messages.SUCCESS if ok else messages.WARNING,
            )


@admin.register(ToolPin)
class ToolPinAdmin(TenantScopedAdmin):
    list_display = ["name", "configuration", "status", "definition_hash", "changed_at", "first_seen_at"]
    list_filter = ["status"]
    search_fields = ["name", "configuration__name"]
    actions = ["approve"]

    def get_readonly_fields(self, request, obj=None):
        return [f.name for f in ToolPin._meta.fields]

    def has_add_permission(self, request):
        return False

    @admin.action(description="Approve the changed definitions of the selected tools")
    def approve(self, request, queryset):
        from mcp import catalogue

        approved = 0
        for pin in queryset.filter(status="pending").select_related("configuration"):
            catalogue.approve(pin.configuration, pin.name)
            approved += 1
        self.message_user(request, f"Approved {approved} tool definition(s).")


class StdioTemplateForm(forms.ModelForm):
    class Meta:
        model = StdioTemplate
        fields = [
            "name", "description", "command", "arguments", "allowed_arguments", "allowed_env", "env",
            "memory_limit_mb", "cpu_limit_seconds", "open_files_limit",
        ]  # fmt: skip

    def clean(self):
        cleaned = super().clean()
        from mcp import stdio

        problems = stdio.template_problems(
            **{k: cleaned.get(k) for k in ("command", "arguments", "allowed_arguments", "allowed_env", "env")}
        )
        if problems:
            raise forms.ValidationError({field: errors for field, errors in problems.items() if field in self.fields})
        return cleaned


@admin.register(StdioTemplate)
class StdioTemplateAdmin(admin.ModelAdmin):
    """Operators only: a template decides what runs on the platform's machines."""

    form = StdioTemplateForm
    list_display = ["name", "command", "memory_limit_mb", "cpu_limit_seconds", "open_files_limit", "updated_at"]
    search_fields = ["name", "command"]

    def has_module_permission(self, request):
        return request.user.is_active and request.user.is_superuser

    has_view_permission = has_change_permission = has_delete_permission = lambda self, request, obj=None: (
        request.user.is_active and request.user.is_superuser
    )

    def has_add_permission(self, request):
        return request.user.is_active and request.user.is_superuser

    def save_model(self, request, obj, form, change):
        fields = {name: form.cleaned_data[name] for name in form.Meta.fields if name in form.cleaned_data}
        if change:
            current = StdioTemplate.objects.get(pk=obj.pk)
            services.stdio_template_update(
                template=current, **{name: fields[name] for name in form.changed_data if name in fields}
            )
        else:
            obj.pk = services.stdio_template_create(**fields).pk

    def delete_model(self, request, obj):
        services.stdio_template_delete(template=obj)
