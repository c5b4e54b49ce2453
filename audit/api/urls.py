from django.urls import path
from rest_framework.routers import SimpleRouter

from audit.api import views

router = SimpleRouter()
router.register("audit/events", views.AuditEventViewSet, basename="audit-event")

urlpatterns = [path("audit/verify/", views.AuditVerifyView.as_view(), name="audit-verify"), *router.urls]
