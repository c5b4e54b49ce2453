"""The signing keys of the configured identity provider, fetched from its JWKS URL.

PyJWT's PyJWKClient refetches on every unknown key id, which lets anyone who can send a token make
us hammer the provider; this cache refetches for an unknown `kid` at most once per cooldown.
"""

import json
import threading
import time
import urllib.request

import jwt
from django.conf import settings


class UnknownSigningKey(Exception):
    pass


class JWKSUnavailable(Exception):
    pass


class JWKSCache:
    def __init__(self, url: str, *, max_age: float, cooldown: float, timeout: float = 3.0):
        self.url, self.max_age, self.cooldown, self.timeout = url, max_age, cooldown, timeout
        self._keys: dict = {}
        self._fetched_at = float("-inf")
        self._lock = threading.Lock()
        self.fetches = 0

    def _fetch(self) -> None:
        self._fetched_at = time.monotonic()
        self.fetches += 1
        try:
            with urllib.request.urlopen(self.url, timeout=self.timeout) as response:  # noqa: S310 (operator-configured)
                document = json.loads(response.read(1_000_000))
            keyset = jwt.PyJWKSet.from_dict(document)
        except (OSError, ValueError, jwt.PyJWTError) as exc:
            raise JWKSUnavailable(type(exc).__name__) from None
        self._keys = {key.key_id: key for key in keyset.keys}

    def signing_key(self, kid: str | None):
        with self._lock:
            age = time.monotonic() - self._fetched_at
            if age > self.max_age:
                self._fetch()
            elif self._lookup(kid) is None and age > self.cooldown:
                self._fetch()
            key = self._lookup(kid)
        if key is None:
            raise UnknownSigningKey(kid)
        return key

    def _lookup(self, kid):
        if kid is None:
            return next(iter(self._keys.values())) if len(self._keys) == 1 else None
        return self._keys.get(kid)


_caches: dict[str, JWKSCache] = {}


def jwks_cache() -> JWKSCache:
    url = settings.JWT_JWKS_URL
    cache = _caches.get(url)
    if cache is None:
        cache = _caches[url] = JWKSCache(
            url,
            max_age=settings.JWT_JWKS_CACHE_SECONDS,
            cooldown=settings.JWT_JWKS_REFETCH_COOLDOWN_SECONDS,
        )
    return cache
