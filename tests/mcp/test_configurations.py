"""Configurations: CRUD, who may do what, credentials encrypted, bound to their row and never
shown, tenant-supplied URLs checked when saved and when dialled, and stdio templates."""

import socket
import threading

import pytest

from mcp.models import MCPConfiguration
from tenants import scoping
from tests.conftest import Api, committed, error_of, make_key
from tests.mcp.conftest import TOKEN, configure

# The calls go through the data plane, which reads committed rows on its own connections.
pytestmark = committed


def stored(acme, pk) -> MCPConfiguration:
    with scoping.organization_scope(acme):
        return MCPConfiguration.objects.get(pk=pk)


def test_it_creates_lists_updates_and_deletes(alice_api, http_server):
    created = configure(alice_api, name="tools", url=http_server.url, allowed_tools=["echo"])
    assert created["owner"] is None and created["enabled"] is True and created["status"] == "unknown"
    assert [c["id"] for c in alice_api.get("/api/v1/mcp/configurations/").json()["results"]] == [created["id"]]
    path = f"/api/v1/mcp/configurations/{created['id']}/"
    renamed = alice_api.patch(path, {"name": "renamed"}).json()
    assert renamed["name"] == "renamed" and renamed["revision"] == created["revision"]
    moved = alice_api.patch(path, {"url": http_server.url + "/"}).json()
    assert moved["revision"] == created["revision"] + 1  # how it is reached changed: new sessions
    assert alice_api.delete(path).status_code == 204
    assert alice_api.get(path).status_code == 404


def test_credentials_are_write_only_encrypted_and_bound_to_their_row(alice_api, bearer_server, acme):
    created = configure(alice_api, url=bearer_server.url, auth_type="bearer", bearer_token=TOKEN)
    for body in (created, alice_api.get(f"/api/v1/mcp/configurations/{created['id']}/").json()):
        assert TOKEN not in str(body) and "bearer_token" not in body and body["has_credentials"] is True
    row = stored(acme, created["id"])
    assert row.bearer_token_encrypted.startswith("e1:") and TOKEN not in row.bearer_token_encrypted
    # The ciphertext copied to another row does not decrypt there: the call is refused, not sent bare.
    other = configure(alice_api, name="copy", url=bearer_server.url, auth_type="bearer", bearer_token="other")
    with scoping.organization_scope(acme):
        MCPConfiguration.objects.filter(pk=other["id"]).update(bearer_token_encrypted=row.bearer_token_encrypted)
    response = alice_api.post(
        f"/api/v1/mcp/configurations/{other['id']}/tools/call/", {"name": "echo", "arguments": {"text": "x"}}
    )
    assert response.status_code == 409 and error_of(response)["code"] == "credential_unreadable"
    assert TOKEN not in response.content.decode()


def test_custom_headers_are_sent_and_never_shown(alice_api, bearer_server):
    created = configure(
        alice_api, url=bearer_server.url, auth_type="headers", headers={"Authorization": f"Bearer {TOKEN}"}
    )
    assert TOKEN not in str(created)
    response = alice_api.post(
        f"/api/v1/mcp/configurations/{created['id']}/tools/call/", {"name": "echo", "arguments": {"text": "ok"}}
    )
    assert response.json()["content"][0]["text"] == "ok"


@pytest.mark.parametrize("headers", [{"Host": "evil.test"}, {"X-Bad\nName": "v"}, {"X-Ok": "line\r\nbreak"}, {}])
def test_reserved_or_malformed_headers_are_refused(alice_api, http_server, headers):
    response = alice_api.post(
        "/api/v1/mcp/configurations/", {"name": "h", "url": http_server.url, "auth_type": "headers", "headers": headers}
    )
    assert response.status_code == 400 and "headers" in error_of(response)["details"]


def test_members_use_shared_servers_but_do_not_change_them(alice_api, bob_api, http_server):
    shared = configure(alice_api, url=http_server.url)
    assert bob_api.get(f"/api/v1/mcp/configurations/{shared['id']}/").status_code == 200
    response = bob_api.patch(f"/api/v1/mcp/configurations/{shared['id']}/", {"name": "mine now"})
    assert response.status_code == 403 and error_of(response)["code"] == "permission_denied"
    assert bob_api.delete(f"/api/v1/mcp/configurations/{shared['id']}/").status_code == 403
    refused = bob_api.post("/api/v1/mcp/configurations/", {"name": "x", "url": http_server.url, "shared": True})
    assert refused.status_code == 403


def test_a_users_own_server_is_theirs_alone(alice_api, bob_api, bob, http_server):
    own = configure(bob_api, name="bob's", url=http_server.url)
    assert own["owner"] == bob.user_id
    assert bob_api.patch(f"/api/v1/mcp/configurations/{own['id']}/", {"name": "still bob's"}).status_code == 200
    # Not even an owner of the organization sees another user's own server.
    assert alice_api.get(f"/api/v1/mcp/configurations/{own['id']}/").status_code == 404
    assert own["id"] not in [c["id"] for c in alice_api.get("/api/v1/mcp/configurations/").json()["results"]]


def test_names_are_unique_per_owner(alice_api, http_server):
    configure(alice_api, name="same", url=http_server.url)
    response = alice_api.post("/api/v1/mcp/configurations/", {"name": "same", "url": http_server.url})
    assert response.status_code == 409 and error_of(response)["code"] == "conflict"


def test_oauth_is_for_servers_reached_over_http(alice_api, test_template):
    body = {"name": "o", "transport": "stdio", "stdio_template": "test-server", "auth_type": "oauth"}
    response = alice_api.post("/api/v1/mcp/configurations/", body)
    assert response.status_code == 400 and "auth_type" in error_of(response)["details"]


@pytest.mark.parametrize(
    "body",
    [
        {"transport": "streamable-http"},
        {"transport": "stdio"},
        {"transport": "stdio", "url": "https://example.com/mcp"},
        {"auth_type": "bearer", "url": "https://mcp.example.com/mcp"},
        {"transport": "carrier-pigeon", "url": "https://mcp.example.com/mcp"},
    ],
)
def test_incomplete_configurations_are_refused(alice_api, body):
    response = alice_api.post("/api/v1/mcp/configurations/", {"name": "incomplete", **body})
    assert response.status_code == 400
    assert error_of(response)["details"]


class Listener:
    """A loopback port that records whether anything connected to it."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self.running = True
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self):
        while self.running:
            try:
                conn, _ = self.sock.accept()
                self.connections += 1
                conn.close()
            except OSError:
                continue

    def close(self):
        self.running = False
        self.thread.join()
        self.sock.close()


@pytest.fixture
def listener():
    listening = Listener()
    yield listening
    listening.close()


SSRF_HOSTS = [
    "127.0.0.1", "localhost", "127.1", "2130706433", "0x7f000001", "0177.0.0.1", "0x7f.0.0.1", "[::1]",
    "[::ffff:127.0.0.1]", "[::ffff:7f00:1]", "[64:ff9b::7f00:1]", "sub.localhost",
]  # fmt: skip
OTHER_REFUSED = [
    ("http://169.254.169.254/latest/meta-data/", "private_address"),
    ("http://metadata.google.internal/computeMetadata/v1/", "private_address"),
    ("http://10.0.0.5/mcp", "private_address"),
    ("http://192.168.1.10/mcp", "private_address"),
    ("http://172.16.0.1/mcp", "private_address"),
    ("http://100.64.0.1/mcp", "private_address"),
    ("http://[fe80::1]/mcp", "private_address"),
    ("http://0.0.0.0/mcp", "private_address"),
    ("ftp://mcp.example.com/mcp", "scheme_not_allowed"),
    ("file:///etc/passwd", "scheme_not_allowed"),
    ("http://user:pass@mcp.example.com/mcp", "credentials_in_url"),
]


@pytest.mark.parametrize("host", SSRF_HOSTS)
def test_every_loopback_form_is_refused_with_nothing_dialled(alice_api, listener, settings, host):
    settings.OUTBOUND_ALLOWED_NETWORKS = []
    response = alice_api.post(
        "/api/v1/mcp/configurations/", {"name": "ssrf", "url": f"http://{host}:{listener.port}/mcp"}
    )
    assert response.status_code == 400, response.content
    assert error_of(response)["code"] == "private_address"
    assert (
        "OUTBOUND_ALLOWED_NETWORKS" in error_of(response)["message"]
        or "names this machine" in error_of(response)["message"]
    )
    assert listener.connections == 0


@pytest.mark.parametrize(("url", "code"), OTHER_REFUSED)
def test_private_metadata_and_odd_urls_are_refused(alice_api, settings, url, code):
    settings.OUTBOUND_ALLOWED_NETWORKS = []
    response = alice_api.post("/api/v1/mcp/configurations/", {"name": "ssrf", "url": url})
    assert response.status_code == 400 and error_of(response)["code"] == code


def test_the_url_is_checked_again_when_dialled(alice_api, listener, settings):
    created = configure(alice_api, url=f"http://127.0.0.1:{listener.port}/mcp")  # allowed when saved
    settings.OUTBOUND_ALLOWED_NETWORKS = []  # the operator withdrew the allowance
    response = alice_api.post(
        f"/api/v1/mcp/configurations/{created['id']}/tools/call/", {"name": "echo", "arguments": {}}
    )
    assert response.status_code == 400 and error_of(response)["code"] == "outbound_url_refused"
    assert listener.connections == 0


def test_operators_manage_stdio_templates_and_code_injection_is_refused(operator_api, alice_api):
    base = {"name": "node-server", "command": "/usr/bin/node", "arguments": ["server.js"]}
    for env_field in (
        {"allowed_env": ["LD_PRELOAD"]},
        {"env": {"NODE_OPTIONS": "--require /tmp/x.js"}},
        {"allowed_env": ["PYTHONPATH"]},
    ):
        response = operator_api.post("/api/v1/mcp/stdio-templates/", {**base, **env_field})
        assert response.status_code == 400, env_field
        assert "never allowed" in str(error_of(response)["details"])
    created = operator_api.post("/api/v1/mcp/stdio-templates/", {**base, "allowed_env": ["API_REGION"]})
    assert created.status_code == 201, created.content
    assert alice_api.post("/api/v1/mcp/stdio-templates/", base).status_code == 403


@pytest.mark.parametrize(
    "arguments",
    [
        {"env": {"LD_PRELOAD": "/tmp/evil.so"}},
        {"env": {"PYTHONPATH": "/tmp"}},
        {"env": {"PATH": "/tmp"}},
        {"env": {"NOT_ALLOWED": "x"}},
        {"arguments": {"--exec": "sh"}},
        {"arguments": {"--local-timezone": "UTC\n--exec=sh"}},
        {"command": "/bin/sh"},
        ["--anything"],
    ],
)
def test_a_tenant_never_chooses_the_command_line(alice_api, time_template, arguments):
    response = alice_api.post(
        "/api/v1/mcp/configurations/",
        {"name": "t", "transport": "stdio", "stdio_template": "time", "stdio_arguments": arguments},
    )
    assert response.status_code == 400, response.content
    assert "stdio_arguments" in error_of(response)["details"]


def test_another_organization_cannot_name_a_template_it_was_not_given(charlie_api, test_template):
    # Templates are global and operators' own; any organization may run from one by name. What
    # cannot cross is a configuration: charlie's call to alice's id is 404 (test_cross_organization).
    created = charlie_api.post(
        "/api/v1/mcp/configurations/", {"name": "x", "transport": "stdio", "stdio_template": "test-server"}
    )
    assert created.status_code == 201
    missing = charlie_api.post(
        "/api/v1/mcp/configurations/", {"name": "y", "transport": "stdio", "stdio_template": "nope"}
    )
    assert missing.status_code == 400 and "stdio_template" in error_of(missing)["details"]


def test_a_key_of_another_organization_cannot_reach_a_configuration(alice, charlie, http_server):
    alice_api, charlie_api = Api(make_key(alice)), Api(make_key(charlie))
    created = configure(alice_api, url=http_server.url)
    response = charlie_api.post(
        f"/api/v1/mcp/configurations/{created['id']}/tools/call/", {"name": "echo", "arguments": {"text": "x"}}
    )
    assert response.status_code == 404
