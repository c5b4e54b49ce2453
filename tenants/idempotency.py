"""`Idempotency-Key` on the POSTs that create (draft-ietf-httpapi-idempotency-key-header).

A client that cannot tell whether its create request landed (a timeout, a connection reset, a 503
from a proxy) sends it again with the same key; the platform answers what the first request
answered and changes nothing:

    POST /api/v1/sessions/  Idempotency-Key: 8e0d...  ->  201 {...}
    POST /api/v1/sessions/  Idempotency-Key: 8e0d...  ->  201 {...the same...}, Idempotent-Replayed: true

- A key belongs to one user in one organization (tenants.models.IdempotencyRecord, under
  row-level security like every tenant row) and lives IDEMPOTENCY_KEY_TTL_SECONDS.
- The record is claimed in the same transaction as the change: on the management plane the view
  runs inside it; on the data plane (a message, sessions_app.dataplane) the claim is part of the
  statement that stores the message. Two requests with one key at once: the second waits on the
  first's row and then answers its result. A request that fails (any 4xx or 5xx) rolls its claim
  back with everything else, so the retry is made for real.
- The same key with a different request (method, path or body) is 422 `idempotency_key_reused`;
  a key still being answered is 409 `idempotency_key_in_use` with Retry-After.
- The answer is stored sealed under the organization's data key (tenants.secrets): it may hold a
  new API key or session token, which the platform keeps nowhere else in clear.

Why not a library: the Django packages for this (django-idempotency-key and the like) keep the
response in the cache, unencrypted, and outside the transaction that makes the change, so a crash
between the two, or Redis restarting, makes a retry create twice.
"""

import functools
import hashlib
import json
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone
from django.utils.module_loading import import_string
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework.response import Response
from rest_framework.utils.encoders import JSONEncoder

from agentapi.errors import APIError
from tenants import secrets
from tenants.models import IdempotencyRecord

HEADER = "Idempotency-Key"
REPLAYED = "Idempotent-Replayed"
MAX_KEY_LENGTH = 255

# Rebuilding an answer whose record was claimed but not yet completed (the data plane stores a
# message in one round trip and its answer in the next), registered by the apps:
# "app.model" -> dotted path of fn(pk) -> (status, body), called in the caller's scope.
REBUILDERS: dict[str, str] = {}


def key_of(headers) -> str | None:
    """The request's key, or None when it has none; a malformed key is a 400. The draft makes the
    value a Structured Field string ("..."); a bare token is accepted too, as most clients send it."""
    value = headers.get(HEADER, headers.get(HEADER.lower()))
    if value is None:
        return None
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] == '"':
        value = value[1:-1]
    if not 0 < len(value) <= MAX_KEY_LENGTH or not all(" " <= char <= "~" for char in value):
        raise APIError(
            "idempotency_key_invalid",
            f"Idempotency-Key must be 1 to {MAX_KEY_LENGTH} printable ASCII characters.",
            details={"header": HEADER},
        )
    return value


def fingerprint(method: str, path: str, data) -> str:
    """What makes two requests the same request: method, path and the parsed body."""
    body = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False, cls=JSONEncoder)
    return hashlib.sha256(f"{method}\n{path}\n{body}".encode()).hexdigest()


def expired_before():
    return timezone.now() - timedelta(seconds=settings.IDEMPOTENCY_KEY_TTL_SECONDS)


def seal_response(record_id: int, organization_id: int, body) -> str:
    context = IdempotencyRecord(pk=record_id).context()
    return secrets.seal(organization_id, json.dumps(body, cls=JSONEncoder), context=context)


def answer(record: IdempotencyRecord, fingerprint_: str) -> tuple[int, object]:
    """What a request whose key was already claimed gets: (status, body) of the first answer, or
    the error saying why it cannot have one."""
    if record.fingerprint != fingerprint_:
        raise APIError(
            "idempotency_key_reused",
            "This Idempotency-Key was used with a different request; use a new key for a new request.",
            status=422,
        )
    if record.status is not None:
        body = secrets.unseal(record.organization_id, record.response, context=record.context())
        return record.status, json.loads(body)
    model, _, pk = record.resource.partition(":")
    if model in REBUILDERS:
        return import_string(REBUILDERS[model])(pk)
    raise APIError(
        "idempotency_key_in_use",
        "A request with this Idempotency-Key is still being answered; retry shortly.",
        status=409,
        retry_after=1,
    )


def replayed(status: int, body) -> Response:
    response = Response(body, status=status)
    response[REPLAYED] = "true"
    return response


def _claim(principal, key: str, method: str, path: str, fingerprint_: str) -> tuple[IdempotencyRecord, bool]:
    """The key's record, and whether this request claimed it (new, or its old record expired).
    A concurrent first request's uncommitted claim makes this wait for it (the unique index)."""
    identity = {"organization": principal.organization, "user_id": principal.membership.user_id, "key": key}
    fields = {"method": method, "path": path[:500], "fingerprint": fingerprint_}
    record, created = IdempotencyRecord.objects.get_or_create(**identity, defaults=fields)
    if created:
        return record, True
    if record.created_at < expired_before():
        fields.update(status=None, response="", resource="", created_at=timezone.now())
        if IdempotencyRecord.objects.filter(pk=record.pk, created_at=record.created_at).update(**fields):
            for name, value in fields.items():
                setattr(record, name, value)
            return record, True
        record.refresh_from_db()
    return record, False


PARAMETER = OpenApiParameter(
    HEADER,
    str,
    OpenApiParameter.HEADER,
    description="Makes this create safe to retry: a request sent again with the same key (by the same user, within "
    "24 hours) answers the first one's result, with `Idempotent-Replayed: true`, and changes nothing. "
    "The same key with another request is `422 idempotency_key_reused`.",
)


def idempotent(view):
    """A TenantViewSet's create action, made idempotent for requests that carry the header."""

    @extend_schema(parameters=[PARAMETER])
    @functools.wraps(view)
    def create(self, request, *args, **kwargs):
        key = key_of(request.headers) if request.method == "POST" else None
        if key is None:
            return view(self, request, *args, **kwargs)
        fingerprint_ = fingerprint(request.method, request.path, request.data)
        with transaction.atomic():
            record, claimed = _claim(self.principal, key, request.method, request.path, fingerprint_)
            if not claimed:
                return replayed(*answer(record, fingerprint_))
            response = view(self, request, *args, **kwargs)
            if not 200 <= response.status_code < 300:
                transaction.set_rollback(True)
                return response
            record.status = response.status_code
            record.response = seal_response(record.pk, record.organization_id, response.data)
            record.save(update_fields=["status", "response"])
            return response

    return create


def purge_expired() -> int:
    """Delete every organization's expired records (the beat task's work); how many went."""
    from tenants import scoping

    # Not recorded as a crossing (as the audit retention job): a scheduled platform job that
    # deletes only expired rows, every hour.
    with scoping.dangerously_all_organizations(reason="idempotency records purge", record=False):
        deleted, _ = IdempotencyRecord.objects.filter(created_at__lt=expired_before()).delete()
    return deleted
