"""The admin for OAuth: providers with a write-only client secret; connections read-only, without
any token, with refresh and revoke actions. Writes go through oauth.services (checks, sealing, audit)."""

from django import forms
from django.contrib import admin, messages

from oauth import services
from oauth.models import OAuthProvider, OAuthToken, TokenStatus
from tenants.admin import ORGANIZATION_FILTER, TenantScopedAdmin


class OAuthProviderForm(forms.ModelForm):
    authorization_endpoint = forms.URLField(max_length=2048, assume_scheme="https")
    token_endpoint = forms.URLField(max_length=2048, assume_scheme="https")
    revocation_endpoint = forms.URLField(max_length=2048, required=False, assume_scheme="https")
    client_secret = forms.CharField(
        required=False,
        widget=forms.PasswordInput(render_value=False),
        help_text="Write-only: leave empty to keep the current secret.",
    )

    class Meta:
        model = OAuthProvider
        fields = [
            "organization", "name", "display_name", "kind", "client_id", "authorization_endpoint", "token_endpoint",
            "revocation_endpoint", "issuer", "scopes", "extra_authorize_params", "token_endpoint_auth_method",
        ]  # fmt: skip


@admin.register(OAuthProvider)
class OAuthProviderAdmin(TenantScopedAdmin):
    form = OAuthProviderForm
    list_display = ["name", "kind", "organization", "client_id", "updated_at"]
    list_filter = ["kind"]
    search_fields = ["name", "client_id", "organization__slug"]

    def save_model(self, request, obj, form, change):
        secret = form.cleaned_data.get("client_secret") or None
        if change:
            changes = {name: form.cleaned_data[name] for name in form.changed_data if name in form.Meta.fields}
            current = OAuthProvider.objects.get(pk=obj.pk)
            services.provider_update(provider=current, client_secret=secret, **changes)
        else:
            obj.set_client_secret(secret or "")
            obj.save()
            from audit.services import audit_record

            audit_record(
                "oauth.provider.create",
                target=obj,
                organization_id=obj.organization_id,
                details={"name": obj.name, "kind": obj.kind},
            )

    def delete_model(self, request, obj):
        services.provider_delete(provider=obj)


@admin.register(OAuthToken)
class OAuthTokenAdmin(TenantScopedAdmin):
    list_display = ["user", "provider", "status", "expires_at", "refreshed_at", "organization"]
    list_filter = ["status", ORGANIZATION_FILTER]
    search_fields = ["user__email", "provider__name"]
    date_hierarchy = "created_at"
    fields = [
        "organization",
        "user",
        "provider",
        "status",
        "token_type",
        "scopes",
        "expires_at",
        "refreshed_at",
        "last_error",
        "created_at",
    ]
    readonly_fields = fields
    actions = ["refresh", "revoke"]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    @admin.action(description="Refresh the selected connections now (at the provider)")
    def refresh(self, request, queryset):
        for token in queryset.select_related("provider"):
            generation = token.generation
            token = services.refresh(token=token, reason="admin", force=True)  # audited there
            if token.status == TokenStatus.ACTIVE and token.generation != generation:
                self.message_user(request, f"{token}: refreshed.", messages.SUCCESS)
            else:
                self.message_user(request, f"{token}: not refreshed ({token.status}; {token.last_error or 'no error'}).",
                                  messages.WARNING)  # fmt: skip

    @admin.action(description="Revoke the selected connections (at the provider, then here)")
    def revoke(self, request, queryset):
        for token in queryset.select_related("provider"):
            services.revoke(token=token)
        self.message_user(request, f"Revoked {queryset.count()} connection(s).")
