"""Organizations, users, memberships and API keys, and the scoped manager every tenant model uses."""

import hashlib
import secrets

from django.contrib.auth.models import AbstractBaseUser, BaseUserManager, PermissionsMixin
from django.db import models
from django.db.models.functions import Lower
from django.utils import timezone

from tenants import scoping


@models.ForeignObject.register_lookup
class InCurrentScope(models.Lookup):
    """`organization__in_current_scope=True`: the organizations in scope, decided when the SQL is
    compiled rather than when the queryset is built, so a queryset made at import time (a form
    field's choices) is scoped by the request that evaluates it. With nothing in scope, it raises.
    """

    lookup_name = "in_current_scope"
    prepare_rhs = False

    def as_sql(self, compiler, connection):
        state = scoping.require_scope()
        if state.all_organizations:
            return "1 = 1", []
        lhs, lhs_params = self.process_lhs(compiler, connection)
        placeholders = ", ".join(["%s"] * len(state.organization_ids))
        return f"{lhs} IN ({placeholders})", [*lhs_params, *state.organization_ids]


class TenantManager(models.Manager):
    """The default manager of every tenant model: scoped to the organizations in scope, or refusing.

    Related-object access and deletion cascades use the unscoped base manager, as Django does;
    row-level security still filters those queries on PostgreSQL.
    """

    def get_queryset(self):
        return super().get_queryset().filter(organization__in_current_scope=True)


class TenantModel(models.Model):
    """A row that belongs to one organization. Migrations enable and force row-level security on it
    (agentapi.db.operations.EnableRowLevelSecurity); tests/test_isolation.py checks that they do."""

    organization = models.ForeignKey("tenants.Organization", on_delete=models.CASCADE, related_name="+")

    objects = TenantManager()

    class Meta:
        abstract = True


class UserManager(BaseUserManager):
    use_in_migrations = True

    def create_user(self, email, password=None, **extra):
        user = self.model(email=self.normalize_email(email).lower(), **extra)
        user.set_password(password)
        user.save(using=self._db)
        return user

    def create_superuser(self, email, password=None, **extra):
        extra.update(is_staff=True, is_superuser=True)
        return self.create_user(email, password, **extra)


class User(AbstractBaseUser, PermissionsMixin):
    """A person. Global: one user may belong to several organizations. Logs in with e-mail."""

    email = models.EmailField(unique=True)
    name = models.CharField(max_length=200, blank=True)
    is_active = models.BooleanField(default=True)
    is_staff = models.BooleanField(default=False, help_text="May sign in to the admin site.")
    date_joined = models.DateTimeField(default=timezone.now)

    objects = UserManager()

    USERNAME_FIELD = "email"
    EMAIL_FIELD = "email"

    class Meta:
        constraints = [models.UniqueConstraint(Lower("email"), name="user_email_ci_unique")]

    def __str__(self):
        return self.email

    def save(self, *args, **kwargs):
        self.email = self.email.lower()
        super().save(*args, **kwargs)


DEFAULT_LIMITS = {"max_members": 1000, "max_api_keys": 100, "max_sessions_per_user": 10}


class Organization(models.Model):
    """A tenant. Global: its own row is what scopes everything else."""

    slug = models.SlugField(max_length=63, unique=True)
    name = models.CharField(max_length=200)
    is_active = models.BooleanField(default=True)
    settings = models.JSONField(default=dict, blank=True, help_text="Limits such as max_api_keys.")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["slug"]

    def __str__(self):
        return self.slug

    def limit(self, name: str) -> int:
        return int(self.settings.get(name, DEFAULT_LIMITS[name]))


class Role(models.TextChoices):
    OWNER = "owner", "Owner"
    ADMIN = "admin", "Admin"
    MEMBER = "member", "Member"


MANAGER_ROLES = (Role.OWNER, Role.ADMIN)


class Membership(TenantModel):
    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=16, choices=Role.choices, default=Role.MEMBER)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["organization", "user"], name="membership_unique")]
        ordering = ["id"]

    def __str__(self):
        return f"{self.user} in {self.organization_id} ({self.role})"

    @property
    def can_manage(self) -> bool:
        return self.role in MANAGER_ROLES


def memberships_of(user, **filters) -> list[Membership]:
    """A user's own memberships in every organization, oldest first: read before any organization
    is chosen, through the row-level security policy that lets a user see their own memberships."""
    from agentapi.db.scope import DatabaseScope, use_scope

    with use_scope(DatabaseScope(user_id=user.pk)):
        return list(
            Membership._base_manager.select_related("organization", "user").filter(user=user, **filters).order_by("id")
        )


API_KEY_PREFIX = "aak_"


def hash_api_key(key: str) -> str:
    # A fast hash is right here: keys carry 256 bits of randomness, so there is nothing to
    # brute-force, and a slow hash would cost every request.
    return hashlib.sha256(key.encode()).hexdigest()


def generate_api_key() -> tuple[str, str]:
    """A new key and its visible prefix: aak_<12 hex>_<43 url-safe>."""
    prefix = API_KEY_PREFIX + secrets.token_hex(6)
    return f"{prefix}_{secrets.token_urlsafe(32)}", prefix


class APIKey(TenantModel):
    """A credential for one member of one organization. Shown once; stored as a SHA-256 hash."""

    membership = models.ForeignKey(Membership, on_delete=models.CASCADE, related_name="api_keys")
    name = models.CharField(max_length=100)
    prefix = models.CharField(max_length=32, unique=True)
    hashed_key = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)
    created_by = models.ForeignKey(User, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["id"]
        verbose_name = "API key"

    def __str__(self):
        return f"{self.prefix}… ({self.name})"

    def is_expired(self, now=None) -> bool:
        return self.expires_at is not None and self.expires_at <= (now or timezone.now())

    @property
    def status(self) -> str:
        if self.revoked_at:
            return "revoked"
        return "expired" if self.is_expired() else "active"


class DataKey(TenantModel):
    """An organization's data key for envelope encryption (tenants.secrets), stored wrapped by the
    master keyring (FIELD_ENCRYPTION_KEYS). Rotating a master key rewraps these rows only; deleting
    an organization's data keys leaves every secret sealed under them unreadable."""

    version = models.PositiveIntegerField(default=1)
    wrapped = models.TextField(help_text="The key, encrypted under the master keyring.")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["organization", "-version"]
        constraints = [
            models.UniqueConstraint(fields=["organization", "version"], name="tenants_datakey_unique_version")
        ]

    def __str__(self):
        return f"{self.organization_id}:v{self.version}"

    @staticmethod
    def context(organization_id: int, version: int) -> str:
        return f"tenants.datakey:{organization_id}:{version}"


class IdempotencyRecord(TenantModel):
    """What a create request sent with an `Idempotency-Key` answered (tenants.idempotency): a retry
    with the same key, by the same user, answers it again and changes nothing. The response is
    sealed under the organization's data key (it may hold a new API key or session token once)."""

    user_id = models.BigIntegerField(help_text="Whose key this is: keys are unique per user and organization.")
    key = models.CharField(max_length=255)
    method = models.CharField(max_length=10)
    path = models.CharField(max_length=500)
    fingerprint = models.CharField(max_length=64, help_text="SHA-256 of the request's method, path and body.")
    status = models.PositiveSmallIntegerField(null=True, help_text="Empty while the first request is in progress.")
    response = models.TextField(blank=True, help_text="The answer's body, sealed.")
    resource = models.CharField(max_length=100, blank=True, help_text="What the request created (model:id).")
    created_at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["organization", "user_id", "key"], name="tenants_idempotency_unique_key")
        ]

    def __str__(self):
        return f"{self.method} {self.path} [{self.key[:16]}]"

    def context(self) -> str:
        return f"tenants.idempotencyrecord:{self.pk}:response"
