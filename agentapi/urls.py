from django.contrib import admin
from django.db import transaction
from django.urls import include, path, re_path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from agentapi import errors, health, metrics

# admin.site is the operators' console (console.sites.ConsoleSite: its name, its dashboard).
api_v1 = [
    path("", include("tenants.api.urls")),
    path("", include("audit.api.urls")),
    path("", include("oauth.api.urls")),
    path("", include("mcp.api.urls")),
    path("", include("sessions_app.api.urls")),
]

urlpatterns = [
    path("health/live/", health.live, name="health-live"),
    path("health/ready/", health.ready, name="health-ready"),
    path("metrics", metrics.metrics_view, name="metrics"),
    # The schema and docs are public and read no table: no transaction for them.
    path("api/schema/", transaction.non_atomic_requests(SpectacularAPIView.as_view()), name="schema"),
    path(
        "api/docs/",
        transaction.non_atomic_requests(SpectacularSwaggerView.as_view(url_name="schema")),
        name="api-docs",
    ),
    path("api/v1/", include(api_v1)),
    re_path(r"^api/", transaction.non_atomic_requests(errors.api_not_found), name="api-not-found"),
    path("admin/", admin.site.urls),
    path("auth/", include("social_django.urls", namespace="social")),
    path("", include("tenants.urls")),
    path("", include("oauth.urls")),
]

handler400 = "agentapi.errors.bad_request"
handler403 = "agentapi.errors.permission_denied"
handler404 = "agentapi.errors.not_found"
handler500 = "agentapi.errors.server_error"
