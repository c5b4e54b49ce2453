import base64
import os

import pytest

from agentapi.crypto import DecryptionError, Keyring, keyring


def key(version: str) -> str:
    return f"{version}:" + base64.urlsafe_b64encode(os.urandom(32)).decode()


def test_it_round_trips_and_never_repeats_a_ciphertext():
    ring = Keyring([key("v1")])
    first = ring.encrypt("s3cr3t-token", context="row:1")
    second = ring.encrypt("s3cr3t-token", context="row:1")
    assert first != second and "s3cr3t" not in first
    assert ring.decrypt(first, context="row:1") == ring.decrypt(second, context="row:1") == "s3cr3t-token"


def test_a_ciphertext_copied_to_another_row_does_not_decrypt():
    ring = Keyring([key("v1")])
    token = ring.encrypt("s3cr3t", context="mcp.config.bearer_token:aaaa")
    with pytest.raises(DecryptionError):
        ring.decrypt(token, context="mcp.config.bearer_token:bbbb")
    with pytest.raises(DecryptionError):
        ring.decrypt(token, context="mcp.config.headers:aaaa")


def test_old_keys_decrypt_and_the_newest_encrypts():
    old = key("v1")
    before = Keyring([old]).encrypt("hello", context="c")
    rotated = Keyring([key("v2"), old])
    assert rotated.decrypt(before, context="c") == "hello"
    assert rotated.needs_rotation(before)
    after = rotated.encrypt("hello", context="c")
    assert rotated.version_of(after) == "v2" and not rotated.needs_rotation(after)


@pytest.mark.parametrize(
    "token", ["", "plaintext", "v1:v1:short", "v2:v1:" + "A" * 40, "v1:v9:" + "A" * 40, None, "v1:v1:" + "!" * 40]
)
def test_anything_else_is_an_error_never_a_pass_through(token):
    with pytest.raises(DecryptionError):
        Keyring([key("v1")]).decrypt(token, context="c")


def test_a_tampered_ciphertext_is_an_error_that_does_not_echo_it():
    ring = Keyring([key("v1")])
    token = ring.encrypt("s3cr3t", context="c")
    tampered = token[:-2] + ("A" if token[-2] != "A" else "B") + token[-1]
    with pytest.raises(DecryptionError) as error:
        ring.decrypt(tampered, context="c")
    assert "s3cr3t" not in str(error.value) and tampered not in str(error.value)


@pytest.mark.parametrize(
    "entries, message",
    [
        ([], "at least one"),
        (["nocolon"], "<version>"),
        (["v1:" + base64.urlsafe_b64encode(b"x" * 16).decode()], "32 bytes"),
        ([key("v1"), key("v1")], "twice"),
        (["v1:***"], "base64"),
    ],
)
def test_malformed_keyrings_are_refused(entries, message):
    with pytest.raises(ValueError, match=message):
        Keyring(entries)


def test_the_settings_keyring_follows_the_settings(settings):
    settings.FIELD_ENCRYPTION_KEYS = [key("v7")]
    assert keyring().current_version == "v7"
