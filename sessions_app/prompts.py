"""System prompt layers: who may write which, versions, screening, and composition.

Writing: the `global` layer is the platform operators' (superusers), `organization` its owners' and
admins', `user` each member's own. Every change saves a new version (append-only) and is audited.
Content is checked as a template when saved (sessions_app.templating) and screened for prompt
injection on the organization and user layers (sessions_app.screening): the organization's
setting `prompt_screening` is `reject` (the default: 400 naming each finding) or `flag` (saved,
the findings kept on the prompt and in the audit event).

Composing: every enabled layer the caller sees, global, then organization, then user, each by
ascending priority, then name; each rendered with the documented variables. A lower layer can only
add text after the ones above it: it cannot remove, reorder or rewrite them.
"""

import hashlib

from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from agentapi.errors import APIError
from audit.services import audit_record
from sessions_app import screening, templating
from sessions_app.models import PromptScope, PromptVersion, SystemPrompt
from tenants import scoping
from tenants.authentication import Principal
from tenants.models import MANAGER_ROLES

SCREENING_MODES = ("reject", "flag")
VERSIONED_FIELDS = ("name", "content", "priority", "enabled")


def screening_mode(organization) -> str:
    mode = (organization.settings or {}).get("prompt_screening", "reject")
    return mode if mode in SCREENING_MODES else "reject"


def visible_to(principal: Principal):
    """The prompts the caller sees: the platform's, the organization's, and their own."""
    return SystemPrompt.objects.filter(
        Q(scope__in=(PromptScope.GLOBAL, PromptScope.ORGANIZATION))
        | Q(scope=PromptScope.USER, user_id=principal.membership.user_id)
    )


def _may_write(principal: Principal, scope: str) -> None:
    if scope == PromptScope.GLOBAL:
        allowed = principal.membership.user.is_superuser
    elif scope == PromptScope.ORGANIZATION:
        allowed = principal.role in MANAGER_ROLES
    else:
        allowed = True  # a member's own layer (visible_to() finds no one else's)
    if not allowed:
        raise APIError("permission_denied", f"You may not change {scope} prompts.", status=403)


def _template_error(problem: templating.TemplateProblem, **details) -> APIError:
    return APIError(problem.code, problem.message, status=400, details=details)


def _screened(principal: Principal, scope: str, name: str, content: str) -> list[dict]:
    """The findings to keep on the prompt; in `reject` mode, a 400 naming each one."""
    if scope == PromptScope.GLOBAL:
        return []  # the operators' own layer
    found = [f.as_dict() for f in screening.screen(content, where=name, max_length=templating.MAX_OUTPUT)]
    if found and screening_mode(principal.organization) == "reject":
        codes = ", ".join(finding["code"] for finding in found)
        raise APIError(
            "prompt_rejected",
            f"The prompt was refused by injection screening ({codes}).",
            details={"findings": found},
        )
    return found


def _checked(principal: Principal, scope: str, name: str, content: str) -> list[dict]:
    try:
        templating.check(content)
    except templating.TemplateProblem as problem:
        raise _template_error(problem) from None
    return _screened(principal, scope, name, content)


def _save_version(prompt: SystemPrompt, principal: Principal) -> None:
    PromptVersion.objects.create(
        prompt=prompt,
        organization_id=prompt.organization_id,
        version=prompt.version,
        created_by_id=principal.membership.user_id,
        findings=prompt.findings,
        **{name: getattr(prompt, name) for name in VERSIONED_FIELDS},
    )


def _audit(action: str, prompt: SystemPrompt, **details) -> None:
    codes = sorted({finding["code"] for finding in prompt.findings})
    audit_record(
        action,
        target=prompt,
        organization_id=prompt.organization_id,
        details={"scope": prompt.scope, "name": prompt.name, "version": prompt.version, "findings": codes, **details},
    )


@transaction.atomic
def prompt_create(*, principal: Principal, scope: str, name: str, content: str, priority=100, enabled=True):
    _may_write(principal, scope)
    prompt = SystemPrompt(
        scope=scope,
        organization=None if scope == PromptScope.GLOBAL else principal.organization,
        user_id=principal.membership.user_id if scope == PromptScope.USER else None,
        name=name,
        content=content,
        priority=priority,
        enabled=enabled,
        findings=_checked(principal, scope, name, content),
    )
    prompt.save()
    _save_version(prompt, principal)
    _audit("prompt.create", prompt)
    return prompt


@transaction.atomic
def prompt_update(*, principal: Principal, prompt: SystemPrompt, **changes) -> SystemPrompt:
    _may_write(principal, prompt.scope)
    changed = sorted(name for name, value in changes.items() if getattr(prompt, name) != value)
    if not changed:
        return prompt
    for name in changed:
        setattr(prompt, name, changes[name])
    if "content" in changed or "name" in changed:
        prompt.findings = _checked(principal, prompt.scope, prompt.name, prompt.content)
    prompt.version += 1
    prompt.save()
    _save_version(prompt, principal)
    _audit("prompt.update", prompt, changed=changed)
    return prompt


@transaction.atomic
def prompt_rollback(*, principal: Principal, prompt: SystemPrompt, version: int) -> SystemPrompt:
    """A new version with the content of an earlier one (history is never rewritten)."""
    _may_write(principal, prompt.scope)
    earlier = PromptVersion.objects.filter(prompt=prompt, version=version).first()
    if earlier is None:
        raise APIError("not_found", f"This prompt has no version {version}.", status=404)
    for name in VERSIONED_FIELDS:
        setattr(prompt, name, getattr(earlier, name))
    prompt.findings = _checked(principal, prompt.scope, prompt.name, prompt.content)
    prompt.version += 1
    prompt.save()
    _save_version(prompt, principal)
    _audit("prompt.rollback", prompt, restored=version)
    return prompt


@transaction.atomic
def prompt_delete(*, principal: Principal, prompt: SystemPrompt) -> None:
    """The prompt leaves composition; its versions stay (append-only history)."""
    _may_write(principal, prompt.scope)
    _audit("prompt.delete", prompt)
    prompt.delete()


# -- composing ----------------------------------------------------------------------------------


def _screen_variables(value, path: str, found: list) -> None:
    if isinstance(value, str):
        found += [f.as_dict() for f in screening.screen(value, where=path, max_length=templating.MAX_OUTPUT)]
    elif isinstance(value, dict):
        for key, item in value.items():
            _screen_variables(item, f"{path}.{key}", found)
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            _screen_variables(item, f"{path}[{index}]", found)


def render_layers(layers, context: dict) -> str:
    """The layers (in order) rendered and joined by blank lines. Raises APIError (400)."""
    parts = []
    for layer in layers:
        try:
            text = templating.render(layer.content, context)
        except templating.TemplateProblem as problem:
            raise _template_error(problem, layer=layer.pk) from None
        if text.strip():
            parts.append(text.strip())
    prompt = "\n\n".join(parts)
    if len(prompt) > templating.MAX_OUTPUT:
        raise APIError("template_limit", f"The composed prompt is longer than {templating.MAX_OUTPUT} characters.")
    return prompt


def principal_for(membership) -> Principal:
    """The member as compose() sees them, for an operator's preview (no credential involved)."""
    actor = scoping.Actor(kind="user", user_id=membership.user_id, label=membership.user.email)
    return Principal(organization=membership.organization, membership=membership, method="preview", actor=actor)


def compose(*, principal: Principal, variables: dict, session_metadata=None, tool_names=()) -> dict:
    """The caller's system prompt: {"prompt", "layers", "sha256", "findings"}. Raises APIError
    (400) for an undefined variable, a template that fails, or variables refused by screening."""
    try:
        plain_variables = templating.plain(variables)
    except templating.TemplateProblem as problem:
        raise _template_error(problem, variables=True) from None
    found: list[dict] = []
    _screen_variables(variables, "variables", found)
    if found and screening_mode(principal.organization) == "reject":
        codes = ", ".join(finding["code"] for finding in found)
        raise APIError(
            "prompt_rejected",
            f"The variables were refused by injection screening ({codes}).",
            details={"findings": found},
        )
    user = principal.membership.user
    context = {
        "user": {"name": user.name, "email": user.email},
        "organization": {"name": principal.organization.name, "slug": principal.organization.slug},
        "today": timezone.localdate().isoformat(),
        "session": {"metadata": session_metadata or {}, "tools": list(tool_names)},
        "variables": plain_variables,
    }
    layers = sorted(visible_to(principal).filter(enabled=True), key=SystemPrompt.sort_key)
    prompt = render_layers(layers, context)
    found += [finding for layer in layers for finding in layer.findings]
    return {
        "prompt": prompt,
        "layers": [{"id": p.pk, "scope": p.scope, "name": p.name, "version": p.version} for p in layers],
        "sha256": hashlib.sha256(prompt.encode()).hexdigest(),
        "findings": found,
    }
