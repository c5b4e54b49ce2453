"""The operators' console: the Django admin with a dashboard for its index (console.sites).

Why the stock admin extended and not a theme such as django-unfold (which supports Django 5.2):
every ModelAdmin here would have to inherit the theme's classes and its widgets, and the scoping
the admin relies on (tenants.middleware, TenantScopedAdmin, row-level security) lives in those
classes; the stock admin's templates take a dashboard and a stylesheet of our own, all served
locally (no CDN: the platform runs without internet), with nothing more to pin and follow.
"""

from django.contrib.admin.apps import AdminConfig


class ConsoleAdminConfig(AdminConfig):
    """django.contrib.admin with the console's site as the default one (admin.site)."""

    default_site = "console.sites.ConsoleSite"
