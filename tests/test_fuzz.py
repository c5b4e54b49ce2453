"""A property-based fuzzer over the OpenAPI schema: nothing a client sends is a 500, and every
4xx under /api/ has the documented error shape."""

import json
import re

import pytest
import schemathesis
from django.core import signals
from django.db import close_old_connections
from hypothesis import HealthCheck, settings

from agentapi.wsgi import application
from tenants.models import User
from tests.conftest import Api, committed, make_key


@pytest.fixture(autouse=True)
def keep_the_test_connection(db):
    # Called as a WSGI app, Django would close the test's connection after every request (its own
    # test client switches this off the same way).
    signals.request_started.disconnect(close_old_connections)
    signals.request_finished.disconnect(close_old_connections)
    yield
    signals.request_started.connect(close_old_connections)
    signals.request_finished.connect(close_old_connections)


@pytest.fixture
def fuzz_headers(alice):
    User.objects.filter(pk=alice.user_id).update(is_superuser=True)  # reach the operators' routes too
    return {"Authorization": f"Bearer {make_key(alice, 'fuzz')}"}


schema = schemathesis.openapi.from_wsgi("/api/schema/", application)


@schema.parametrize()
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
def test_bad_input_is_never_a_server_error(case, fuzz_headers):
    response = case.call(headers={**(case.headers or {}), **fuzz_headers})
    assert response.status_code < 500, (case.method, case.path, response.status_code, response.text[:500])
    if 400 <= response.status_code < 500:
        body = response.json()
        assert set(body) == {"error"} and {"code", "message", "details"} <= set(body["error"]), body


def _operations_with_bodies():
    document = schema.raw_schema
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if isinstance(operation, dict) and "requestBody" in operation:
                yield method.upper(), re.sub(r"\{[^}]+\}", "1", path)


DEEP = "[" * 400 + "]" * 400
WIDE = json.dumps({f"key{i}": [i] for i in range(50_000)})


@committed  # the data plane's routes read committed rows
@pytest.mark.parametrize("method, path", sorted(set(_operations_with_bodies())))
def test_deep_and_wide_bodies_are_never_a_server_error(method, path, alice, acme):
    User.objects.filter(pk=alice.user_id).update(is_superuser=True)
    api = Api(make_key(alice, "fuzz-bodies"))
    for body in (DEEP, WIDE, '{"a":' * 200 + "1" + "}" * 200):
        response = api.request(method, path, body)
        assert response.status_code < 500, (method, path, response.status_code, response.content[:300])
        if 400 <= response.status_code < 500:
            assert set(response.json()) == {"error"}, response.content[:300]
