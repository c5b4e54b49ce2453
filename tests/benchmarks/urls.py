from django.db import transaction
from django.urls import path
from rest_framework.permissions import AllowAny
from rest_framework.response import Response
from rest_framework.views import APIView

from agentapi.urls import urlpatterns as platform_urls


class Hello(APIView):
    """The baseline: DRF with no authentication, no permission, no database."""

    authentication_classes = []
    permission_classes = [AllowAny]

    def get(self, request):
        return Response({"hello": "world"})


# Bare: not even the per-request transaction that ATOMIC_REQUESTS gives every platform view.
urlpatterns = [path("bench/hello/", transaction.non_atomic_requests(Hello.as_view())), *platform_urls]
