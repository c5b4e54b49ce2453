from django.urls import path

from oauth.views import callback, connections

urlpatterns = [
    path("oauth/callback/", callback, name="oauth-callback"),
    path("account/connections/", connections, name="oauth-connections"),
]
