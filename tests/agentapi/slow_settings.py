"""The test settings with one more route, a view that reads its body late (test_disconnect.py)."""

from agentapi.settings.test import *  # noqa: F403

ROOT_URLCONF = "tests.agentapi.slow_urls"
