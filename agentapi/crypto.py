"""Field encryption: AES-256-GCM under a keyring of versioned keys (FIELD_ENCRYPTION_KEYS).

A ciphertext names the key that made it (`v1:<version>:<base64url(nonce + ciphertext + tag)>`), so
old keys keep decrypting while the newest encrypts, and a re-encryption command can find what is
still under a retired key. Each ciphertext is bound to where it belongs (`context`, for example
"mcp.MCPConfiguration.bearer_token:<row uuid>") as GCM's associated data: copied to another row or
field, it fails to decrypt. A failure is always an error, never a pass-through of the stored text.

Written here rather than taken from an encrypted-field package: those we looked at either swallow
decryption errors or cannot bind a ciphertext to its row.
"""

import base64
import binascii
import functools
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from django.conf import settings

FORMAT = "v1"
_NONCE_BYTES = 12


class DecryptionError(Exception):
    """The ciphertext is malformed, names an unknown key, or fails authentication."""


def parse_keyring(entries: list[str]) -> list[tuple[str, bytes]]:
    """FIELD_ENCRYPTION_KEYS entries "<version>:<base64 of 32 bytes>", newest first; raises ValueError."""
    keys, seen = [], set()
    for entry in entries:
        version, sep, material = entry.strip().partition(":")
        if not sep or not version or not version.isalnum():
            raise ValueError("each key is '<version>:<base64 key>', the version letters and digits")
        if version in seen:
            raise ValueError(f"key version {version!r} appears twice")
        try:
            url_safe = material.strip().replace("+", "-").replace("/", "_")  # either alphabet
            raw = base64.b64decode(url_safe + "=" * (-len(url_safe) % 4), altchars=b"-_", validate=True)
        except (binascii.Error, ValueError):
            raise ValueError(f"key {version!r} is not base64") from None
        if len(raw) != 32:
            raise ValueError(f"key {version!r} must be 32 bytes (AES-256), not {len(raw)}")
        seen.add(version)
        keys.append((version, raw))
    if not keys:
        raise ValueError("at least one key is needed")
    return keys


class Keyring:
    def __init__(self, entries: list[str]):
        keys = parse_keyring(entries)
        self.current_version = keys[0][0]
        self._ciphers = {version: AESGCM(key) for version, key in keys}

    def encrypt(self, plaintext: str, *, context: str) -> str:
        nonce = os.urandom(_NONCE_BYTES)
        sealed = self._ciphers[self.current_version].encrypt(nonce, plaintext.encode(), context.encode())
        body = base64.urlsafe_b64encode(nonce + sealed).decode().rstrip("=")
        return f"{FORMAT}:{self.current_version}:{body}"

    def decrypt(self, token: str, *, context: str) -> str:
        version, body = self._split(token)
        cipher = self._ciphers.get(version)
        if cipher is None:
            raise DecryptionError(f"unknown key version {version!r}")
        try:
            raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
            plaintext = cipher.decrypt(raw[:_NONCE_BYTES], raw[_NONCE_BYTES:], context.encode())
        except (InvalidTag, ValueError, binascii.Error):
            # Never the cause's text: it could echo what was being decrypted.
            raise DecryptionError("ciphertext failed authentication") from None
        return plaintext.decode()

    def version_of(self, token: str) -> str:
        return self._split(token)[0]

    def needs_rotation(self, token: str) -> bool:
        return self.version_of(token) != self.current_version

    @staticmethod
    def _split(token: str) -> tuple[str, str]:
        parts = token.split(":") if isinstance(token, str) else []
        if len(parts) != 3 or parts[0] != FORMAT or not parts[1] or len(parts[2]) < 16:
            raise DecryptionError("not a ciphertext of this keyring")
        return parts[1], parts[2]


@functools.cache
def _keyring_for(entries: tuple[str, ...]) -> Keyring:
    return Keyring(list(entries))


def keyring() -> Keyring:
    """The keyring of the current settings (rebuilt when FIELD_ENCRYPTION_KEYS changes)."""
    return _keyring_for(tuple(settings.FIELD_ENCRYPTION_KEYS))
