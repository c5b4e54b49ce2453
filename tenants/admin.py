"""The admin for operators (every organization) and organization staff (their organizations only).

Which rows a staff user sees is decided by the scope set in tenants.middleware, not here: the
querysets below come from each model's scoped manager, and row-level security backs them up.
"""

from django import forms
from django.conf import settings as django_settings
from django.contrib import admin
from django.contrib.auth.admin import UserAdmin as DjangoUserAdmin
from django.template.response import TemplateResponse

from agentapi import ratelimit
from agentapi.errors import APIError
from tenants import scoping, services
from tenants.middleware import actor_for
from tenants.models import APIKey, Membership, Organization, Role, User


def form_error(exc: APIError, form: forms.Form) -> forms.ValidationError:
    """A service's refusal as the admin form's error: on the fields it names, or the whole form."""
    details = exc.details or {}
    return forms.ValidationError(
        {field: messages for field, messages in details.items() if field in form.fields} or str(exc.detail)
    )


class NotFoundIs404:
    """Another organization's row (or none at all) is 404 in the admin as in the API; the stock
    admin would redirect to its index saying that the object does not exist."""

    def _found_or_404(self, request, object_id) -> None:
        from django.contrib.admin.utils import unquote
        from django.http import Http404

        if self.get_object(request, unquote(object_id)) is None:
            raise Http404("Not found.")

    def change_view(self, request, object_id, form_url="", extra_context=None):
        self._found_or_404(request, object_id)
        return super().change_view(request, object_id, form_url, extra_context)

    def delete_view(self, request, object_id, extra_context=None):
        self._found_or_404(request, object_id)
        return super().delete_view(request, object_id, extra_context)

    def history_view(self, request, object_id, extra_context=None):
        self._found_or_404(request, object_id)
        return super().history_view(request, object_id, extra_context)


def visible_organizations(request):
    """The organizations the signed-in person may manage in the admin (operators: all; staff: those
    in the scope tenants.middleware set), by slug."""
    organizations = Organization.objects.order_by("slug")
    if not request.user.is_superuser:
        organizations = organizations.filter(pk__in=scoping.current().organization_ids)
    return organizations


class OrganizationFilter(admin.RelatedFieldListFilter):
    """Filter by organization, listing only the organizations the signed-in person may see: the
    stock filter lists every row of the table, which would name other tenants to staff."""

    def field_choices(self, field, request, model_admin):
        return [(organization.pk, organization.slug) for organization in visible_organizations(request)]


ORGANIZATION_FILTER = ("organization", OrganizationFilter)


class TenantScopedAdmin(NotFoundIs404, admin.ModelAdmin):
    """Operators may do anything; staff who manage an organization may manage its rows."""

    def _may_manage(self, request) -> bool:
        return (
            request.user.is_active
            and request.user.is_staff
            and (request.user.is_superuser or bool(scoping.current().organization_ids))
        )

    def has_module_permission(self, request):
        return self._may_manage(request)

    def has_view_permission(self, request, obj=None):
        return self._may_manage(request)

    def has_change_permission(self, request, obj=None):
        return self._may_manage(request)

    def has_add_permission(self, request):
        return self._may_manage(request)

    def has_delete_permission(self, request, obj=None):
        return self._may_manage(request)

    def lookup_allowed(self, lookup, value, request=None):
        # The console's figures link to lists narrowed to one organization.
        return lookup in ("organization__id__exact", "organization") or super().lookup_allowed(lookup, value, request)

    def formfield_for_foreignkey(self, db_field, request, **kwargs):
        if db_field.name == "organization" and not request.user.is_superuser:
            kwargs["queryset"] = Organization.objects.filter(pk__in=scoping.current().organization_ids)
        return super().formfield_for_foreignkey(db_field, request, **kwargs)


@admin.register(User)
class UserAdmin(DjangoUserAdmin):
    ordering = ["email"]
    list_display = ["email", "name", "is_active", "is_staff", "is_superuser", "last_login", "date_joined"]
    list_filter = ["is_active", "is_staff", "is_superuser"]
    search_fields = ["email", "name"]
    fieldsets = [
        (None, {"fields": ["email", "password"]}),
        ("Profile", {"fields": ["name"]}),
        ("Access", {"fields": ["is_active", "is_staff", "is_superuser", "groups", "user_permissions"]}),
        ("Dates", {"fields": ["last_login", "date_joined"]}),
    ]
    add_fieldsets = [(None, {"classes": ["wide"], "fields": ["email", "password1", "password2"]})]
    readonly_fields = ["last_login", "date_joined"]

    def has_module_permission(self, request):
        return request.user.is_superuser

    has_view_permission = has_change_permission = has_delete_permission = lambda self, request, obj=None: (
        request.user.is_superuser
    )

    def has_add_permission(self, request):
        return request.user.is_superuser


def _rate_fields() -> dict[str, tuple[str, str, str]]:
    """One form field per rate limit an organization may set: name -> (class, scope, default)."""
    return {
        f"rate_{klass}_{scope}": (klass, scope, default)
        for klass, scopes in django_settings.RATE_LIMITS.items()
        for scope, default in scopes.items()
    }


# Declared on a base class (the admin's fieldsets may name only declared fields), one per limit.
_RateLimitFields = type(
    "_RateLimitFields",
    (forms.Form,),
    {
        name: forms.CharField(
            required=False,
            max_length=40,
            label=f"{klass} per {scope}",
            help_text=f"The default is {default}. COUNT/PERIOD, the period a second, minute, hour or day.",
        )
        for name, (klass, scope, default) in _rate_fields().items()
    },
)


class OrganizationForm(_RateLimitFields, forms.ModelForm):
    """The organization, its settings, and its own rate limits as fields (they are its setting
    `rate_limits`; a field left empty keeps the platform's default)."""

    class Meta:
        model = Organization
        fields = ["slug", "name", "is_active", "settings"]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        own = (self.instance.settings or {}).get("rate_limits") if self.instance.pk else None
        for name, (klass, scope, _default) in _rate_fields().items():
            if isinstance(own, dict) and isinstance(own.get(klass), dict):
                self.initial.setdefault(name, own[klass].get(scope, ""))

    def clean_settings(self):
        """The limits as the operators' API checks them (tenants.api.serializers)."""
        from tenants.api.serializers import OrganizationSettingsSerializer

        checked = OrganizationSettingsSerializer(data=self.cleaned_data.get("settings") or {})
        if not checked.is_valid():
            raise forms.ValidationError(str(checked.errors))
        return {**(self.cleaned_data.get("settings") or {}), **checked.validated_data}

    def clean(self):
        cleaned = super().clean()
        limits: dict[str, dict[str, str]] = {}
        for name, (klass, scope, _default) in _rate_fields().items():
            value = (cleaned.get(name) or "").strip()
            if not value:
                continue
            try:
                ratelimit.parse(value)
            except ValueError as exc:
                self.add_error(name, str(exc))
                continue
            limits.setdefault(klass, {})[scope] = value
        if "settings" in cleaned:
            current = dict(cleaned["settings"] or {})
            if limits:
                current["rate_limits"] = limits
            else:
                current.pop("rate_limits", None)
            cleaned["settings"] = current
        return cleaned


@admin.register(Organization)
class OrganizationAdmin(NotFoundIs404, admin.ModelAdmin):
    form = OrganizationForm
    fieldsets = [
        (None, {"fields": ["slug", "name", "is_active", "settings", "created_at"]}),
        (
            "Rate limits",
            {
                "fields": list(_rate_fields()),
                "description": "This organization's own limits, per class of request and per credential, "
                "organization or client address. They are its setting rate_limits: what is set here replaces "
                "the rate_limits written in the settings above.",
            },
        ),
    ]
    list_display = ["slug", "name", "is_active", "created_at"]
    list_filter = ["is_active"]
    search_fields = ["slug", "name"]
    readonly_fields = ["created_at"]

    def get_queryset(self, request):
        queryset = super().get_queryset(request)
        if request.user.is_superuser:
            return queryset
        return queryset.filter(pk__in=scoping.current().organization_ids)

    def has_module_permission(self, request):
        return request.user.is_superuser or bool(scoping.current().organization_ids)

    def has_view_permission(self, request, obj=None):
        return self.has_module_permission(request)

    def has_change_permission(self, request, obj=None):
        return request.user.is_superuser

    has_add_permission = lambda self, request: request.user.is_superuser  # noqa: E731
    has_delete_permission = lambda self, request, obj=None: False  # noqa: E731  (deactivate instead)

    def save_model(self, request, obj, form, change):
        super().save_model(request, obj, form, change)
        with scoping.organization_scope(obj, actor=scoping.Actor("user", request.user.pk, request.user.email)):
            services.record_change(
                "tenants.organization.update" if change else "tenants.organization.create",
                target=obj,
                details={"changed": sorted(form.changed_data), "via": "admin"},
            )


class MembershipAddForm(forms.ModelForm):
    email = forms.EmailField(help_text="The person's e-mail; an account is made for a new address.")

    class Meta:
        model = Membership
        fields = ["organization", "role"]


@admin.register(Membership)
class MembershipAdmin(TenantScopedAdmin):
    """Adds by e-mail (listing every user of the platform to pick from would show a staff admin
    other organizations' people), and applies the same rules as the API through the services."""

    list_display = ["user", "organization", "role", "created_at"]
    list_filter = ["role", ORGANIZATION_FILTER]
    search_fields = ["user__email", "organization__slug"]
    list_select_related = ["user", "organization"]
    actions = None  # bulk deletion would skip the owner rules; remove members one by one

    def get_fields(self, request, obj=None):
        return ["organization", "email", "role"] if obj is None else ["user", "organization", "role", "created_at"]

    def get_readonly_fields(self, request, obj=None):
        return [] if obj is None else ["user", "organization", "created_at"]

    def get_form(self, request, obj=None, **kwargs):
        if obj is None:
            kwargs["form"] = MembershipAddForm
        form = super().get_form(request, obj, **kwargs)
        admin_site = self

        class RuledForm(form):
            def clean(self):
                data = super().clean()
                organization = data.get("organization") or getattr(obj, "organization", None)
                if organization is not None and "role" in data:
                    with scoping.organization_scope(organization):
                        try:
                            services.membership_check_change(
                                acting_role=admin_site.acting_role(request, organization),
                                membership=Membership.objects.filter(pk=obj.pk).first() if obj else None,
                                new_role=data["role"],
                            )
                        except APIError as exc:
                            raise forms.ValidationError(str(exc.detail)) from None
                return data

        return RuledForm

    @staticmethod
    def acting_role(request, organization) -> str:
        if request.user.is_superuser:
            return Role.OWNER
        own = Membership.objects.filter(user=request.user, organization=organization).first()
        return own.role if own else Role.MEMBER

    def save_model(self, request, obj, form, change):
        with scoping.organization_scope(obj.organization, actor=actor_for(request.user)):
            acting = self.acting_role(request, obj.organization)
            if change:
                current = Membership.objects.get(pk=obj.pk)
                services.membership_update_role(membership=current, role=obj.role, acting_role=acting)
            else:
                created = services.membership_create(
                    organization=obj.organization, email=form.cleaned_data["email"], role=obj.role, acting_role=acting
                )
                obj.pk, obj.user, obj.created_at = created.pk, created.user, created.created_at

    def has_delete_permission(self, request, obj=None):
        if not super().has_delete_permission(request, obj) or obj is None:
            return super().has_delete_permission(request, obj)
        with scoping.organization_scope(obj.organization):
            try:
                services.membership_check_change(
                    acting_role=self.acting_role(request, obj.organization), membership=obj, new_role=None
                )
            except APIError:
                return False
        return True

    def delete_model(self, request, obj):
        with scoping.organization_scope(obj.organization, actor=actor_for(request.user)):
            services.membership_delete(membership=obj, acting_role=self.acting_role(request, obj.organization))


class APIKeyAddForm(forms.ModelForm):
    class Meta:
        model = APIKey
        fields = ["membership", "name", "expires_at"]


@admin.register(APIKey)
class APIKeyAdmin(TenantScopedAdmin):
    list_display = [
        "prefix",
        "name",
        "membership",
        "organization",
        "status",
        "created_at",
        "expires_at",
        "last_used_at",
    ]
    list_filter = [ORGANIZATION_FILTER, ("revoked_at", admin.EmptyFieldListFilter)]
    search_fields = ["prefix", "name", "membership__user__email"]
    date_hierarchy = "created_at"
    list_select_related = ["membership__user", "organization"]
    # A key never changes hands: its member is fixed once it is made.
    readonly_fields = ["prefix", "membership", "organization", "created_at", "created_by", "revoked_at", "last_used_at"]
    fields = [
        "name",
        "membership",
        "prefix",
        "organization",
        "expires_at",
        "created_at",
        "created_by",
        "revoked_at",
        "last_used_at",
    ]
    actions = ["revoke"]

    def get_form(self, request, obj=None, **kwargs):
        if obj is None:
            kwargs["form"] = APIKeyAddForm
            kwargs["fields"] = ["membership", "name", "expires_at"]
        return super().get_form(request, obj, **kwargs)

    def get_readonly_fields(self, request, obj=None):
        return self.readonly_fields if obj else []

    def get_fields(self, request, obj=None):
        return self.fields if obj else ["membership", "name", "expires_at"]

    def formfield_for_foreignkey(self, db_field, request, **kwargs):
        if db_field.name == "membership":
            kwargs["queryset"] = Membership.objects.select_related("user", "organization")
        return super().formfield_for_foreignkey(db_field, request, **kwargs)

    def save_model(self, request, obj, form, change):
        if change:
            return super().save_model(request, obj, form, change)
        with scoping.organization_scope(
            obj.membership.organization, actor=scoping.Actor("user", request.user.pk, request.user.email)
        ):
            api_key, key = services.api_key_create(
                membership=obj.membership, name=obj.name, expires_at=obj.expires_at, created_by=request.user
            )
        obj.pk = api_key.pk
        obj._new_key = key

    def response_add(self, request, obj, post_url_continue=None):
        # The key is rendered into this one response and kept nowhere: not in a message, a cookie
        # or the session, where it would outlive the page.
        context = {
            **self.admin_site.each_context(request),
            "api_key": obj,
            "key": obj._new_key,
            "opts": self.model._meta,
            "title": "API key created",
        }
        return TemplateResponse(request, "admin/tenants/apikey/created.html", context)

    @admin.action(description="Revoke the selected API keys")
    def revoke(self, request, queryset):
        for api_key in queryset.select_related("organization"):
            with scoping.organization_scope(api_key.organization):
                services.api_key_revoke(api_key=api_key)
        self.message_user(request, f"Revoked {queryset.count()} key(s).")
