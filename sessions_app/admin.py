"""The admin for system prompts: every layer with its versions and screening findings, read-only
(prompts are written through the API, where roles, versions, screening and audit apply), and a
preview of the prompt composed for a chosen member; agent sessions read-only, with their runs and
conversation, and actions to close or extend them (through sessions_app.services: audited); agent
backends written through sessions_app.agents (the key write-only); runs read-only, cancellable."""

from django import forms
from django.contrib import admin, messages
from django.template.response import TemplateResponse
from django.urls import path

from agentapi.errors import APIError
from sessions_app import agents, prompts, runs, services
from sessions_app.models import (
    AgentBackend,
    AgentMessage,
    AgentRun,
    AgentSession,
    PromptVersion,
    SessionServer,
    SystemPrompt,
)
from tenants import scoping
from tenants.admin import ORGANIZATION_FILTER, TenantScopedAdmin, form_error
from tenants.models import Membership


class PromptVersionInline(admin.TabularInline):
    model = PromptVersion
    fields = ["version", "name", "priority", "enabled", "content", "findings", "created_by", "created_at"]
    readonly_fields = fields
    extra = 0
    can_delete = False
    ordering = ["-version"]

    def has_add_permission(self, request, obj=None):
        return False


class PreviewForm(forms.Form):
    member = forms.ModelChoiceField(queryset=Membership.objects.none(), help_text="Compose as this member.")
    variables = forms.JSONField(required=False, initial=dict, help_text="The caller's variables, as JSON.")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["member"].queryset = Membership.objects.select_related("user", "organization").order_by(
            "organization__slug", "user__email"
        )


@admin.register(SystemPrompt)
class SystemPromptAdmin(TenantScopedAdmin):
    list_display = ["name", "scope", "organization", "user", "priority", "enabled", "version", "findings_found"]
    list_filter = ["scope", "enabled"]
    search_fields = ["name", "content"]
    readonly_fields = [
        "scope", "organization", "user", "name", "content", "priority", "enabled", "version", "findings",
        "created_at", "updated_at",
    ]  # fmt: skip
    fields = readonly_fields
    inlines = [PromptVersionInline]
    change_list_template = "admin/sessions_app/systemprompt/change_list.html"

    @admin.display(description="screening findings")
    def findings_found(self, prompt):
        return ", ".join(sorted({finding["code"] for finding in prompt.findings})) or "-"

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    def get_urls(self):
        preview = self.admin_site.admin_view(self.preview_view)
        return [path("preview/", preview, name="sessions_app_systemprompt_preview"), *super().get_urls()]

    def preview_view(self, request):
        if not self.has_view_permission(request):
            raise admin.sites.PermissionDenied
        form = PreviewForm(request.POST or None)
        composed = error = None
        if request.method == "POST" and form.is_valid():
            membership = form.cleaned_data["member"]
            try:
                with scoping.organization_scope(membership.organization):
                    composed = prompts.compose(
                        principal=prompts.principal_for(membership), variables=form.cleaned_data["variables"] or {}
                    )
            except APIError as exc:
                error = f"{exc.error_code}: {exc.detail}"
        context = {
            **self.admin_site.each_context(request),
            "title": "Preview a composed system prompt",
            "opts": self.model._meta,
            "form": form,
            "composed": composed,
            "error": error,
        }
        return TemplateResponse(request, "admin/sessions_app/systemprompt/preview.html", context)


class SessionServerInline(admin.TabularInline):
    model = SessionServer
    fields = ["configuration", "attached_at"]
    readonly_fields = fields
    extra = 0
    can_delete = False

    def has_add_permission(self, request, obj=None):
        return False


class _ReadOnlyInline(admin.TabularInline):
    extra = 0
    can_delete = False
    show_change_link = False

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False


class AgentMessageInline(_ReadOnlyInline):
    """The conversation, in order: the user's messages, the assistant's (with the tool calls it
    asked for) and each tool call's result."""

    model = AgentMessage
    fields = ["seq", "role", "content", "tool_calls", "tool_name", "is_error", "run", "created_at"]
    readonly_fields = fields
    ordering = ["seq"]
    verbose_name_plural = "conversation"


class AgentRunInline(_ReadOnlyInline):
    model = AgentRun
    fields = ["id", "status", "error", "steps", "tool_calls", "input_tokens", "output_tokens", "first_event_ms",
              "created_at", "finished_at"]  # fmt: skip
    readonly_fields = fields
    ordering = ["-created_at"]


@admin.register(AgentSession)
class AgentSessionAdmin(TenantScopedAdmin):
    list_display = ["__str__", "organization", "user", "status", "created_at", "last_active_at", "expires_at"]
    list_filter = ["status", ORGANIZATION_FILTER]
    search_fields = ["name", "user__email"]
    date_hierarchy = "created_at"
    readonly_fields = [
        "id", "organization", "user", "name", "agent", "status", "system_prompt", "prompt_layers", "metadata", "created_at",
        "last_active_at", "expires_at", "ends_at", "closed_at",
    ]  # fmt: skip
    fields = readonly_fields
    inlines = [SessionServerInline, AgentRunInline, AgentMessageInline]
    actions = ["close_sessions", "extend_sessions"]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    @admin.action(description="Close the selected sessions")
    def close_sessions(self, request, queryset):
        for session in queryset:
            services.session_close(session=session)
        self.message_user(request, f"{queryset.count()} session(s) closed.", messages.SUCCESS)

    @admin.action(description="Extend the selected sessions by an idle period")
    def extend_sessions(self, request, queryset):
        extended = 0
        for session in queryset:
            try:
                services.session_extend(session=session)
                extended += 1
            except APIError as exc:
                self.message_user(request, f"{session}: {exc.detail}", messages.WARNING)
        self.message_user(request, f"{extended} session(s) extended.", messages.SUCCESS)


class AgentBackendForm(forms.ModelForm):
    # A URL typed without a scheme is https (Django 6's default; the MCP configuration form's too).
    base_url = forms.URLField(
        max_length=2048,
        required=False,
        assume_scheme="https",
        help_text=AgentBackend._meta.get_field("base_url").help_text,
    )
    api_key = forms.CharField(
        required=False,
        widget=forms.PasswordInput(render_value=False),
        help_text="Write-only: leave empty to keep the current key.",
    )

    class Meta:
        model = AgentBackend
        fields = [
            "organization", "name", "kind", "base_url", "template", "template_arguments", "model", "settings", "enabled",
        ]  # fmt: skip

    def __init__(self, *args, request=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.request = request

    def clean(self):
        cleaned = super().clean()
        if self.errors:
            return cleaned
        platform = cleaned.get("organization") is None
        if platform and not (self.request and self.request.user.is_superuser):
            raise forms.ValidationError({"organization": "Only operators manage the platform's backends."})
        try:
            candidate = AgentBackend(**{name: cleaned.get(name) for name in AgentBackendForm.Meta.fields})
            candidate.base_url, candidate.model = candidate.base_url or "", candidate.model or ""
            candidate.template_arguments = candidate.template_arguments or {}
            agents._check_kind_fields(candidate)
            cleaned["template_arguments"] = candidate.template_arguments
            cleaned["settings"] = agents.check_settings(cleaned.get("settings") or {})
        except APIError as exc:
            raise form_error(exc, self) from None
        return cleaned


@admin.register(AgentBackend)
class AgentBackendAdmin(TenantScopedAdmin):
    """Backends as the API writes them (sessions_app.agents: URL checks, the key sealed, audit).
    The key is write-only: the page shows whether there is one, never the key. The platform's
    backends (no organization) are the operators'. The test action sends each selected backend
    one tiny request (audited)."""

    form = AgentBackendForm
    list_display = ["name", "kind", "organization", "model", "base_url", "enabled", "updated_at"]
    list_filter = ["kind", "enabled"]
    search_fields = ["name", "model", "organization__slug"]
    readonly_fields = ["has_api_key", "revision", "created_at", "updated_at"]
    actions = ["test_backends"]

    def get_form(self, request, obj=None, **kwargs):
        form = super().get_form(request, obj, **kwargs)

        class WithRequest(form):
            def __init__(self, *args, **inner):
                super().__init__(*args, request=request, **inner)

        return WithRequest

    def has_change_permission(self, request, obj=None):
        platform = obj is not None and obj.organization_id is None
        return super().has_change_permission(request, obj) and (not platform or request.user.is_superuser)

    has_delete_permission = has_change_permission

    def save_model(self, request, obj, form, change):
        # What really changed, compared with the stored row (a JSON field's text is not its value).
        changed = set()
        if change:
            stored = AgentBackend.objects.get(pk=obj.pk)
            changed = {
                name for name in AgentBackendForm.Meta.fields
                if getattr(stored, AgentBackend._meta.get_field(name).attname) != getattr(obj, AgentBackend._meta.get_field(name).attname)
            }  # fmt: skip
        agents.agent_save(backend=obj, changed=changed, api_key=form.cleaned_data.get("api_key"), created=not change)

    def delete_model(self, request, obj):
        from audit.services import audit_record

        audit_record("agent.delete", target=obj, organization_id=obj.organization_id, details={"name": obj.name})
        obj.delete()

    @admin.action(description="Test the selected backends (one tiny request each)")
    def test_backends(self, request, queryset):
        for backend in queryset:
            if backend.organization_id is None and not request.user.is_superuser:
                self.message_user(request, f"{backend}: only operators test the platform's backends.", messages.WARNING)
                continue
            try:
                result = agents.probe_and_record(backend, organization_id=backend.organization_id)
            except APIError as exc:
                self.message_user(request, f"{backend}: {exc.detail}", messages.ERROR)
                continue
            if result["ok"]:
                self.message_user(request, f"{backend}: answered in {result['latency_ms']} ms.", messages.SUCCESS)
            else:
                error = result["error"]
                self.message_user(request, f"{backend}: {error['code']}, {error['message']}.", messages.ERROR)

    @admin.display(boolean=True, description="API key set")
    def has_api_key(self, backend):
        return bool(backend.api_key_sealed)


@admin.register(AgentRun)
class AgentRunAdmin(TenantScopedAdmin):
    """Runs, read-only: their outcome, errors and usage. A running one can be cancelled here."""

    list_display = ["id", "session", "organization", "status", "steps", "tool_calls", "input_tokens",
                    "output_tokens", "first_event_ms", "created_at", "finished_at"]  # fmt: skip
    list_filter = ["status", ORGANIZATION_FILTER]
    search_fields = ["id", "session__name", "session__user__email"]
    date_hierarchy = "created_at"
    fields = ["id", "organization", "session", "backend", "status", "error", "steps", "tool_calls", "input_tokens",
              "output_tokens", "first_event_ms", "claimed_at", "heartbeat_at", "created_at", "finished_at"]  # fmt: skip
    readonly_fields = fields
    actions = ["cancel_runs"]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    @admin.action(description="Cancel the selected runs")
    def cancel_runs(self, request, queryset):
        cancelled = 0
        for run in queryset.filter(status="running").select_related("session", "backend"):
            runs.run_cancel(session=run.session, run=run)
            cancelled += 1
        self.message_user(request, f"{cancelled} run(s) cancelled.", messages.SUCCESS)
