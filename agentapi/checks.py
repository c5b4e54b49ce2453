"""Start-up checks: configuration that would make the platform unsafe stops it with a clear message."""

from django.conf import settings
from django.core.checks import Error, register

from agentapi.crypto import parse_keyring

ASYMMETRIC = {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}


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


@register()
def check_rate_limits(app_configs, **kwargs):
    from agentapi import ratelimit

    try:
        ratelimit.check_overrides(settings.RATE_LIMITS)
    except ValueError as exc:
        return [Error(f"RATE_LIMITS: {exc}", id="agentapi.E010")]
    unknown = sorted(set(settings.RATE_LIMIT_ROUTE_CLASSES.values()) - set(ratelimit.CLASSES))
    if unknown:
        return [Error(f"RATE_LIMIT_ROUTE_CLASSES names unknown classes: {', '.join(unknown)}.", id="agentapi.E011")]
    try:
        ratelimit.parse(settings.RATE_LIMIT_AUTH_FAILURES)
    except ValueError as exc:
        return [Error(f"RATE_LIMIT_AUTH_FAILURES: {exc}", id="agentapi.E012")]
    return []
