"""The test profile: real PostgreSQL and Redis, started by `make test` (tests/services.py)."""

from .base import *  # noqa: F403

DEBUG = False
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
CELERY_TASK_ALWAYS_EAGER = False
LOGGING["root"]["level"] = "WARNING"  # noqa: F405
# Generous limits: the suite's organizations and keys recur (ids restart) while Redis keeps its
# counters; the rate-limit tests set their own.
RATE_LIMITS = {klass: {scope: f"{int(rate.split('/')[0]) * 100}/{rate.split('/')[1]}" for scope, rate in scopes.items()}
               for klass, scopes in RATE_LIMITS.items()}  # noqa: F405  # fmt: skip
RATE_LIMIT_AUTH_FAILURES = "1000000/minute"  # the fuzzer and the refusal tests send many; tests set their own
