"""API authentication: API keys, JWTs from the configured identity provider, Django sessions.

Each authenticator answers request.user (the User) and request.auth (a Principal: organization,
membership, actor). The organization itself is put in scope by the API base view, not here.
Failures are 401 with a stable code and a WWW-Authenticate header (RFC 6750), and are reported to
tenants.security so that the audit log records them.
"""

import dataclasses
import functools
import weakref
from dataclasses import dataclass
from datetime import timedelta

import jwt
from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, connections
from django.utils import timezone
from rest_framework import authentication, exceptions

from agentapi.db import aio
from agentapi.db.scope import DatabaseScope, use_scope
from tenants import scoping, security
from tenants.jwks import JWKSUnavailable, UnknownSigningKey, jwks_cache
from tenants.models import API_KEY_PREFIX, APIKey, Membership, Organization, User, hash_api_key, memberships_of

# Credentials belong in the Authorization header; in a URL they end up in logs and Referers.
QUERY_CREDENTIAL_NAMES = ("access_token", "api_key", "apikey", "key", "token", "jwt", "auth")


@dataclass(frozen=True)
class Principal:
    organization: Organization
    membership: Membership
    method: str  # "api_key", "jwt", "session", or a SecretCredential's method
    actor: scoping.Actor
    api_key: APIKey | None = None
    subject: str | None = None  # what a SecretCredential is bound to (its row's id)

    @property
    def role(self) -> str:
        return self.membership.role


class Unauthenticated(exceptions.AuthenticationFailed):
    def __init__(self, code: str, message: str, *, credential: str, **facts):
        super().__init__(message)
        self.error_code = code
        security.report("authentication_failed", reason=code, credential=credential, **facts)


class NoOrganization(exceptions.PermissionDenied):
    error_code = "no_organization"
    default_detail = "You are not a member of any organization."


def _bearer(request) -> str | None:
    return _parse_bearer(authentication.get_authorization_header(request))


def _parse_bearer(header: bytes) -> str | None:
    parts = header.split()
    if not parts or parts[0].lower() != b"bearer":
        return None
    if len(parts) != 2:
        raise Unauthenticated("malformed_credentials", "Malformed Authorization header.", credential="header")
    try:
        return parts[1].decode("ascii")
    except UnicodeDecodeError:
        raise Unauthenticated("malformed_credentials", "Malformed credentials.", credential="header") from None


def _refuse_query_credentials(request) -> None:
    if any(name in request.query_params for name in QUERY_CREDENTIAL_NAMES):
        raise Unauthenticated(
            "credentials_in_query",
            "Credentials are accepted only in the Authorization header, never in the URL.",
            credential="query",
        )


def _principal(membership: Membership, method: str, api_key: APIKey | None = None) -> Principal:
    user = membership.user
    if not user.is_active:
        raise Unauthenticated("user_inactive", "This user is deactivated.", credential=method)
    organization = membership.organization
    if not organization.is_active:
        raise Unauthenticated(
            "organization_inactive",
            "This organization is deactivated.",
            credential=method,
            organization_id=organization.pk,
        )
    actor = scoping.Actor(
        kind="api_key" if api_key else "user",
        user_id=user.pk,
        label=user.email,
        api_key_id=api_key.pk if api_key else None,
        api_key_prefix=api_key.prefix if api_key else "",
    )
    return Principal(organization, membership, method, actor, api_key)


# Every API request runs this lookup, so it is written once as SQL (prepared by the connection
# after its first uses) rather than compiled by the ORM each time, which measured at a third of a
# web worker's CPU for a simple list. The instances are built with Model.from_db, so any field not
# loaded here is deferred and loads on access, as it would from the ORM.
_LOADED = {
    APIKey: {"id", "organization_id", "membership_id", "name", "prefix", "expires_at", "revoked_at", "last_used_at"},
    Membership: {"id", "organization_id", "user_id", "role"},
    User: {"id", "email", "name", "is_active", "is_staff", "is_superuser"},
    Organization: {"id", "slug", "name", "is_active", "settings"},
}


@functools.cache
def _fields(model) -> tuple:
    """The loaded fields in the model's own order, which is the order Model.from_db expects."""
    return tuple(field for field in model._meta.concrete_fields if field.attname in _LOADED[model])


@functools.cache
def _attnames(model) -> list:
    return [field.attname for field in _fields(model)]


@functools.cache
def _key_lookup_sql() -> str:
    def columns(alias, model):
        return [f'{alias}."{field.column}"' for field in _fields(model)]

    select = ", ".join(
        columns("k", APIKey) + columns("m", Membership) + columns("u", User) + columns("o", Organization)
    )
    # Only our own table and column names are interpolated; the hash is a bound parameter.
    return (
        f'SELECT {select} FROM "{APIKey._meta.db_table}" k '  # noqa: S608
        f'JOIN "{Membership._meta.db_table}" m ON m.id = k.membership_id '
        f'JOIN "{User._meta.db_table}" u ON u.id = m.user_id '
        f'JOIN "{Organization._meta.db_table}" o ON o.id = k.organization_id '
        "WHERE k.hashed_key = %s"
    )


# A connection's converters for the loaded fields, found once per connection (they depend on its
# backend) instead of once per value on every request.
_converters_by_connection = weakref.WeakKeyDictionary()


def _converters(db) -> dict:
    """Per model, each loaded field's converters: what the ORM's compiler applies to a column's
    value (the backend's, SQLite's datetimes for one, then the field's own, JSON for one)."""
    try:
        return _converters_by_connection[db]
    except KeyError:
        pass
    found = {}
    for model in _LOADED:
        found[model] = []
        for field in _fields(model):
            col = field.get_col(model._meta.db_table)
            found[model].append((col, tuple(db.ops.get_db_converters(col) + col.get_db_converters(db))))
    _converters_by_connection[db] = found
    return found


def _api_key_from_row(row, db=None) -> APIKey:
    """The key, its membership, user and organization from one row of _key_lookup_sql. With `db`
    (a Django connection) each value goes through the converters the ORM would apply; rows read
    by the data plane's psycopg connection (agentapi.db.aio) arrive as Python values already."""
    api_key, membership, user, organization = _build(row, (APIKey, Membership, User, Organization), db)
    membership.user, membership.organization = user, organization
    api_key.membership, api_key.organization = membership, organization
    return api_key


def _build(row, models, db=None) -> list:
    """Instances of `models` from one row of their loaded columns, in that order."""
    converters = _converters(db) if db is not None else None
    values = iter(row)

    def build(model):
        loaded = []
        for col, field_converters in converters[model] if converters else [(None, ())] * len(_fields(model)):
            value = next(values)
            for converter in field_converters:
                value = converter(value, col, db)
            loaded.append(value)
        return model.from_db(DEFAULT_DB_ALIAS, _attnames(model), loaded)

    return [build(model) for model in models]


def _find_api_key(hashed: str) -> APIKey | None:
    db = connections[DEFAULT_DB_ALIAS]
    with db.cursor() as cursor:
        cursor.execute(_key_lookup_sql(), [hashed])
        row = cursor.fetchone()
    return None if row is None else _api_key_from_row(row, db)


def _check_api_key(api_key: APIKey | None, now) -> Principal:
    """The principal of a key found by its hash, or Unauthenticated saying why it is refused."""
    if api_key is None:
        raise Unauthenticated("invalid_api_key", "Invalid API key.", credential="api_key")
    facts = {"credential": "api_key", "organization_id": api_key.organization_id, "prefix": api_key.prefix}
    if api_key.revoked_at:
        raise Unauthenticated("api_key_revoked", "This API key has been revoked.", **facts)
    if api_key.is_expired(now):
        raise Unauthenticated("api_key_expired", "This API key has expired.", **facts)
    return _principal(api_key.membership, "api_key", api_key)


def _touch_due(api_key: APIKey, now) -> bool:
    """Whether the key's last use is due to be written (at most once per
    API_KEY_LAST_USED_INTERVAL_SECONDS, never on every request)."""
    interval = timedelta(seconds=settings.API_KEY_LAST_USED_INTERVAL_SECONDS)
    return api_key.last_used_at is None or now - api_key.last_used_at >= interval


def api_key_authenticate(key: str) -> Principal:
    """Find the key by its hash in one query and check it is usable. Raises Unauthenticated."""
    hashed = hash_api_key(key)
    # The one lookup that precedes knowing the organization: no tenant filter, and the row-level
    # security policy admits exactly the row whose hash we hold.
    with use_scope(DatabaseScope(api_key_hash=hashed)):
        now = timezone.now()
        principal = _check_api_key(_find_api_key(hashed), now)
        if _touch_due(principal.api_key, now):
            APIKey._base_manager.filter(pk=principal.api_key.pk).update(last_used_at=now)
            principal.api_key.last_used_at = now
    return principal


@functools.cache
def _key_lookup_statement() -> aio.Statement:
    return aio.Statement("agentapi_api_key", _key_lookup_sql())


@functools.cache
def _scope_from_key_statement() -> aio.Statement:
    return aio.Statement("agentapi_scope_from_key", _scope_from_key_sql())


def _scope_from_key_sql() -> str:
    # The organization and user of the key whose hash is bound, as the scope of what follows in
    # the same transaction; no row (an unknown key) leaves nothing in scope.
    return (
        "SELECT set_config('app.organization_ids', k.organization_id::text, true), "  # noqa: S608
        "set_config('app.user_id', m.user_id::text, true), set_config('app.api_key_hash', '', true) "
        f'FROM "{APIKey._meta.db_table}" k JOIN "{Membership._meta.db_table}" m ON m.id = k.membership_id '
        "WHERE k.hashed_key = %s"
    )


async def api_key_authenticate_async(key: str, *, also=()) -> tuple[Principal, list]:
    """api_key_authenticate for the data plane: the same statement and checks, through
    agentapi.db.aio, in one round trip (a second, rarely, records the key's last use).

    `also` are statements run in that same round trip, scoped to the key's own organization and
    user (`current_setting('app.organization_ids')`, `current_setting('app.user_id')`): the
    request's first read travels with its authentication. Their rows are returned only when the
    key passed every check; a refused key's are dropped unseen.
    """
    hashed = hash_api_key(key)
    scope = DatabaseScope(api_key_hash=hashed)
    statements = [(_key_lookup_statement(), [hashed])]
    if also:
        statements += [(_scope_from_key_statement(), [hashed]), *also]
    results = await aio.run(scope, statements)
    rows = results[0]
    now = timezone.now()
    principal = _check_api_key(_api_key_from_row(rows[0]) if rows else None, now)
    await touch_api_key_async(principal, now, scope)
    return principal, results[2:]


async def touch_api_key_async(principal: Principal, now, scope: DatabaseScope | None = None) -> None:
    """Record the key's last use when it is due (_touch_due): a second round trip, rarely."""
    if _touch_due(principal.api_key, now):
        update = f'UPDATE "{APIKey._meta.db_table}" SET last_used_at = %s WHERE id = %s'  # noqa: S608
        await aio.run(scope or principal_scope(principal), [(update, [now, principal.api_key.pk])])
        principal.api_key.last_used_at = now


def principal_scope(principal: Principal) -> DatabaseScope:
    return DatabaseScope(organization_ids=(principal.organization.pk,), user_id=principal.membership.user_id)


@dataclass(frozen=True)
class SecretCredential:
    """A bearer credential an app above this one issues (a session's token), accepted where that
    app asks for it. `scope_statement` takes the secret's hash and, for the one row it admits
    (row-level security lets exactly that row be read, through `app.secret_hash`), sets
    `app.organization_ids` and `app.user_id` and answers the row's id (the principal's `subject`)."""

    prefix: str
    method: str
    hash: object  # callable: the secret -> its stored hash
    scope_statement: aio.Statement


@functools.cache
def _membership_in_scope_statement() -> aio.Statement:
    def columns(alias, model):
        return [f'{alias}."{field.column}"' for field in _fields(model)]

    select = ", ".join(columns("m", Membership) + columns("u", User) + columns("o", Organization))
    in_scope = "NULLIF(current_setting('app.{}', true), '')::bigint"
    return aio.Statement(
        "agentapi_membership_in_scope",
        f'SELECT {select} FROM "{Membership._meta.db_table}" m '  # noqa: S608
        f'JOIN "{User._meta.db_table}" u ON u.id = m.user_id '
        f'JOIN "{Organization._meta.db_table}" o ON o.id = m.organization_id '
        f"WHERE m.organization_id = {in_scope.format('organization_ids')} AND m.user_id = {in_scope.format('user_id')}",
    )


async def secret_authenticate_async(credential: SecretCredential, secret: str, *, also=()) -> tuple[Principal, list]:
    """A SecretCredential's principal (the member its row names) and `also`, in one round trip."""
    hashed = credential.hash(secret)
    statements = [(credential.scope_statement, [hashed]), (_membership_in_scope_statement(), []), *also]
    results = await aio.run(DatabaseScope(secret_hash=hashed), statements)
    if not results[0] or not results[1]:
        raise Unauthenticated("invalid_token", "Invalid or ended token.", credential=credential.method)
    membership, user, organization = _build(results[1][0], (Membership, User, Organization))
    membership.user, membership.organization = user, organization
    principal = _principal(membership, credential.method)
    return dataclasses.replace(principal, subject=str(results[0][0][-1])), results[2:]


async def bearer_authenticate_async(
    authorization: str, query: dict, *, also=(), secrets: tuple[SecretCredential, ...] = ()
) -> tuple[Principal, list]:
    """The data plane's authentication: the management API's rules for API keys and JWTs (no
    Django sessions: agents present a bearer credential), and `also` run in the principal's
    scope (see api_key_authenticate_async); where a route accepts them, `secrets` too.
    Raises Unauthenticated/NotAuthenticated."""
    if any(name in query for name in QUERY_CREDENTIAL_NAMES):
        raise Unauthenticated(
            "credentials_in_query",
            "Credentials are accepted only in the Authorization header, never in the URL.",
            credential="query",
        )
    token = _parse_bearer(authorization.encode("latin-1"))
    if token is None:
        raise exceptions.NotAuthenticated()
    if token.startswith(API_KEY_PREFIX):
        return await api_key_authenticate_async(token, also=also)
    for credential in secrets:
        if token.startswith(credential.prefix):
            return await secret_authenticate_async(credential, token, also=also)
    # A JWT costs a signature check and, when its key id is new, a JWKS fetch; its membership is
    # found by the ORM. Both run on a worker thread, as the management plane runs them.
    from agentapi.workers import in_worker

    principal = await in_worker(jwt_authenticate)(token)
    return principal, (await aio.run(principal_scope(principal), list(also)) if also else [])


class BearerAuthentication(authentication.BaseAuthentication):
    www_authenticate_realm = "agentapi"

    def authenticate_header(self, request):
        return f'Bearer realm="{self.www_authenticate_realm}"'


class APIKeyAuthentication(BearerAuthentication):
    def authenticate(self, request):
        _refuse_query_credentials(request)
        token = _bearer(request)
        if token is None or not token.startswith(API_KEY_PREFIX):
            return None
        principal = api_key_authenticate(token)
        return principal.membership.user, principal


def _looks_like_jwt(token: str) -> bool:
    return token.count(".") == 2


class JWTAuthentication(BearerAuthentication):
    """JWTs signed by the identity provider at JWT_JWKS_URL, naming a user and an organization."""

    def authenticate(self, request):
        token = _bearer(request)
        if token is None or token.startswith(API_KEY_PREFIX):
            return None
        principal = jwt_authenticate(token)
        return principal.membership.user, principal

    def _verify(self, token: str) -> dict:
        try:
            header = jwt.get_unverified_header(token)
            if header.get("alg") not in settings.JWT_ALGORITHMS:
                raise Unauthenticated("invalid_token", "Token algorithm not accepted.", credential="jwt")
            key = jwks_cache().signing_key(header.get("kid"))
            return jwt.decode(
                token,
                key=key,
                algorithms=settings.JWT_ALGORITHMS,
                audience=settings.JWT_AUDIENCE or None,
                issuer=settings.JWT_ISSUER or None,
                leeway=settings.JWT_LEEWAY_SECONDS,
                options={"require": ["exp"], "verify_aud": bool(settings.JWT_AUDIENCE)},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthenticated("token_expired", "The token has expired.", credential="jwt") from None
        except jwt.InvalidIssuerError:
            raise Unauthenticated("invalid_issuer", "The token's issuer is not accepted.", credential="jwt") from None
        except jwt.InvalidAudienceError:
            raise Unauthenticated(
                "invalid_audience", "The token's audience is not accepted.", credential="jwt"
            ) from None
        except UnknownSigningKey:
            raise Unauthenticated(
                "unknown_signing_key", "The token's signing key is unknown.", credential="jwt"
            ) from None
        except JWKSUnavailable:
            raise Unauthenticated(
                "jwks_unavailable", "The identity provider's keys are unavailable.", credential="jwt"
            ) from None
        except jwt.PyJWTError:
            raise Unauthenticated("invalid_token", "Invalid token.", credential="jwt") from None

    def _membership_principal(self, claims: dict) -> Principal:
        email = claims.get(settings.JWT_USER_CLAIM)
        slug = claims.get(settings.JWT_ORGANIZATION_CLAIM)
        if not isinstance(email, str) or not isinstance(slug, str):
            raise Unauthenticated("invalid_claims", "The token lacks its user or organization claim.", credential="jwt")
        user = User.objects.filter(email=email.lower()).first()
        found = memberships_of(user, organization__slug=slug) if user is not None else []
        membership = found[0] if found else None
        if membership is None:
            raise Unauthenticated(
                "unknown_member", "The token's user is not a member of that organization.", credential="jwt"
            )
        return _principal(membership, "jwt")


def jwt_authenticate(token: str) -> Principal:
    """A JWT from the identity provider at JWT_JWKS_URL, naming a user and an organization."""
    if not settings.JWT_JWKS_URL or not _looks_like_jwt(token):
        raise Unauthenticated("invalid_token", "Invalid bearer token.", credential="jwt")
    authenticator = JWTAuthentication()
    return authenticator._membership_principal(authenticator._verify(token))


class SessionAuthentication(authentication.SessionAuthentication):
    """A signed-in user (admin, user pages) acting in the organization chosen in their session."""

    def authenticate(self, request):
        result = super().authenticate(request)
        if result is None:
            return None
        user = result[0]
        membership = session_membership(request._request, user)
        if membership is None:
            raise NoOrganization()
        return user, _principal(membership, "session")


SESSION_ORGANIZATION_KEY = "organization_id"


def session_membership(request, user) -> Membership | None:
    """The membership of the organization chosen in the session, or the user's first one."""
    memberships = memberships_of(user)
    chosen = request.session.get(SESSION_ORGANIZATION_KEY)
    return next((m for m in memberships if m.organization_id == chosen), memberships[0] if memberships else None)
