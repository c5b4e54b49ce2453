"""OAuth write paths: providers, the authorization code flow with PKCE, and the token lifecycle.

The token requests of RFC 6749 are written here rather than taken from authlib: its clients are
built on httpx and requests, and every request here must go through agentapi.http (outbound rules,
the connection pinned to the checked address), answer GitHub's form-encoded bodies, and never send
a refresh token twice; the requests themselves are a few lines each.
"""

import base64
import datetime
import hashlib
import logging
import random
import secrets as random_secrets
import time
from urllib.parse import parse_qsl, urlencode

import httpx2
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from agentapi import http, outbound
from agentapi.crypto import DecryptionError
from agentapi.errors import APIError
from audit.services import audit_record
from oauth.models import AuthorizationFlow, Kind, OAuthProvider, OAuthToken, TokenStatus, hash_state
from tenants import scoping

log = logging.getLogger(__name__)

PRESETS = {
    Kind.GITHUB: {
        "authorization_endpoint": "https://github.com/login/oauth/authorize",
        "token_endpoint": "https://github.com/login/oauth/access_token",
        "scopes": ["read:user"],
    },
    Kind.GOOGLE: {
        "authorization_endpoint": "https://accounts.google.com/o/oauth2/v2/auth",
        "token_endpoint": "https://oauth2.googleapis.com/token",
        "revocation_endpoint": "https://oauth2.googleapis.com/revoke",
        "issuer": "https://accounts.google.com",
        "scopes": ["openid", "email"],
        "extra_authorize_params": {"access_type": "offline", "prompt": "consent"},
    },
}


def _entra(tenant: str) -> dict:
    base = f"https://login.microsoftonline.com/{tenant}/oauth2/v2.0"
    return {
        "authorization_endpoint": f"{base}/authorize",
        "token_endpoint": f"{base}/token",
        "issuer": f"https://login.microsoftonline.com/{tenant}/v2.0",
        "scopes": ["openid", "email", "offline_access"],
    }


def _auth0(domain: str) -> dict:
    return {
        "authorization_endpoint": f"https://{domain}/authorize",
        "token_endpoint": f"https://{domain}/oauth/token",
        "revocation_endpoint": f"https://{domain}/oauth/revoke",
        "issuer": f"https://{domain}/",
        "scopes": ["openid", "email", "offline_access"],
    }


class OAuthFailure(Exception):
    """A provider answered with an error (or not at all). `code` is stable; `grant_revoked` means the
    grant is gone (invalid_grant): the user must connect again."""

    def __init__(self, code: str, message: str, *, grant_revoked=False, transient=False):
        super().__init__(message)
        self.code, self.grant_revoked, self.transient = code, grant_revoked, transient


# -- outbound requests ----------------------------------------------------------------------------


def _invalid(field: str, message: str, code: str = "invalid") -> APIError:
    return APIError(code, message, status=400, details={field: [message]})


def _check(field: str, url: str, *, when_saved: bool = False) -> None:
    """The outbound rules, as a 400 naming the field. When a provider is saved, a name that does
    not resolve (yet) is let through: every request checks again, and that check decides."""
    try:
        outbound.check_url(url)
    except outbound.OutboundURLRefused as exc:
        if when_saved and exc.code == "unresolvable":
            return
        raise APIError(exc.code, f"{field}: {exc}", status=400, details={field: [str(exc)]}) from None


def fetch_json(url: str, *, field: str = "url") -> dict:
    """GET a metadata document (discovery, RFC 8414, RFC 9728). Raises APIError (400/502)."""
    _check(field, url)
    try:
        response = http.request("GET", url, headers={"Accept": "application/json"})
    except httpx2.HTTPError as exc:
        raise APIError("upstream_error", f"Could not fetch {url} ({type(exc).__name__}).", status=502) from None
    if response.status_code != 200:
        raise APIError("upstream_error", f"{url} answered {response.status_code}.", status=502)
    try:
        document = response.json()
    except ValueError:
        raise APIError("upstream_error", f"{url} did not answer JSON.", status=502) from None
    if not isinstance(document, dict):
        raise APIError("upstream_error", f"{url} did not answer a JSON object.", status=502)
    return document


def _token_body(response: httpx2.Response) -> dict:
    """A token endpoint's answer: JSON, or form-encoded (GitHub without Accept: application/json)."""
    content_type = response.headers.get("content-type", "")
    try:
        if "json" in content_type:
            body = response.json()
        else:
            body = dict(parse_qsl(response.text))
    except ValueError:
        body = {}
    return body if isinstance(body, dict) else {}


def _token_request(provider: OAuthProvider, form: dict) -> dict:
    """POST to the token endpoint. Raises OAuthFailure."""
    headers = {"Accept": "application/json"}
    form = {**form, "client_id": provider.client_id}
    try:
        secret = provider.client_secret()
    except DecryptionError:
        raise OAuthFailure("client_secret_unreadable", "The provider's client secret cannot be decrypted.") from None
    auth = None
    if secret and provider.token_endpoint_auth_method == "client_secret_basic":
        auth = (provider.client_id, secret)
    elif secret:
        form["client_secret"] = secret
    try:
        response = http.request("POST", provider.token_endpoint, data=form, headers=headers, auth=auth)
    except outbound.OutboundURLRefused as exc:
        raise OAuthFailure("outbound_url_refused", str(exc)) from None
    except (httpx2.ConnectError, httpx2.ConnectTimeout) as exc:
        # Never connected: the request was not delivered, so it may be sent again.
        raise OAuthFailure(
            "provider_unreachable", f"The provider could not be reached ({type(exc).__name__}).", transient=True
        ) from None
    except httpx2.HTTPError as exc:
        raise OAuthFailure("provider_error", f"The provider's answer was lost ({type(exc).__name__}).") from None
    body = _token_body(response)
    error = body.get("error")
    if response.status_code >= 500 or response.status_code == 429:
        raise OAuthFailure("provider_error", f"The provider answered {response.status_code}.", transient=True)
    if error or response.status_code != 200 or not body.get("access_token"):
        code = str(error or "invalid_response")[:64]
        description = str(body.get("error_description") or "")[:200]
        raise OAuthFailure(
            code,
            f"The provider refused: {code}{': ' + description if description else ''}",
            grant_revoked=code == "invalid_grant",
        )
    return body


def _expiry(body: dict):
    try:
        seconds = int(body.get("expires_in"))
    except (TypeError, ValueError):
        return None  # no expiry given (GitHub's classic tokens): treated as long-lived
    return timezone.now() + datetime.timedelta(seconds=max(0, seconds))


def _scopes(body: dict, fallback: list) -> list:
    scope = body.get("scope")
    if isinstance(scope, str) and scope.strip():
        return sorted(set(scope.replace(",", " ").split()))
    return list(fallback)


# -- providers --------------------------------------------------------------------------------------


def _provider_fields(kind: str, fields: dict) -> dict:
    """Endpoints and defaults for a provider of `kind`, from presets, discovery or explicit fields."""
    fields = dict(fields)
    tenant, domain = fields.pop("tenant", ""), fields.pop("domain", "")
    if kind in PRESETS:
        preset = PRESETS[kind]
    elif kind == Kind.ENTRA:
        if not tenant:
            raise _invalid("tenant", "Microsoft Entra ID needs the directory (tenant) id or name.")
        preset = _entra(tenant)
    elif kind == Kind.AUTH0:
        if not domain or "/" in domain:
            raise _invalid("domain", "Auth0 needs the tenant's domain, such as example.eu.auth0.com.")
        preset = _auth0(domain)
    elif kind == Kind.OIDC:
        if not fields.get("discovery_url"):
            raise _invalid("discovery_url", "An OpenID Connect provider needs its discovery URL.")
        document = fetch_json(fields["discovery_url"], field="discovery_url")
        preset = {
            "authorization_endpoint": document.get("authorization_endpoint", ""),
            "token_endpoint": document.get("token_endpoint", ""),
            "revocation_endpoint": document.get("revocation_endpoint", ""),
            "issuer": document.get("issuer", ""),
            "scopes": ["openid", "email"],
        }
        _require_s256(document)
    else:
        preset = {}
    merged = {**preset, **{k: v for k, v in fields.items() if v not in (None, "", [], {})}}
    for name in ("authorization_endpoint", "token_endpoint"):
        if not merged.get(name):
            raise _invalid(name, f"The provider needs its {name.replace('_', ' ')}.")
    for name in ("authorization_endpoint", "token_endpoint", "revocation_endpoint"):
        if merged.get(name):
            _check(name, merged[name], when_saved=True)
    return merged


def _require_s256(metadata: dict) -> None:
    methods = metadata.get("code_challenge_methods_supported")
    if isinstance(methods, list) and "S256" not in methods:
        raise APIError(
            "pkce_not_supported", "The authorization server does not support PKCE with S256; it is refused.", status=400
        )


@transaction.atomic
def provider_create(
    *, organization, kind: str, name: str, client_id: str, client_secret: str = "", **fields
) -> OAuthProvider:
    if OAuthProvider.objects.filter(organization=organization, name=name).exists():
        raise APIError("conflict", f"A provider named {name!r} already exists.", status=409)
    provider = OAuthProvider(
        organization=organization, kind=kind, name=name, client_id=client_id, **_provider_fields(kind, fields)
    )
    provider.set_client_secret(client_secret)
    provider.save()
    audit_record(
        "oauth.provider.create",
        target=provider,
        organization_id=provider.organization_id,
        details={"name": name, "kind": kind, "platform": organization is None},
    )
    return provider


@transaction.atomic
def provider_update(*, provider: OAuthProvider, client_secret=None, **changes) -> OAuthProvider:
    changed = sorted(name for name, value in changes.items() if getattr(provider, name) != value)
    for name, value in changes.items():
        setattr(provider, name, value)
    for name in ("authorization_endpoint", "token_endpoint", "revocation_endpoint"):
        if name in changes and getattr(provider, name):
            _check(name, getattr(provider, name), when_saved=True)
    if client_secret is not None:
        provider.set_client_secret(client_secret)
        changed.append("client_secret")
    if changed:
        provider.save()
        audit_record(
            "oauth.provider.update",
            target=provider,
            organization_id=provider.organization_id,
            details={"changed": changed},
        )
    return provider


@transaction.atomic
def provider_delete(*, provider: OAuthProvider) -> None:
    audit_record(
        "oauth.provider.delete",
        target=provider,
        organization_id=provider.organization_id,
        details={"name": provider.name},
    )
    provider.delete()


# -- the authorization code flow --------------------------------------------------------------------


def _challenge(verifier: str) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).decode().rstrip("=")


@transaction.atomic
def authorization_start(*, organization, user, provider: OAuthProvider, redirect_uri: str, resource: str = "") -> dict:
    """Begin a flow: a single-use state bound to user, organization and provider, a PKCE verifier
    (S256 always), the exact redirect URI, and the resource indicator for MCP servers."""
    state = random_secrets.token_urlsafe(32)
    verifier = random_secrets.token_urlsafe(64)
    flow = AuthorizationFlow(
        organization=organization,
        state_hash=hash_state(state),
        user=user,
        provider=provider,
        resource=resource or provider.resource,
        redirect_uri=redirect_uri,
        expires_at=timezone.now() + datetime.timedelta(seconds=settings.OAUTH_STATE_TTL_SECONDS),
    )
    flow.set_code_verifier(verifier)
    flow.save()
    params = {
        "response_type": "code",
        "client_id": provider.client_id,
        "redirect_uri": redirect_uri,
        "state": state,
        "code_challenge": _challenge(verifier),
        "code_challenge_method": "S256",
        **({"scope": " ".join(provider.scopes)} if provider.scopes else {}),
        **({"resource": flow.resource} if flow.resource else {}),
        **{str(k): str(v) for k, v in (provider.extra_authorize_params or {}).items()},
    }
    separator = "&" if "?" in provider.authorization_endpoint else "?"
    audit_record(
        "oauth.flow.start", target=provider, organization_id=organization.pk, details={"provider": provider.name}
    )
    return {
        "authorization_url": provider.authorization_endpoint + separator + urlencode(params),
        "state": state,
        "expires_at": flow.expires_at,
    }


class FlowError(Exception):
    """The callback cannot complete: `code` is stable, `status` the page's HTTP status."""

    def __init__(self, code: str, message: str, status: int = 400, provider=None):
        super().__init__(message)
        self.code, self.status, self.provider = code, status, provider


def _find_flow(state: str) -> AuthorizationFlow | None:
    from agentapi.db.scope import DatabaseScope, use_scope

    # Before the organization is known, row-level security lets exactly the row whose state hash
    # the request presents be read (see the migration's policy).
    with use_scope(DatabaseScope(secret_hash=hash_state(state))):
        return (
            # No join to the provider: its row is visible only once the organization is in scope.
            AuthorizationFlow._base_manager.select_related("organization", "user")
            .filter(state_hash=hash_state(state))
            .first()
        )


def authorization_complete(*, state: str, code: str = "", error: str = "") -> OAuthToken:
    """Finish a flow from the provider's redirect. Raises FlowError (nothing stored, audited)."""
    flow = _find_flow(state) if state else None
    if flow is None:
        raise FlowError("unknown_state", "This sign-in link is not known. Start again from the connections page.")
    actor = scoping.Actor(kind="user", user_id=flow.user_id, label=flow.user.email)
    with scoping.organization_scope(flow.organization, actor=actor):
        flow.provider = OAuthProvider.objects.get(pk=flow.provider_id)
        with transaction.atomic():
            claimed = AuthorizationFlow.objects.filter(pk=flow.pk, used_at__isnull=True).update(used_at=timezone.now())
        failure = None
        if not claimed:
            failure = FlowError(
                "state_replayed", "This sign-in link was already used. Start again.", provider=flow.provider
            )
        elif flow.expires_at <= timezone.now():
            failure = FlowError("state_expired", "This sign-in link expired. Start again.", provider=flow.provider)
        elif error:
            failure = FlowError(
                "access_denied" if error == "access_denied" else "provider_error",
                f"The provider did not grant access ({error[:64]}).",
                provider=flow.provider,
            )
        elif not code:
            failure = FlowError("invalid_request", "The provider's answer carried no code.", provider=flow.provider)
        if failure is None:
            try:
                body = _token_request(
                    flow.provider,
                    {
                        "grant_type": "authorization_code",
                        "code": code,
                        "redirect_uri": flow.redirect_uri,
                        "code_verifier": flow.code_verifier(),
                        **({"resource": flow.resource} if flow.resource else {}),
                    },
                )
            except OAuthFailure as exc:
                failure = FlowError(
                    "exchange_failed",
                    f"The code could not be exchanged: {exc}",
                    status=502 if exc.transient else 400,
                    provider=flow.provider,
                )
        if failure is not None:
            with transaction.atomic():
                audit_record(
                    "oauth.token.create",
                    target=flow.provider,
                    outcome="failure",
                    details={"provider": flow.provider.name, "error": failure.code},
                )
            raise failure
        return _store(flow, body)


@transaction.atomic
def _store(flow: AuthorizationFlow, body: dict) -> OAuthToken:
    token, created = OAuthToken.objects.select_for_update().get_or_create(
        organization=flow.organization, user=flow.user, provider=flow.provider
    )
    token.provider = flow.provider  # the caller reads it after the organization's scope has ended
    _forget(token)
    token.set_tokens(access_token=body["access_token"], refresh_token=body.get("refresh_token") or "")
    token.token_type = str(body.get("token_type") or "Bearer")[:32]
    token.scopes = _scopes(body, flow.provider.scopes)
    token.expires_at = _expiry(body)
    token.status, token.last_error, token.refresh_failures = TokenStatus.ACTIVE, "", 0
    token.generation += 0 if created else 1
    token.save()
    audit_record(
        "oauth.token.create",
        target=token,
        details={"provider": flow.provider.name, "scopes": token.scopes, "reconnected": not created},
    )
    return token


# -- the token lifecycle -----------------------------------------------------------------------------


class ConnectionNeeded(APIError):
    """The caller has no usable connection to the provider (409, naming what to renew)."""


def _needs(provider: OAuthProvider, token: OAuthToken | None) -> ConnectionNeeded:
    if token is None:
        return ConnectionNeeded(
            "oauth_connection_required",
            f"Connect your account at {provider.display_name or provider.name} first.",
            status=409,
            details={"provider": provider.pk},
        )
    return ConnectionNeeded(
        "oauth_reauthorization_required",
        f"Your connection to {provider.display_name or provider.name} must be renewed: connect again.",
        status=409,
        details={"provider": provider.pk, "connection": token.pk},
    )


# The hot path of every OAuth MCP call: a user's connection, kept per process as the row (its token
# sealed, never the plaintext) for OAUTH_TOKEN_CACHE_SECONDS and dropped at once when this process
# refreshes, revokes or replaces it. Another process's change is seen when the copy expires; a
# token revoked meanwhile is refused by the provider itself.
_token_cache: dict[tuple, tuple[float, OAuthToken]] = {}


def _cache_key(organization_id, user_id, provider_id) -> tuple:
    return (organization_id, user_id, provider_id)


def _forget(token: OAuthToken) -> None:
    _token_cache.pop(_cache_key(token.organization_id, token.user_id, token.provider_id), None)


def access_token_for(*, user_id: int, provider: OAuthProvider) -> tuple[str, OAuthToken]:
    """A usable access token of the user for the provider, refreshed first when it has expired
    (or expires within a minute). Raises ConnectionNeeded."""
    organization = scoping.current().organization
    key = _cache_key(organization.pk if organization else None, user_id, provider.pk)
    cached = _token_cache.get(key)
    if (
        cached
        and time.monotonic() - cached[0] < settings.OAUTH_TOKEN_CACHE_SECONDS
        and not cached[1].expires_within(60)
    ):
        try:
            return cached[1].access_token(), cached[1]
        except DecryptionError:
            _token_cache.pop(key, None)
    token = _find_token(user_id=user_id, provider=provider)
    if organization is not None and token.status == TokenStatus.ACTIVE:
        _token_cache[key] = (time.monotonic(), token)
    try:
        return token.access_token(), token
    except DecryptionError:
        raise APIError(
            "credential_unreadable", "The stored connection cannot be decrypted; connect again.", status=409
        ) from None


def _find_token(*, user_id: int, provider: OAuthProvider) -> OAuthToken:
    token = OAuthToken.objects.filter(user_id=user_id, provider=provider).first()
    if token is None or token.status != TokenStatus.ACTIVE:
        raise _needs(provider, token)
    if token.expires_within(60):
        token = refresh(token=token, reason="on_demand")
        if token.status != TokenStatus.ACTIVE:
            raise _needs(provider, token)
    return token


def renew_after_refusal(*, user_id: int, provider: OAuthProvider) -> OAuthToken:
    """The resource server refused the user's access token: refresh it now. Raises ConnectionNeeded
    when the connection cannot be renewed (no refresh token, invalid_grant)."""
    token = OAuthToken.objects.filter(user_id=user_id, provider=provider).first()
    if token is None or token.status != TokenStatus.ACTIVE:
        raise _needs(provider, token)
    token = refresh(token=token, reason="refused_by_server", force=True)
    if token.status != TokenStatus.ACTIVE:
        raise _needs(provider, token)
    return token


def needs_reauthorization(token: OAuthToken, why: str) -> ConnectionNeeded:
    """Mark the connection for re-authorization (audited) and return the 409 to raise."""
    with transaction.atomic():
        current = _mark_needs_reauth(OAuthToken.objects.select_for_update().get(pk=token.pk), "token_refused", why)
    return _needs(current.provider, current)


def refresh(*, token: OAuthToken, reason: str, force: bool = False) -> OAuthToken:
    """Refresh a token set, once, whoever else is trying: the row is locked for the exchange, and a
    caller that waited finds the winner's new token and sends nothing. A refresh token is never
    sent twice: the new one (when rotated) is stored in the same transaction as the exchange.
    Transient failures that provably never reached the provider are retried with backoff."""
    generation = token.generation
    _forget(token)
    with transaction.atomic():
        current = OAuthToken.objects.select_for_update().select_related("provider").get(pk=token.pk)
        if current.generation != generation and not force:
            return current  # someone refreshed while we waited for the lock
        if current.status != TokenStatus.ACTIVE:
            return current
        if not force and not current.expires_within(60):
            return current
        refresh_token = current.refresh_token()
        if not refresh_token:
            return _mark_needs_reauth(current, "no_refresh_token", "The provider gave no refresh token; connect again.")
        for attempt in range(settings.OAUTH_REFRESH_ATTEMPTS):
            try:
                body = _token_request(current.provider, {"grant_type": "refresh_token", "refresh_token": refresh_token})
                break
            except OAuthFailure as exc:
                if exc.grant_revoked:
                    return _mark_needs_reauth(current, exc.code, str(exc))
                if not exc.transient or attempt == settings.OAUTH_REFRESH_ATTEMPTS - 1:
                    current.refresh_failures += 1
                    current.last_error = f"{exc.code}: {exc}"[:500]
                    current.save(update_fields=["refresh_failures", "last_error", "updated_at"])
                    audit_record(
                        "oauth.token.refresh",
                        target=current,
                        outcome="failure",
                        details={"error": exc.code, "reason": reason},
                    )
                    return current
                time.sleep(random.uniform(0, min(2.0, 0.2 * 2**attempt)))
        current.set_tokens(access_token=body["access_token"], refresh_token=body.get("refresh_token"))
        current.expires_at = _expiry(body)
        current.scopes = _scopes(body, current.scopes)
        current.refreshed_at, current.refresh_failures, current.last_error = timezone.now(), 0, ""
        current.generation += 1
        current.save()
        audit_record(
            "oauth.token.refresh",
            target=current,
            details={"reason": reason, "rotated": bool(body.get("refresh_token"))},
        )
        return current


def _mark_needs_reauth(token: OAuthToken, code: str, message: str) -> OAuthToken:
    _forget(token)
    token.status, token.last_error = TokenStatus.NEEDS_REAUTH, f"{code}: {message}"[:500]
    token.generation += 1
    token.save(update_fields=["status", "last_error", "generation", "updated_at"])
    audit_record("oauth.token.needs_reauth", target=token, outcome="failure", details={"error": code})
    return token


def revoke(*, token: OAuthToken) -> dict:
    """Revoke at the provider (RFC 7009) where it can, then locally: the token set is erased."""
    provider = token.provider
    at_provider = "not_supported"
    if provider.revocation_endpoint and token.status != TokenStatus.REVOKED:
        at_provider = "revoked"
        for value, hint in ((token.refresh_token(), "refresh_token"), (token.access_token(), "access_token")):
            if not value:
                continue
            try:
                form = {"token": value, "token_type_hint": hint, "client_id": provider.client_id}
                secret = provider.client_secret()
                if secret:
                    form["client_secret"] = secret
                response = http.request("POST", provider.revocation_endpoint, data=form)
                if response.status_code not in (200, 204):
                    at_provider = f"failed ({response.status_code})"
            except (httpx2.HTTPError, outbound.OutboundURLRefused, DecryptionError) as exc:
                at_provider = f"failed ({type(exc).__name__})"
    _forget(token)
    with transaction.atomic():
        token.access_token_sealed = token.refresh_token_sealed = ""
        token.status, token.generation = TokenStatus.REVOKED, token.generation + 1
        token.save(update_fields=["access_token_sealed", "refresh_token_sealed", "status", "generation", "updated_at"])
        audit_record(
            "oauth.token.revoke", target=token, details={"provider": provider.name, "at_provider": at_provider}
        )
    return {"revoked": True, "at_provider": at_provider}


def refresh_expiring(window_seconds: int | None = None) -> dict:
    """The scheduled job: refresh every active token expiring within the window, organization by
    organization. Returns counts."""
    from tenants.models import Organization

    window = settings.OAUTH_REFRESH_WINDOW_SECONDS if window_seconds is None else window_seconds
    counts = {"refreshed": 0, "needs_reauth": 0, "failed": 0}
    deadline = timezone.now() + datetime.timedelta(seconds=window)
    for organization in Organization.objects.filter(is_active=True):
        with scoping.organization_scope(organization):
            due = OAuthToken.objects.filter(status=TokenStatus.ACTIVE, expires_at__lte=deadline).exclude(
                refresh_token_sealed=""
            )
            for token in due.select_related("provider"):
                before = token.generation
                result = refresh(token=token, reason="scheduled", force=True)
                if result.status == TokenStatus.NEEDS_REAUTH:
                    counts["needs_reauth"] += 1
                elif result.generation != before and result.refreshed_at:
                    counts["refreshed"] += 1
                else:
                    counts["failed"] += 1
    return counts
