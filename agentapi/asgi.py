"""The web process: `gunicorn -k uvicorn_worker... agentapi.asgi:application` (docker/)."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "agentapi.settings.local")
application = get_asgi_application()
