"""Admin sign-in with a company identity (social-auth-app-django): the pipeline steps that decide
who may come in, and the login page's buttons.

A sign-in is accepted only for an address the provider vouches for (verified), and only when it
is the address of an existing, active user who is a platform operator or staff managing an
organization. Nothing is created, and nothing is granted: the user's rights stay what they are.
"""

from django.conf import settings
from social_core.exceptions import AuthPolicyError

from tenants import security
from tenants.models import MANAGER_ROLES, User, memberships_of


def _refuse(backend, reason: str):
    # Recorded like any failed authentication (the audit app writes it after the response).
    security.report("authentication_failed", reason=reason, credential=f"social:{backend.name}")
    return AuthPolicyError(backend)


def _verified_address(backend, details: dict, response: dict) -> str | None:
    name = backend.name
    if name == "github" or name.startswith("github"):
        # GitHub's /user/emails answer (fetched with the user:email scope) flags each address.
        for entry in response.get("emails") or []:
            if isinstance(entry, dict) and entry.get("primary") and entry.get("verified"):
                return entry.get("email")
        return None
    if name in ("google-oauth2", "auth0") or name.startswith(("google", "auth0")):
        return details.get("email") if response.get("email_verified") is True else None
    if name.startswith("azuread"):
        # Entra ID: the sign-in is limited to the configured tenant, whose directory owns the address.
        return details.get("email") or response.get("upn")
    return None


def verified_email(backend, details, response, *args, **kwargs):
    email = _verified_address(backend, details or {}, response or {})
    if not email or "@" not in email:
        raise _refuse(backend, "social_email_not_verified")
    return {"verified_email": email.strip().lower()}


def _may_use_the_admin(user: User) -> bool:
    if not user.is_active:
        return False
    if user.is_superuser:
        return True
    return user.is_staff and any(m.role in MANAGER_ROLES for m in memberships_of(user))


def existing_staff_user(backend, verified_email, user=None, *args, **kwargs):
    """The user this sign-in is: the one already linked, or the one with the verified address.
    Refused for anyone else (no account is made), and for users the admin is not for."""
    candidate = user or User.objects.filter(email__iexact=verified_email).first()
    if candidate is None or candidate.email.lower() != verified_email:
        raise _refuse(backend, "social_unknown_user")
    if not _may_use_the_admin(candidate):
        raise _refuse(backend, "social_not_staff")
    return {"user": candidate, "is_new": False}


def login_providers(request):
    """Template context: the configured providers' buttons (none when none is configured)."""
    if not request.path.startswith("/admin/login"):
        return {}
    from social_core.backends.utils import load_backends

    backends = load_backends([path for path, _ in settings.SOCIAL_LOGIN_BACKENDS], force_load=True)
    labels = dict(settings.SOCIAL_LOGIN_BACKENDS)
    buttons = []
    for name, backend in backends.items():
        path = f"{backend.__module__}.{backend.__name__}"
        buttons.append({"name": name, "label": labels.get(path, name)})
    return {"social_login_providers": buttons}
