"""Production settings for the load suite: plain HTTP on loopback, the benchmarks' hello-world
route beside the platform's (tests/benchmarks/urls.py), everything else as shipped."""

from agentapi.settings.production import *  # noqa: F403

ROOT_URLCONF = "tests.benchmarks.urls"
SECURE_SSL_REDIRECT = False

# Every virtual user comes from the generator's one address; in production they would come from
# as many addresses as there are users. The per-address limits are raised for it, as the
# organization's own limits are (tests/benchmarks/bench_api.BENCH_SETTINGS): what is measured
# still includes deciding them.
RATE_LIMITS = {**RATE_LIMITS, "auth": {**RATE_LIMITS["auth"], "address": "10000000/minute"}}  # noqa: F405
RATE_LIMIT_AUTH_FAILURES = "10000000/minute"
