"""Envelope encryption: per-organization data keys wrapped by the master keyring; rotation rewraps
them online and reseals old values; destroying an organization's data keys shreds its secrets."""

import base64
import os

import pytest
from django.core.management import CommandError, call_command

from agentapi.crypto import DecryptionError, keyring
from mcp.models import MCPConfiguration
from tenants import rotation, scoping, secrets, services
from tenants.models import DataKey
from tests.conftest import committed


def new_master_key(version: str) -> str:
    return f"{version}:" + base64.urlsafe_b64encode(os.urandom(32)).decode()


@pytest.fixture
def fresh_keys(settings):
    settings.FIELD_ENCRYPTION_KEYS = [new_master_key("k1")]
    secrets.forget_cached_keys()
    yield settings
    secrets.forget_cached_keys()


def a_configuration(organization, token="planted-token-123") -> MCPConfiguration:
    with scoping.organization_scope(organization):
        row = MCPConfiguration(
            organization=organization,
            name=f"c{os.urandom(2).hex()}",
            url="https://mcp.example.com/mcp",
            auth_type="bearer",
        )
        row.set_bearer_token(token)
        row.save()
        return row


def token_of(row) -> str:
    with scoping.organization_scope(row.organization):
        row.refresh_from_db()
        return row.credential_headers()["Authorization"].removeprefix("Bearer ")


def test_secrets_are_sealed_under_the_organizations_own_data_key(fresh_keys, acme, globex):
    mine, theirs = a_configuration(acme), a_configuration(globex)
    assert mine.bearer_token_encrypted.startswith("e1:1:") and "planted" not in mine.bearer_token_encrypted
    with scoping.organizations_scope([acme.pk, globex.pk]):
        keys = {k.organization_id: k for k in DataKey.objects.all()}
    assert set(keys) == {acme.pk, globex.pk} and keys[acme.pk].wrapped.startswith("v1:k1:")
    # The same context under another organization's key does not open.
    with scoping.organization_scope(globex), pytest.raises(DecryptionError):
        secrets.unseal(globex.pk, mine.bearer_token_encrypted, context=mine._context("bearer_token"))
    assert token_of(mine) == token_of(theirs) == "planted-token-123"


def test_rotating_the_master_key_rewraps_data_keys_and_reseals_old_values(fresh_keys, acme, globex):
    rows = [a_configuration(acme, "token-a"), a_configuration(globex, "token-g")]
    with scoping.organization_scope(acme):
        legacy = MCPConfiguration(
            organization=acme, name="legacy", url="https://mcp.example.com/mcp", auth_type="bearer"
        )
        legacy.bearer_token_encrypted = keyring().encrypt("token-legacy", context=legacy._context("bearer_token"))
        legacy.save()
    sealed_before = [r.bearer_token_encrypted for r in rows]
    fresh_keys.FIELD_ENCRYPTION_KEYS = [new_master_key("k2"), *fresh_keys.FIELD_ENCRYPTION_KEYS]
    with pytest.raises(CommandError):
        call_command("rotate_encryption_keys", "--check")
    call_command("rotate_encryption_keys", "--batch-size", "1")
    call_command("rotate_encryption_keys", "--check")  # nothing left: exits 0
    with scoping.dangerously_all_organizations(reason="test", record=False):
        assert all(k.wrapped.startswith("v1:k2:") for k in DataKey.objects.all())
        assert MCPConfiguration.objects.get(pk=legacy.pk).bearer_token_encrypted.startswith("e1:")
        # Values sealed under data keys did not need touching: only their keys were rewrapped.
        assert [MCPConfiguration.objects.get(pk=r.pk).bearer_token_encrypted for r in rows] == sealed_before
    fresh_keys.FIELD_ENCRYPTION_KEYS = fresh_keys.FIELD_ENCRYPTION_KEYS[:1]  # the old master key retired
    secrets.forget_cached_keys()
    assert [token_of(r) for r in rows] == ["token-a", "token-g"]
    assert token_of(legacy) == "token-legacy"


def test_rotation_resumes_where_it_stopped(fresh_keys, acme, globex):
    a_configuration(acme), a_configuration(globex)
    fresh_keys.FIELD_ENCRYPTION_KEYS = [new_master_key("k2"), *fresh_keys.FIELD_ENCRYPTION_KEYS]
    with scoping.dangerously_all_organizations(reason="test", record=False):
        assert rotation.remaining().data_keys == 2
        first = DataKey.objects.order_by("pk").first()  # as if a run stopped after one key
        context = DataKey.context(first.organization_id, first.version)
        first.wrapped = keyring().encrypt(keyring().decrypt(first.wrapped, context=context), context=context)
        first.save()
        assert rotation.remaining().data_keys == 1
    assert rotation.rotate(batch_size=10).data_keys == 1
    with scoping.dangerously_all_organizations(reason="test", record=False):
        assert rotation.remaining().data_keys == 0


@committed  # through the data plane: it reads committed rows
def test_destroying_the_data_keys_shreds_the_organizations_secrets(fresh_keys, acme, globex, alice_api):
    mine, theirs = a_configuration(acme), a_configuration(globex)
    assert services.data_keys_destroy(organization=acme) == 1
    with scoping.organization_scope(acme), pytest.raises(DecryptionError):
        mine.credential_headers()
    assert token_of(theirs) == "planted-token-123"  # another organization's secrets are untouched
    response = alice_api.post(f"/api/v1/mcp/configurations/{mine.pk}/tools/call/", {"name": "x", "arguments": {}})
    assert response.status_code == 409 and response.json()["error"]["code"] == "credential_unreadable"


def test_a_sealed_value_moved_to_another_row_does_not_open(fresh_keys, acme):
    first, second = a_configuration(acme, "first"), a_configuration(acme, "second")
    with scoping.organization_scope(acme):
        MCPConfiguration.objects.filter(pk=second.pk).update(bearer_token_encrypted=first.bearer_token_encrypted)
        second.refresh_from_db()
        with pytest.raises(DecryptionError):
            second.credential_headers()
