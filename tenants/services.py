"""Write paths for organizations, users, memberships and API keys.

Each records its audit event in the same transaction as the change (audit is above tenants in the
import order, so it is reached through the recorder registered at start-up: `_record`).
"""

from django.db import IntegrityError, transaction
from django.utils import timezone

from agentapi.errors import APIError
from tenants import scoping
from tenants.models import (
    APIKey,
    Membership,
    Organization,
    Role,
    User,
    generate_api_key,
    hash_api_key,
)

_recorders: list = []


def on_change(recorder) -> None:
    """Register the audit recorder: callable(action, *, target, details, organization)."""
    if recorder not in _recorders:
        _recorders.append(recorder)


def record_change(action: str, *, target, details: dict | None = None, organization=None) -> None:
    """Record a change in the audit log, in the caller's transaction (for writes made elsewhere,
    such as the admin's own forms)."""
    for recorder in _recorders:
        recorder(action, target=target, details=details or {}, organization=organization)


@transaction.atomic
def organization_create(*, slug: str, name: str, settings: dict | None = None, is_active: bool = True) -> Organization:
    if Organization.objects.filter(slug=slug).exists():
        raise APIError("conflict", f"An organization with slug '{slug}' already exists.", status=409)
    organization = Organization.objects.create(slug=slug, name=name, settings=settings or {}, is_active=is_active)
    with scoping.organization_scope(organization):
        record_change("tenants.organization.create", target=organization, details={"slug": slug, "name": name})
    return organization


@transaction.atomic
def organization_update(*, organization: Organization, **fields) -> Organization:
    changed = {name: value for name, value in fields.items() if getattr(organization, name) != value}
    for name, value in changed.items():
        setattr(organization, name, value)
    if changed:
        organization.save(update_fields=list(changed))
        with scoping.organization_scope(organization):
            record_change("tenants.organization.update", target=organization, details={"changed": sorted(changed)})
    return organization


def user_get_or_create(*, email: str, name: str = "", password: str | None = None) -> tuple[User, bool]:
    email = User.objects.normalize_email(email).lower()
    user = User.objects.filter(email=email).first()
    if user is not None:
        return user, False
    return User.objects.create_user(email=email, password=password, name=name), True


@transaction.atomic
def user_delete(*, user: User) -> None:
    """Delete a person and, with them, their memberships and keys in every organization.

    Their audit history stays, under the e-mail snapshot it was recorded with. The cascade must see
    every organization's rows, so this crosses organizations (recorded) on purpose.
    """
    with scoping.dangerously_all_organizations(reason=f"delete user {user.pk}"):
        for membership in Membership.objects.filter(user=user).select_related("organization"):
            with scoping.organization_scope(membership.organization):
                record_change(
                    "tenants.membership.delete", target=membership, details={"user_id": user.pk, "user_deleted": True}
                )
        user.delete()


@transaction.atomic
def membership_create(
    *, organization: Organization, email: str, role: str, name: str = "", acting_role: str = Role.OWNER
) -> Membership:
    membership_check_change(acting_role=acting_role, membership=None, new_role=role)
    if Membership.objects.count() >= organization.limit("max_members"):
        raise APIError("limit_reached", "This organization has reached its member limit.", status=409)
    user, created = user_get_or_create(email=email, name=name)
    if Membership.objects.filter(user=user).exists():
        raise APIError("conflict", "This user is already a member.", status=409)
    membership = Membership.objects.create(organization=organization, user=user, role=role)
    record_change(
        "tenants.membership.create",
        target=membership,
        details={"user_id": user.pk, "role": role, "user_created": created},
    )
    return membership


def _owners_left_after(membership: Membership) -> int:
    return Membership.objects.filter(role=Role.OWNER).exclude(pk=membership.pk).count()


def membership_check_change(*, acting_role: str, membership: Membership | None, new_role: str | None) -> None:
    """The rules every path (API, admin) applies before it adds (membership None), changes the role
    of (new_role) or removes (new_role None) a membership. Raises APIError.

    Only an owner makes, changes or removes an owner; an organization keeps at least one owner.
    """
    touches_owner = new_role == Role.OWNER or (membership is not None and membership.role == Role.OWNER)
    if touches_owner and acting_role != Role.OWNER:
        raise APIError("permission_denied", "Only an owner may change an owner or make one.", status=403)
    losing_owner = membership is not None and membership.role == Role.OWNER and new_role != Role.OWNER
    if losing_owner and _owners_left_after(membership) == 0:
        raise APIError("last_owner", "An organization keeps at least one owner.", status=409)


@transaction.atomic
def membership_update_role(*, membership: Membership, role: str, acting_role: str) -> Membership:
    membership_check_change(acting_role=acting_role, membership=membership, new_role=role)
    previous = membership.role
    membership.role = role
    membership.save(update_fields=["role"])
    record_change("tenants.membership.update", target=membership, details={"role": role, "previous_role": previous})
    return membership


@transaction.atomic
def membership_delete(*, membership: Membership, acting_role: str) -> None:
    membership_check_change(acting_role=acting_role, membership=membership, new_role=None)
    record_change("tenants.membership.delete", target=membership, details={"user_id": membership.user_id})
    membership.delete()


@transaction.atomic
def api_key_create(
    *, membership: Membership, name: str, expires_at=None, created_by: User | None = None
) -> tuple[APIKey, str]:
    """Make a key for a member. Returns the key row and the key itself, which is never stored."""
    organization = membership.organization
    active = APIKey.objects.filter(revoked_at__isnull=True).count()
    if active >= organization.limit("max_api_keys"):
        raise APIError("limit_reached", "This organization has reached its API key limit.", status=409)
    for _ in range(3):  # a prefix collision is astronomically rare; retry rather than fail
        key, prefix = generate_api_key()
        try:
            with transaction.atomic():
                api_key = APIKey.objects.create(
                    organization=organization,
                    membership=membership,
                    name=name,
                    prefix=prefix,
                    hashed_key=hash_api_key(key),
                    expires_at=expires_at,
                    created_by=created_by,
                )
            break
        except IntegrityError:
            continue
    else:
        raise RuntimeError("Could not allocate a unique API key prefix.")
    record_change(
        "tenants.api_key.create",
        target=api_key,
        details={
            "prefix": prefix,
            "name": name,
            "user_id": membership.user_id,
            "expires_at": expires_at.isoformat() if expires_at else None,
        },
    )
    return api_key, key


@transaction.atomic
def api_key_revoke(*, api_key: APIKey) -> APIKey:
    """Revoke a key now; revoking twice changes nothing and records nothing."""
    api_key = APIKey.objects.select_for_update().get(pk=api_key.pk)
    if api_key.revoked_at is None:
        api_key.revoked_at = timezone.now()
        api_key.save(update_fields=["revoked_at"])
        record_change("tenants.api_key.revoke", target=api_key, details={"prefix": api_key.prefix})
    return api_key


@transaction.atomic
def data_keys_destroy(*, organization: Organization) -> int:
    """Crypto-shred an organization's secrets: delete its data keys. Every value sealed under them
    becomes unreadable (calls that need one are refused, never made without it). Irreversible."""
    from tenants import secrets
    from tenants.models import DataKey

    with scoping.organization_scope(organization):
        count, _ = DataKey.objects.filter(organization=organization).delete()
        record_change("tenants.data_key.destroy", target=organization, details={"data_keys": count})
    secrets.forget_cached_keys(organization.pk)
    return count
