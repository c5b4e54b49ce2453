from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from agentapi import health, metrics

api_v1 = [
    path("", include("tenants.api.urls")),
    path("", include("audit.api.urls")),
]

urlpatterns = [
    path("health/live/", health.live, name="health-live"),
    path("health/ready/", health.ready, name="health-ready"),
    path("metrics", metrics.metrics_view, name="metrics"),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="api-docs"),
    path("api/v1/", include(api_v1)),
    path("admin/", admin.site.urls),
]

handler400 = "agentapi.errors.bad_request"
handler403 = "agentapi.errors.permission_denied"
handler404 = "agentapi.errors.not_found"
handler500 = "agentapi.errors.server_error"
