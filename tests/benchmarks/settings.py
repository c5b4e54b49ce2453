"""Production settings plus the benchmark's baseline route (a bare DRF hello-world)."""

from agentapi.settings.production import *  # noqa: F403

ROOT_URLCONF = "tests.benchmarks.urls"
SECURE_SSL_REDIRECT = False
ACCESS_LOG = False
