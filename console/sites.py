"""The admin site: the platform's name, a link to the API docs, the dashboard as its index, and the
console's own pages (the audit export)."""

from django.contrib import admin
from django.template.response import TemplateResponse
from django.urls import path


class ConsoleSite(admin.AdminSite):
    site_header = "AgentAPI console"
    site_title = "AgentAPI console"
    index_title = "Overview"
    site_url = "/api/docs/"  # "View site" is the API's documentation (templates/admin/base_site.html)
    index_template = "admin/console/index.html"

    def index(self, request, extra_context=None):
        from console import dashboard

        figures = dashboard.figures(request) if self.has_permission(request) else {}
        return super().index(request, {**(extra_context or {}), "console": figures})

    def get_urls(self):
        from console import views

        return [
            path("console/audit-export/", self.admin_view(views.audit_export), name="console-audit-export"),
            path(
                "console/verify/<int:organization_id>/", self.admin_view(views.verify_chain), name="console-verify"
            ),  # fmt: skip
            *super().get_urls(),
        ]

    def page(self, request, template: str, context: dict) -> TemplateResponse:
        return TemplateResponse(request, template, {**self.each_context(request), **context})
