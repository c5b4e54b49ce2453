"""Tenant isolation below the API: the scoped manager fails closed, row-level security holds when
code forgets, and every model is either a tenant model with a forced policy or declared global."""

import psycopg
import pytest
from django.apps import apps
from django.conf import settings
from django.db import connection, transaction
from django.db.utils import DatabaseError

from tenants import scoping
from tenants.classification import GLOBAL_MODELS
from tenants.models import APIKey, Membership, TenantManager
from tests.conftest import committed, make_key, make_member


def tenant_models():
    return [m for m in apps.get_models() if isinstance(m._default_manager, TenantManager)]


def test_every_model_is_a_tenant_model_or_declared_global():
    unclassified = [
        m._meta.label
        for m in apps.get_models()
        if m._meta.label not in GLOBAL_MODELS and not isinstance(m._default_manager, TenantManager)
    ]
    assert unclassified == [], f"Classify these models (tenant, or GLOBAL_MODELS with a reason): {unclassified}"
    stale = set(GLOBAL_MODELS) - {m._meta.label for m in apps.get_models()}
    assert not stale
    assert {m._meta.label for m in tenant_models()} >= {"tenants.Membership", "tenants.APIKey", "audit.AuditEvent"}


@pytest.mark.django_db
def test_every_tenant_table_has_row_level_security_enabled_forced_and_a_policy():
    with connection.cursor() as cursor:
        for model in tenant_models():
            table = model._meta.db_table
            cursor.execute("SELECT relrowsecurity, relforcerowsecurity FROM pg_class WHERE relname = %s", [table])
            assert cursor.fetchone() == (True, True), table
            cursor.execute("SELECT count(*) FROM pg_policies WHERE tablename = %s", [table])
            assert cursor.fetchone()[0] >= 1, table


@pytest.mark.django_db
def test_the_application_role_is_no_superuser_has_no_bypassrls_and_owns_nothing():
    with connection.cursor() as cursor:
        cursor.execute("SELECT rolsuper, rolbypassrls FROM pg_roles WHERE rolname = current_user")
        assert cursor.fetchone() == (False, False)
        cursor.execute("SELECT count(*) FROM pg_tables WHERE tableowner = current_user")
        assert cursor.fetchone()[0] == 0


def test_the_manager_refuses_to_query_without_an_organization(alice):
    with pytest.raises(scoping.OrganizationNotSet):
        list(Membership.objects.all())
    with pytest.raises(scoping.OrganizationNotSet):
        APIKey.objects.count()


def test_the_manager_sees_only_the_organization_in_scope(alice, bob, charlie, acme, globex):
    with scoping.organization_scope(acme):
        assert {m.user.email for m in Membership.objects.all()} == {"alice@acme.test", "bob@acme.test"}
    with scoping.organization_scope(globex):
        assert [m.user.email for m in Membership.objects.all()] == ["charlie@globex.test"]


def test_a_queryset_built_before_the_scope_is_scoped_when_evaluated(alice, charlie, acme, globex):
    memberships = Membership.objects.all()  # built with no scope, as a form field's choices are
    with scoping.organization_scope(globex):
        assert [m.user.email for m in memberships] == ["charlie@globex.test"]


def test_row_level_security_holds_when_code_forgets_to_scope(alice, charlie, acme, globex):
    make_key(alice)
    make_key(charlie)
    with scoping.organization_scope(acme):
        # The base manager applies no tenant filter: only PostgreSQL stands between us and Globex.
        assert {k.organization_id for k in APIKey._base_manager.all()} == {acme.pk}
        assert {m.organization_id for m in Membership._base_manager.all()} == {acme.pk}
        with connection.cursor() as cursor:
            cursor.execute("SELECT DISTINCT organization_id FROM tenants_membership")
            assert [row[0] for row in cursor.fetchall()] == [acme.pk]


def test_a_raw_select_with_no_organization_set_returns_no_tenant_row(alice, charlie):
    make_key(alice)
    with connection.cursor() as cursor:
        for model in tenant_models():
            cursor.execute(f'SELECT count(*) FROM "{model._meta.db_table}"')
            assert cursor.fetchone()[0] == 0, model._meta.label


def test_writing_into_another_organization_is_refused_by_the_database(alice, charlie, acme, globex):
    with scoping.organization_scope(acme), pytest.raises(DatabaseError, match="row-level security"):
        with transaction.atomic():
            Membership._base_manager.create(organization=globex, user=alice.user, role="owner")
    with scoping.organization_scope(acme), pytest.raises(DatabaseError):
        with transaction.atomic():
            APIKey._base_manager.filter(organization=globex).update(name="x")  # touches no row...
            Membership._base_manager.filter(pk=alice.pk).update(organization=globex)  # ...this one is refused


@committed
def test_a_fresh_connection_as_the_application_role_sees_nothing(alice, charlie):
    """Committed rows, a connection that never went through Django: no organization, no rows."""
    make_key(alice)
    url = settings.DATABASES["default"]
    with psycopg.connect(
        host=url["HOST"], port=url["PORT"], dbname=url["NAME"], user=url["USER"], password=url["PASSWORD"]
    ) as raw:
        for model in tenant_models():
            assert raw.execute(f'SELECT count(*) FROM "{model._meta.db_table}"').fetchone()[0] == 0
        raw.execute("SELECT set_config('app.organization_ids', %s, false)", [str(alice.organization_id)])
        assert raw.execute("SELECT count(*) FROM tenants_membership").fetchone()[0] == 1


@committed
def test_scope_settings_do_not_outlive_their_transaction(alice, acme):
    with scoping.organization_scope(acme), transaction.atomic():
        assert Membership.objects.count() == 1
    with connection.cursor() as cursor:
        cursor.execute("SELECT current_setting('app.organization_ids', true)")
        assert cursor.fetchone()[0] in ("", None)
        cursor.execute("SELECT count(*) FROM tenants_membership")
        assert cursor.fetchone()[0] == 0


def test_a_rolled_back_savepoint_does_not_leave_a_stale_scope(alice, charlie, acme, globex):
    with scoping.organization_scope(acme):
        assert Membership.objects.count() == 1
        try:
            with transaction.atomic(), scoping.organization_scope(globex):
                assert Membership.objects.get().organization_id == globex.pk
                raise RuntimeError
        except RuntimeError:
            pass
        with connection.cursor() as cursor:
            cursor.execute("SELECT DISTINCT organization_id FROM tenants_membership")
            assert [row[0] for row in cursor.fetchall()] == [acme.pk]


def test_crossing_organizations_is_explicit_and_audited(alice, charlie):
    from audit.models import AuditEvent

    with scoping.dangerously_all_organizations(reason="quarterly report"):
        assert Membership.objects.count() == 2
        event = AuditEvent.objects.get(action="tenants.scope.cross_organizations")
    assert event.details == {"reason": "quarterly report"}


def test_a_user_reads_their_own_memberships_across_organizations(acme, globex):
    from agentapi.db.scope import DatabaseScope, use_scope

    dora_acme = make_member(acme, "dora@example.test", "member")
    make_member(globex, "dora@example.test", "admin")
    make_member(globex, "eve@example.test", "admin")
    with use_scope(DatabaseScope(user_id=dora_acme.user_id)):
        rows = list(Membership._base_manager.values_list("user__email", "organization__slug"))
    assert sorted(rows) == [("dora@example.test", "acme"), ("dora@example.test", "globex")]
