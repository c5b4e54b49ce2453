"""JWTs checked against a JWKS served by a real HTTP server on loopback."""

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from tenants import jwks
from tests.conftest import Api, error_of

ISSUER, AUDIENCE = "https://idp.example.test/", "agentapi"


class IdentityProvider:
    """Serves /jwks.json with the current public keys and counts fetches."""

    def __init__(self):
        self.keys: dict[str, object] = {}
        self.fetches = 0
        provider = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                provider.fetches += 1
                body = json.dumps(
                    {
                        "keys": [
                            {
                                **json.loads(RSAAlgorithm.to_jwk(k.public_key())),
                                "kid": kid,
                                "use": "sig",
                                "alg": "RS256",
                            }
                            for kid, k in provider.keys.items()
                        ]
                    }
                ).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, args=(0.02,), daemon=True).start()  # shutdown waits a poll
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/jwks.json"

    def add_key(self, kid: str):
        self.keys[kid] = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def token(self, kid="k1", key=None, **claims) -> str:
        now = int(time.time())
        payload = {
            "iss": ISSUER,
            "aud": AUDIENCE,
            "iat": now,
            "exp": now + 300,
            "email": "alice@acme.test",
            "org": "acme",
            **claims,
        }
        return jwt.encode(payload, key or self.keys[kid], algorithm="RS256", headers={"kid": kid})


@pytest.fixture
def idp(settings):
    provider = IdentityProvider()
    provider.add_key("k1")
    settings.JWT_JWKS_URL = provider.url
    settings.JWT_ISSUER = ISSUER
    settings.JWT_AUDIENCE = AUDIENCE
    settings.JWT_JWKS_REFETCH_COOLDOWN_SECONDS = 0
    jwks._caches.clear()
    yield provider
    provider.server.shutdown()
    jwks._caches.clear()


def test_it_accepts_a_valid_token(idp, alice):
    body = Api(idp.token()).get("/api/v1/me/").json()
    assert body["user"]["email"] == "alice@acme.test"
    assert body["organization"]["slug"] == "acme"
    assert body["authentication"] == "jwt"


@pytest.mark.parametrize(
    "claims, code",
    [
        ({"exp": 1_000_000}, "token_expired"),
        ({"iss": "https://evil.example.test/"}, "invalid_issuer"),
        ({"aud": "someone-else"}, "invalid_audience"),
        ({"org": "globex"}, "unknown_member"),
        ({"email": None}, "invalid_claims"),
    ],
)
def test_it_refuses_a_bad_token_with_401_and_www_authenticate(idp, alice, globex, claims, code):
    response = Api(idp.token(**claims)).get("/api/v1/me/")
    assert response.status_code == 401
    assert error_of(response)["code"] == code
    assert response["WWW-Authenticate"].startswith('Bearer realm="agentapi"')
    assert 'error="invalid_token"' in response["WWW-Authenticate"]


def test_it_refuses_a_token_signed_by_another_key(idp, alice):
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    response = Api(idp.token(key=stranger)).get("/api/v1/me/")
    assert response.status_code == 401 and error_of(response)["code"] == "invalid_token"


def test_it_refuses_unsigned_and_symmetric_tokens(idp, alice):
    for token in (
        jwt.encode({"email": "alice@acme.test", "org": "acme", "exp": time.time() + 60}, None, algorithm="none"),
        jwt.encode({"email": "alice@acme.test", "org": "acme", "exp": time.time() + 60}, "k" * 32, algorithm="HS256"),
    ):
        response = Api(token).get("/api/v1/me/")
        assert response.status_code == 401, token


def test_it_refuses_a_token_in_the_query_string(idp, alice):
    response = Api().get("/api/v1/me/", {"access_token": idp.token()})
    assert response.status_code == 401
    assert error_of(response)["code"] == "credentials_in_query"
    assert response["WWW-Authenticate"].startswith("Bearer")


def test_an_unknown_key_id_is_refetched_for_a_rotated_key(idp, alice):
    assert Api(idp.token()).get("/api/v1/me/").status_code == 200
    idp.add_key("k2")  # the provider rotates
    fetches = idp.fetches
    assert Api(idp.token(kid="k2")).get("/api/v1/me/").status_code == 200
    assert idp.fetches == fetches + 1


def test_unknown_key_ids_refetch_at_most_once_per_cooldown(idp, alice, settings):
    settings.JWT_JWKS_REFETCH_COOLDOWN_SECONDS = 3600
    jwks._caches.clear()
    assert Api(idp.token()).get("/api/v1/me/").status_code == 200
    fetches = idp.fetches
    forged = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    for i in range(5):
        response = Api(idp.token(kid=f"nope{i}", key=forged)).get("/api/v1/me/")
        assert response.status_code == 401 and error_of(response)["code"] == "unknown_signing_key"
    assert idp.fetches == fetches  # within the cooldown: no refetch, whatever is sent


def test_an_unreachable_jwks_is_a_401_not_a_500(settings, alice):
    settings.JWT_JWKS_URL = "http://127.0.0.1:9/jwks.json"
    jwks._caches.clear()
    token = jwt.encode(
        {"exp": time.time() + 60}, rsa.generate_private_key(65537, 2048), algorithm="RS256", headers={"kid": "x"}
    )
    response = Api(token).get("/api/v1/me/")
    assert response.status_code == 401 and error_of(response)["code"] == "jwks_unavailable"
    jwks._caches.clear()
