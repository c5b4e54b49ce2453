from rest_framework.routers import SimpleRouter

from sessions_app.api import views

router = SimpleRouter()
router.register("prompts", views.PromptViewSet, basename="prompt")
router.register("agents", views.AgentBackendViewSet, basename="agent")
router.register("sessions", views.AgentSessionViewSet, basename="agent-session")
router.register("sessions", views.SessionToolsViewSet, basename="agent-session-tools")
router.register("sessions", views.ConversationViewSet, basename="agent-session-conversation")
urlpatterns = router.urls
