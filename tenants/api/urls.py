from django.urls import path
from rest_framework.routers import SimpleRouter

from tenants.api import views

router = SimpleRouter()
router.register("members", views.MemberViewSet, basename="member")
router.register("api-keys", views.APIKeyViewSet, basename="api-key")
router.register("organizations", views.OrganizationViewSet, basename="organization")

urlpatterns = [path("me/", views.MeView.as_view(), name="me"), *router.urls]
