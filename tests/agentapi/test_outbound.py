"""The SSRF rules for tenant-supplied URLs: every form refused, and nothing dialled to decide."""

import ipaddress
import socket

import pytest

from agentapi.outbound import OutboundURLRefused, check_url


@pytest.fixture(autouse=True)
def nothing_is_dialled(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("check_url opened a connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)


def resolver_of(*addresses):
    """A stand-in for DNS (there is none here), answering every name with these addresses."""

    def resolve(host, port, type=0):
        return [(socket.AF_INET6 if ":" in a else socket.AF_INET, type, 6, "", (a, port)) for a in addresses]

    return resolve


@pytest.mark.parametrize(
    "url, code",
    [
        ("http://127.0.0.1/mcp", "private_address"),
        ("http://localhost:8000/", "private_address"),
        ("http://LOCALHOST./", "private_address"),
        ("http://api.localhost/", "private_address"),
        ("http://[::1]/", "private_address"),
        ("http://0.0.0.0/", "private_address"),
        ("http://10.1.2.3/", "private_address"),
        ("http://172.16.0.1/", "private_address"),
        ("http://192.168.0.10/", "private_address"),
        ("http://169.254.169.254/latest/meta-data/", "private_address"),
        ("http://metadata.google.internal/computeMetadata/v1/", "private_address"),
        ("http://100.64.0.1/", "private_address"),
        ("http://100.100.100.200/", "private_address"),
        ("http://[fe80::1]/", "private_address"),
        ("http://[fd00:ec2::254]/", "private_address"),
        ("http://[::ffff:127.0.0.1]/", "private_address"),
        ("http://[::ffff:a9fe:a9fe]/", "private_address"),
        ("http://[64:ff9b::a00:1]/", "private_address"),
        ("http://[2002:7f00:1::]/", "private_address"),
        ("http://2130706433/", "private_address"),
        ("http://0x7f000001/", "private_address"),
        ("http://0177.0.0.1/", "private_address"),
        ("http://127.1/", "private_address"),
        ("http://0x7f.1/", "private_address"),
        ("http://224.0.0.1/", "private_address"),
        ("ftp://example.com/", "scheme_not_allowed"),
        ("file:///etc/passwd", "scheme_not_allowed"),
        ("gopher://example.com/", "scheme_not_allowed"),
        ("javascript:alert(1)", "scheme_not_allowed"),
        ("http://user:pass@example.com/", "credentials_in_url"),
        ("http://example.com@127.0.0.1/", "credentials_in_url"),
        ("http:///nohost", "invalid_url"),
        ("http://exa mple.com/", "invalid_url"),
        ("http://example.com:99999/", "invalid_url"),
        ("http://999.1.1.1.1/", "invalid_host"),
        ("", "invalid_url"),
    ],
)
def test_it_refuses_every_form_with_a_reason(url, code):
    with pytest.raises(OutboundURLRefused) as refused:
        check_url(url, resolver=resolver_of("93.184.216.34"))
    assert refused.value.code == code
    assert str(refused.value)


def test_a_name_that_resolves_to_a_private_address_is_refused():
    for addresses in (["10.0.0.5"], ["93.184.216.34", "127.0.0.1"], ["::ffff:10.0.0.1"]):
        with pytest.raises(OutboundURLRefused, match="not a public address"):
            check_url("https://mcp.example.com/", resolver=resolver_of(*addresses))


def test_a_public_url_passes_with_the_addresses_to_dial():
    checked = check_url("https://MCP.Example.com/mcp", resolver=resolver_of("93.184.216.34", "2606:2800:220:1::1"))
    assert (checked.scheme, checked.host, checked.port) == ("https", "mcp.example.com", 443)
    assert checked.addresses == (ipaddress.ip_address("93.184.216.34"), ipaddress.ip_address("2606:2800:220:1::1"))


def test_an_unresolvable_name_is_refused():
    def fail(*args, **kwargs):
        raise socket.gaierror("no such name")

    with pytest.raises(OutboundURLRefused) as refused:
        check_url("https://nowhere.example/", resolver=fail)
    assert refused.value.code == "unresolvable"


def test_operators_may_allow_networks(settings):
    settings.OUTBOUND_ALLOWED_NETWORKS = [ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("10.20.0.0/16")]
    assert check_url("http://127.0.0.1:9000/mcp").port == 9000
    assert check_url("http://[::ffff:127.0.0.1]/").host == "::ffff:127.0.0.1"
    check_url("http://svc.internal.example/", resolver=resolver_of("10.20.3.4"))
    with pytest.raises(OutboundURLRefused):
        check_url("http://10.30.0.1/")
