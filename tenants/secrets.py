"""Envelope encryption of tenant secrets: each organization's secrets are sealed under its own data
key, and data keys are wrapped by the master keyring (agentapi.crypto, FIELD_ENCRYPTION_KEYS).

    token = seal(organization_id, "s3cret", context="mcp.configuration:42:bearer_token")
    unseal(organization_id, token, context=...)   # DecryptionError if anything is off

A sealed value reads `e1:<data key version>:<base64url(nonce + ciphertext + tag)>`; its associated
data binds it to its organization and to `context` (the row and field), so a copy elsewhere fails.
Rotating a master key rewraps data keys only (`rotate_encryption_keys`); deleting an organization's
data keys (`data_keys_destroy`) makes its secrets unreadable for good. Values written before envelope
encryption (`v1:` master-keyring ciphertexts) still open, and the rotation command reseals them.

Unwrapped data keys are cached per process for DATA_KEY_CACHE_SECONDS so that opening a secret on
the hot path is one AES-GCM operation; after a data key is destroyed, other processes stop using it
when their copy expires.
"""

import base64
import binascii
import os
import threading
import time

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from django.conf import settings
from django.db import IntegrityError, transaction

from agentapi.crypto import FORMAT as MASTER_FORMAT
from agentapi.crypto import DecryptionError, keyring

FORMAT = "e1"
_NONCE_BYTES = 12
_cache: dict[tuple[int, int | None], tuple[float, int, AESGCM]] = {}
_lock = threading.Lock()
# Fields sealed with seal(): (model, field name, context(row) -> str), registered by their apps.
SEALED_FIELDS: list[tuple] = []


def register_sealed_field(model, field: str, context) -> None:
    """Declare a model field that holds sealed values, for rotate_encryption_keys and the tests."""
    if (model, field) not in [(m, f) for m, f, _ in SEALED_FIELDS]:
        SEALED_FIELDS.append((model, field, context))


def _aad(organization_id: int, context: str) -> bytes:
    return f"{organization_id}|{context}".encode()


def _unwrap(organization_id: int, record) -> AESGCM:
    from tenants.models import DataKey

    try:
        raw = base64.urlsafe_b64decode(
            keyring().decrypt(record.wrapped, context=DataKey.context(organization_id, record.version))
        )
    except (binascii.Error, ValueError):
        raise DecryptionError("data key is malformed") from None
    if len(raw) != 32:
        raise DecryptionError("data key is malformed")
    return AESGCM(raw)


def _data_key(organization_id: int, version: int | None) -> tuple[int, AESGCM]:
    """(version, cipher) of the organization's data key: the given version, or the newest (made on
    first use). Raises DecryptionError when the version does not exist (destroyed)."""
    from tenants.models import DataKey

    now = time.monotonic()
    cached = _cache.get((organization_id, version))
    if cached and now - cached[0] < settings.DATA_KEY_CACHE_SECONDS:
        return cached[1], cached[2]
    keys = DataKey.objects.filter(organization_id=organization_id)
    record = keys.filter(version=version).first() if version is not None else keys.order_by("-version").first()
    if record is None:
        if version is not None:
            raise DecryptionError("the data key this secret was sealed under no longer exists")
        record = _create_data_key(organization_id)
    cipher = _unwrap(organization_id, record)
    with _lock:
        _cache[(organization_id, version)] = (now, record.version, cipher)
        _cache[(organization_id, record.version)] = (now, record.version, cipher)
    return record.version, cipher


def _create_data_key(organization_id: int):
    from tenants.models import DataKey

    material = base64.urlsafe_b64encode(os.urandom(32)).decode()
    try:
        with transaction.atomic():
            return DataKey.objects.create(
                organization_id=organization_id,
                version=1,
                wrapped=keyring().encrypt(material, context=DataKey.context(organization_id, 1)),
            )
    except IntegrityError:  # another process made it first: use theirs
        return DataKey.objects.get(organization_id=organization_id, version=1)


def seal(organization_id: int, plaintext: str, *, context: str) -> str:
    version, cipher = _data_key(organization_id, None)
    nonce = os.urandom(_NONCE_BYTES)
    sealed = cipher.encrypt(nonce, plaintext.encode(), _aad(organization_id, context))
    return f"{FORMAT}:{version}:{base64.urlsafe_b64encode(nonce + sealed).decode().rstrip('=')}"


def unseal(organization_id: int, token: str, *, context: str) -> str:
    """The plaintext of a sealed value. Raises DecryptionError; never returns the stored text."""
    if isinstance(token, str) and token.startswith(MASTER_FORMAT + ":"):
        return keyring().decrypt(token, context=context)  # written before envelope encryption
    parts = token.split(":") if isinstance(token, str) else []
    if len(parts) != 3 or parts[0] != FORMAT or not parts[1].isdigit():
        raise DecryptionError("not a sealed value")
    _, cipher = _data_key(organization_id, int(parts[1]))
    try:
        raw = base64.urlsafe_b64decode(parts[2] + "=" * (-len(parts[2]) % 4))
        return cipher.decrypt(raw[:_NONCE_BYTES], raw[_NONCE_BYTES:], _aad(organization_id, context)).decode()
    except (InvalidTag, ValueError, binascii.Error):
        raise DecryptionError("sealed value failed authentication") from None


def forget_cached_keys(organization_id: int | None = None) -> None:
    with _lock:
        for key in [k for k in _cache if organization_id is None or k[0] == organization_id]:
            del _cache[key]


def needs_resealing(token: str) -> bool:
    """A value still under the master keyring directly (written before envelope encryption)."""
    return bool(token) and token.startswith(MASTER_FORMAT + ":")
