"""Production settings refuse to start without their secrets, and pass Django's deploy checks."""

import base64
import os
import secrets
import subprocess
import sys

from django.conf import settings

PRODUCTION = {
    "DJANGO_SETTINGS_MODULE": "agentapi.settings.production",
    "SECRET_KEY": secrets.token_urlsafe(50),
    "FIELD_ENCRYPTION_KEYS": "v2:"
    + base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()
    + ",v1:"
    + base64.urlsafe_b64encode(secrets.token_bytes(32)).decode(),
    "ALLOWED_HOSTS": "agentapi.example.com",
}


def manage(*args, **env_changes):
    env = {**os.environ, **PRODUCTION, **env_changes}
    env = {name: value for name, value in env.items() if value is not None}
    return subprocess.run(
        [sys.executable, "manage.py", *args], env=env, capture_output=True, text=True, cwd=settings.BASE_DIR
    )


def test_check_deploy_passes_with_the_production_settings():
    result = manage("check", "--deploy", "--fail-level", "WARNING")
    assert result.returncode == 0, result.stdout + result.stderr


def test_it_refuses_to_start_without_a_secret_key():
    result = manage("check", SECRET_KEY=None)
    assert result.returncode != 0 and "SECRET_KEY" in result.stderr


def test_it_refuses_to_start_without_encryption_keys():
    result = manage("check", FIELD_ENCRYPTION_KEYS=None)
    assert result.returncode != 0 and "FIELD_ENCRYPTION_KEYS" in result.stderr


def test_it_refuses_malformed_encryption_keys_and_weak_jwt_algorithms():
    short = manage("check", FIELD_ENCRYPTION_KEYS="v1:" + base64.urlsafe_b64encode(b"short").decode())
    assert short.returncode != 0 and "32 bytes" in short.stderr
    hs256 = manage("check", JWT_ALGORITHMS="HS256")
    assert hs256.returncode != 0 and "HS256" in hs256.stderr


def test_a_malformed_allowed_network_stops_the_start():
    result = manage("check", OUTBOUND_ALLOWED_NETWORKS="10.0.0.0/8,not-a-network")
    assert result.returncode != 0 and "OUTBOUND_ALLOWED_NETWORKS" in result.stderr
