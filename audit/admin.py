from django.contrib import admin

from audit.models import AuditEvent
from tenants.admin import ORGANIZATION_FILTER, NotFoundIs404


class ChainedFilter(admin.SimpleListFilter):
    title = "chained"
    parameter_name = "chained"

    def lookups(self, request, model_admin):
        return [("yes", "Chained"), ("no", "Waiting for the sequencer")]

    def queryset(self, request, queryset):
        if self.value() in ("yes", "no"):
            return queryset.filter(hash__isnull=self.value() == "no")
        return queryset


@admin.register(AuditEvent)
class AuditEventAdmin(NotFoundIs404, admin.ModelAdmin):
    """Read-only: the log is append-only, here as in the database."""

    list_display = [
        "occurred_at",
        "organization",
        "actor_label",
        "action",
        "target_type",
        "target_id",
        "outcome",
        "request_id",
    ]
    list_filter = [
        "outcome",
        "actor_type",
        ChainedFilter,
        ORGANIZATION_FILTER,
        ("occurred_at", admin.DateFieldListFilter),
    ]
    search_fields = ["action", "actor_label", "target_id", "request_id"]
    date_hierarchy = "occurred_at"
    list_select_related = ["organization"]
    show_full_result_count = False

    def lookup_allowed(self, lookup, value, request=None):
        # The console's links: one action's events, one target's (a server's tool calls).
        return lookup in ("action", "target_id", "target_type", "organization__id__exact") or super().lookup_allowed(
            lookup, value, request
        )

    def get_readonly_fields(self, request, obj=None):
        return [field.name for field in self.model._meta.fields]

    def has_module_permission(self, request):
        from tenants import scoping

        return request.user.is_superuser or bool(scoping.current().organization_ids)

    def has_view_permission(self, request, obj=None):
        return self.has_module_permission(request)

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False
