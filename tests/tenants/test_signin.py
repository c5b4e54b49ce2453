"""The admin's password sign-in: each failure recorded, too many refused per address and account."""

import time
from types import SimpleNamespace
from unittest import mock

import pytest
from django.core.cache import cache
from django.test import Client

from audit.models import AuditEvent
from tenants import scoping
from tenants.models import User


@pytest.fixture(autouse=True)
def fresh_counters():
    cache.clear()  # the counters live in the shared cache (Redis here)
    # The counters are fixed one-minute windows: hold the clock inside one window, or a test that
    # straddles a window's end would see its counts start again.
    now = time.time()
    with mock.patch("django_ratelimit.core.time", SimpleNamespace(time=lambda: now)):
        yield
    cache.clear()


@pytest.fixture
def staff(operator):
    user = User.objects.get(pk=operator.user_id)
    user.set_password("the-right-password")
    user.save()
    return user


def sign_in(password: str, *, email="operator@platform.test", address="203.0.113.7"):
    client = Client(REMOTE_ADDR=address)
    response = client.post("/admin/login/?next=/admin/", {"username": email, "password": password})
    return client, response


def failures(reason: str) -> int:
    with scoping.dangerously_all_organizations(reason="test", record=False):
        return AuditEvent.objects.filter(action="tenants.authentication.fail", details__reason=reason).count()


def test_a_failed_password_sign_in_is_recorded_without_the_password(staff):
    _, response = sign_in("wrong-password")
    assert response.status_code == 200 and b"Please enter the correct email" in response.content
    assert failures("invalid_password") == 1
    with scoping.dangerously_all_organizations(reason="test", record=False):
        event = AuditEvent.objects.get(action="tenants.authentication.fail")
    assert "wrong-password" not in str(event.details) and event.ip == "203.0.113.7"


def test_the_right_password_signs_in(staff):
    client, response = sign_in("the-right-password")
    assert response.status_code == 302
    assert client.get("/admin/").status_code == 200


def test_too_many_failures_from_one_address_are_refused_even_with_the_right_password(staff, settings):
    settings.ADMIN_SIGNIN_FAILURES_PER_MINUTE = 3
    for i in range(4):
        sign_in("wrong", email=f"someone{i}@example.test")
    _, response = sign_in("the-right-password")
    assert response.status_code == 200 and b"Too many failed sign-ins" in response.content
    assert failures("too_many_attempts") == 1
    _, elsewhere = sign_in("the-right-password", address="198.51.100.9")
    assert elsewhere.status_code == 302  # another address, an account with no failures


def test_too_many_failures_against_one_account_are_refused_from_any_address(staff, settings):
    settings.ADMIN_SIGNIN_FAILURES_PER_MINUTE = 3
    for i in range(4):
        sign_in("wrong", address=f"198.51.100.{i + 1}")
    _, response = sign_in("the-right-password", address="192.0.2.200")
    assert response.status_code == 200 and b"Too many failed sign-ins" in response.content
