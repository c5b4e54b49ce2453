import io

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from tenants.models import Organization
from tests.conftest import Api


def run(*args) -> str:
    out = io.StringIO()
    call_command(*args, stdout=out)
    return out.getvalue()


def test_an_operator_scripts_an_organization_a_user_and_a_key(db):
    run("create_organization", "initech", "--name", "Initech")
    run("create_user", "peter@initech.test", "--organization", "initech", "--role", "admin")
    output = run("create_api_key", "--organization", "initech", "--user", "peter@initech.test", "--name", "ci")
    key = output.strip().splitlines()[-1]
    assert key.startswith("aak_") and " " not in key
    me = Api(key).get("/api/v1/me/").json()
    assert (me["organization"]["slug"], me["role"]) == ("initech", "admin")


def test_commands_fail_clearly(db):
    run("create_organization", "initech", "--name", "Initech")
    with pytest.raises(CommandError, match="already exists"):
        run("create_organization", "initech", "--name", "Again")
    with pytest.raises(CommandError, match="No organization"):
        run("create_user", "a@b.test", "--organization", "nope", "--role", "member")
    with pytest.raises(CommandError, match="not a member"):
        run("create_api_key", "--organization", "initech", "--user", "stranger@b.test")
    assert Organization.objects.count() == 1


def test_bootstrap_demo_prints_its_secrets_once(db):
    first = run("bootstrap_demo")
    assert "API key:" in first
    second = run("bootstrap_demo")
    assert "API key:" not in second and "exists" in second
