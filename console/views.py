"""The console's own pages: export an organization's audit events for a time range, and verify an
organization's audit chain (audited). Both in the admin (ConsoleSite.admin_view: staff only) and
scoped: staff reach only their organizations (another one is 404), operators any."""

from django import forms
from django.contrib import admin, messages
from django.http import Http404, HttpResponseRedirect, StreamingHttpResponse
from django.urls import reverse

from tenants import scoping
from tenants.admin import visible_organizations
from tenants.middleware import actor_for
from tenants.models import Organization


class ExportForm(forms.Form):
    organization = forms.ModelChoiceField(queryset=Organization.objects.none())
    since = forms.DateTimeField(help_text="UTC, e.g. 2026-12-01 00:00")
    until = forms.DateTimeField(help_text="UTC, e.g. 2026-12-02 00:00")
    action = forms.RegexField(r"^[a-z0-9_.]+\*?$", max_length=100, required=False,
                              help_text="An action, or a prefix ending in * (mcp.*).")  # fmt: skip
    format = forms.ChoiceField(choices=[("jsonl", "JSON Lines"), ("csv", "CSV")])

    def __init__(self, *args, request, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["organization"].queryset = visible_organizations(request)

    def clean(self):
        data = super().clean()
        if data.get("since") and data.get("until") and data["since"] > data["until"]:
            self.add_error("until", "Must not be before since.")
        return data


def audit_export(request):
    """A form (GET); with its fields filled, the events of that organization and time range
    streamed as the API's export streams them (keyset chunks, flat memory). The export is audited."""
    from audit import export
    from audit.api.serializers import AuditEventFilterSerializer
    from audit.services import audit_record

    form = ExportForm(request.GET or None, request=request)
    if not form.is_valid():
        return admin.site.page(request, "admin/console/audit_export.html",
                               {"form": form, "title": "Export audit events"})  # fmt: skip
    data = form.cleaned_data
    organization, actor = data["organization"], actor_for(request.user)
    filters = AuditEventFilterSerializer(
        data={
            "since": data["since"].isoformat(),
            "until": data["until"].isoformat(),
            **({"action": data["action"]} if data["action"] else {}),
        }  # fmt: skip
    )
    filters.is_valid(raise_exception=True)
    with scoping.organization_scope(organization, actor=actor):
        audit_record("audit.events.export", organization_id=organization.pk,
                     details={"since": data["since"].isoformat(), "until": data["until"].isoformat(),
                              "action": data["action"], "format": data["format"], "via": "admin"})  # fmt: skip
    response = StreamingHttpResponse(
        export.stream(organization, actor, filters, data["format"]),
        content_type="text/csv; charset=utf-8" if data["format"] == "csv" else "application/jsonl",
    )
    response["Content-Disposition"] = f'attachment; filename="audit-events-{organization.slug}.{data["format"]}"'
    return response


def verify_chain(request, organization_id: int):
    """POST: walk the organization's chain now; the result as a message, the verification on record."""
    from audit.services import audit_chain_verify

    if request.method != "POST":
        return HttpResponseRedirect(reverse("admin:index"))
    organization = visible_organizations(request).filter(pk=organization_id).first()
    if organization is None:
        raise Http404("No such organization.")
    with scoping.organization_scope(organization, actor=actor_for(request.user)):
        checked, first_break = audit_chain_verify(organization.pk)
    if first_break is None:
        messages.success(request, f"{organization.slug}: the audit chain verifies ({checked} events).")
    else:
        messages.error(request, f"{organization.slug}: the chain breaks at event {first_break.event_id} "
                                f"(seq {first_break.seq}): {first_break.reason}.")  # fmt: skip
    return HttpResponseRedirect(reverse("admin:index") + f"?organization={organization.pk}")
