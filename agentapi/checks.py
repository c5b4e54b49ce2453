"""Start-up checks: configuration that would make the platform unsafe stops it with a clear message."""

import base64
import binascii

from django.conf import settings
from django.core.checks import Error, register

ASYMMETRIC = {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}


def parse_keyring(entries: list[str]) -> list[tuple[str, bytes]]:
    """FIELD_ENCRYPTION_KEYS entries "<version>:<base64 of 32 bytes>"; raises ValueError."""
    keys, seen = [], set()
    for entry in entries:
        version, sep, material = entry.strip().partition(":")
        if not sep or not version:
            raise ValueError("each key is '<version>:<base64 key>'")
        if version in seen:
            raise ValueError(f"key version {version!r} appears twice")
        try:
            raw = base64.urlsafe_b64decode(material + "=" * (-len(material) % 4))
        except (binascii.Error, ValueError):
            raise ValueError(f"key {version!r} is not base64") from None
        if len(raw) != 32:
            raise ValueError(f"key {version!r} must be 32 bytes (AES-256), not {len(raw)}")
        seen.add(version)
        keys.append((version, raw))
    if not keys:
        raise ValueError("at least one key is needed")
    return keys


@register()
def check_encryption_keys(app_configs, **kwargs):
    try:
        parse_keyring(settings.FIELD_ENCRYPTION_KEYS)
    except ValueError as exc:
        return [Error(f"FIELD_ENCRYPTION_KEYS: {exc}.", id="agentapi.E001")]
    return []


@register()
def check_jwt_algorithms(app_configs, **kwargs):
    weak = sorted(set(settings.JWT_ALGORITHMS) - ASYMMETRIC)
    if weak:
        return [
            Error(
                f"JWT_ALGORITHMS may name only public-key algorithms (JWKS); refused: {', '.join(weak)}.",
                id="agentapi.E002",
            )
        ]
    return []
