from rest_framework.routers import SimpleRouter

from mcp.api import views

router = SimpleRouter()
router.register("mcp/configurations", views.MCPConfigurationViewSet, basename="mcp-configuration")
router.register("mcp/configurations", views.MCPProxyViewSet, basename="mcp-proxy")
router.register("mcp/configurations", views.ToolPinViewSet, basename="mcp-pins")
router.register("mcp/stdio-templates", views.StdioTemplateViewSet, basename="mcp-stdio-template")

urlpatterns = router.urls
