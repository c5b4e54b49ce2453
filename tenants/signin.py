"""The admin's password sign-in: failures are recorded, and too many are refused.

Every failed password sign-in is reported as a failed authentication (the audit log records it,
as it does a refused API key or company sign-in). More than ADMIN_SIGNIN_FAILURES_PER_MINUTE
failures within a minute, from one address or against one account, are refused with the admin's
own form error, without checking the password, until the minute is over. The counters are
django-ratelimit's (fixed windows in the shared cache, so every web process counts together);
the platform-wide rate limits (per credential, organization and class of endpoint) will take this
over. Only its counter is used, not its app: its checks refuse the embedded profile's local cache,
which is right for one process counting its own sign-ins.
"""

from django import forms
from django.conf import settings
from django.contrib.admin.forms import AdminAuthenticationForm
from django.contrib.auth.signals import user_login_failed
from django.dispatch import receiver
from django_ratelimit.core import is_ratelimited

from tenants import security

_GROUPS = {
    "admin-signin-address": lambda group, request: request.META.get("REMOTE_ADDR") or "unknown",
    "admin-signin-account": lambda group, request: (request.POST.get("username") or "").strip().lower(),
}


def _limited(request, *, count: bool) -> bool:
    rate = f"{settings.ADMIN_SIGNIN_FAILURES_PER_MINUTE}/m"
    return any(
        is_ratelimited(request, group=group, key=key, rate=rate, increment=count) for group, key in _GROUPS.items()
    )


class ThrottledAdminAuthenticationForm(AdminAuthenticationForm):
    error_messages = {
        **AdminAuthenticationForm.error_messages,
        "too_many_attempts": "Too many failed sign-ins. Wait a minute, then try again.",
    }

    def clean(self):
        if self.request is not None and _limited(self.request, count=False):
            security.report("authentication_failed", reason="too_many_attempts", credential="password")
            raise forms.ValidationError(self.error_messages["too_many_attempts"], code="too_many_attempts")
        try:
            return super().clean()
        except forms.ValidationError:
            if self.request is not None:
                _limited(self.request, count=True)
            raise


@receiver(user_login_failed)
def _record_failure(sender, credentials, request=None, **kwargs):
    # Django passes the credentials with the password already masked; only the fact is recorded.
    security.report("authentication_failed", reason="invalid_password", credential="password")
