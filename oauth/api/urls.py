from django.urls import path
from rest_framework.routers import SimpleRouter

from oauth.api import views

router = SimpleRouter()
router.register("oauth/providers", views.OAuthProviderViewSet, basename="oauth-provider")
router.register("oauth/tokens", views.OAuthTokenViewSet, basename="oauth-token")

urlpatterns = [path("oauth/authorize/", views.AuthorizeView.as_view(), name="oauth-authorize"), *router.urls]
