"""agentapi.urls and a view that takes its time before reading its body, then writes what it read
to the file SLOW_VIEW_RECORD names: a client can leave while it runs (test_disconnect.py)."""

import os
import time

from django.http import JsonResponse
from django.urls import path
from django.views.decorators.csrf import csrf_exempt

from agentapi.urls import *  # noqa: F403
from agentapi.urls import urlpatterns as platform_urlpatterns


@csrf_exempt
def slow_echo(request):
    time.sleep(float(request.GET.get("sleep", "0.5")))
    body = request.body
    with open(os.environ["SLOW_VIEW_RECORD"], "ab") as record:
        record.write(body + b"\n")
    return JsonResponse({"length": len(body)})


urlpatterns = [path("test/slow-echo/", slow_echo), *platform_urlpatterns]
