from django.urls import path

from oauth.views import callback

urlpatterns = [path("oauth/callback/", callback, name="oauth-callback")]
