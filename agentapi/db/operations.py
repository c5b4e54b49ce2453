"""Migration operations for PostgreSQL's second wall: row-level security and append-only tables.

They do nothing on other databases (the embedded SQLite profile has neither roles nor policies).
"""

from django.db.migrations.operations.base import Operation

# A row is visible when its organization is in scope, or during an explicit, audited crossing.
TENANT_CONDITION = (
    "organization_id = ANY (string_to_array(current_setting('app.organization_ids', true), ',')::bigint[])"
    " OR current_setting('app.all_organizations', true) = 'on'"
)


class _PostgresOnly(Operation):
    reduces_to_sql = True
    reversible = True

    def state_forwards(self, app_label, state):
        pass

    def _table(self, app_label, state):
        return state.apps.get_model(app_label, self.model_name)._meta.db_table

    def database_forwards(self, app_label, schema_editor, from_state, to_state):
        if schema_editor.connection.vendor == "postgresql":
            for statement in self.forwards_sql(self._table(app_label, to_state)):
                schema_editor.execute(statement, params=None)

    def database_backwards(self, app_label, schema_editor, from_state, to_state):
        if schema_editor.connection.vendor == "postgresql":
            for statement in self.backwards_sql(self._table(app_label, from_state)):
                schema_editor.execute(statement, params=None)


class EnableRowLevelSecurity(_PostgresOnly):
    """Enable and force row-level security on a tenant table, keyed on its organization.

    `extra` adds OR-ed conditions for the few lookups that legitimately precede knowing the
    organization (an API key found by its hash, a user's own memberships).
    """

    def __init__(self, model_name, extra=""):
        self.model_name = model_name
        self.extra = extra

    def deconstruct(self):
        kwargs = {"model_name": self.model_name}
        if self.extra:
            kwargs["extra"] = self.extra
        return self.__class__.__name__, [], kwargs

    def describe(self):
        return f"Enable row-level security on {self.model_name}"

    def forwards_sql(self, table):
        condition = TENANT_CONDITION + (f" OR {self.extra}" if self.extra else "")
        return [
            f'ALTER TABLE "{table}" ENABLE ROW LEVEL SECURITY',
            f'ALTER TABLE "{table}" FORCE ROW LEVEL SECURITY',
            f'DROP POLICY IF EXISTS tenant_isolation ON "{table}"',
            f'CREATE POLICY tenant_isolation ON "{table}" USING ({condition}) WITH CHECK ({condition})',
        ]

    def backwards_sql(self, table):
        return [
            f'DROP POLICY IF EXISTS tenant_isolation ON "{table}"',
            f'ALTER TABLE "{table}" NO FORCE ROW LEVEL SECURITY',
            f'ALTER TABLE "{table}" DISABLE ROW LEVEL SECURITY',
        ]


REFUSE_CHANGE_FUNCTION = """
CREATE OR REPLACE FUNCTION agentapi_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- With arguments (ChainedOnce): an UPDATE that fills in the named columns of a row whose first
    -- named column is still NULL, and changes nothing else, is the one update allowed.
    IF TG_OP = 'UPDATE' AND TG_NARGS > 0
       AND to_jsonb(OLD) ->> TG_ARGV[0] IS NULL AND to_jsonb(NEW) ->> TG_ARGV[0] IS NOT NULL
       AND (to_jsonb(NEW) - TG_ARGV) = (to_jsonb(OLD) - TG_ARGV) THEN
        RETURN NEW;
    END IF;
    -- Only the tables' owner, inside an explicit maintenance transaction, may remove rows.
    IF TG_OP IN ('DELETE', 'TRUNCATE')
       AND current_setting('app.privileged_maintenance', true) = 'on'
       AND current_user = (SELECT tableowner FROM pg_tables
                           WHERE schemaname = TG_TABLE_SCHEMA AND tablename = TG_TABLE_NAME) THEN
        IF TG_LEVEL = 'ROW' THEN RETURN OLD; END IF;
        RETURN NULL;
    END IF;
    RAISE EXCEPTION '% on % is refused: the table is append-only', TG_OP, TG_TABLE_NAME
        USING ERRCODE = 'insufficient_privilege';
END
$$
"""


class MakeAppendOnly(_PostgresOnly):
    """Refuse UPDATE, DELETE and TRUNCATE on a table, whatever the grants say.

    The application role is also denied those privileges (agentapi's migrate command); this trigger
    holds even for a role that was granted them by mistake. The owner may delete (never update)
    inside a transaction that sets app.privileged_maintenance, which is how retention purges run.
    """

    def __init__(self, model_name):
        self.model_name = model_name

    def deconstruct(self):
        return self.__class__.__name__, [], {"model_name": self.model_name}

    def describe(self):
        return f"Make {self.model_name} append-only"

    def forwards_sql(self, table):
        return [
            REFUSE_CHANGE_FUNCTION,
            f'CREATE TRIGGER append_only_rows BEFORE UPDATE OR DELETE ON "{table}" '
            "FOR EACH ROW EXECUTE FUNCTION agentapi_refuse_change()",
            f'CREATE TRIGGER append_only_truncate BEFORE TRUNCATE ON "{table}" '
            "FOR EACH STATEMENT EXECUTE FUNCTION agentapi_refuse_change()",
        ]

    def backwards_sql(self, table):
        return [
            f'DROP TRIGGER IF EXISTS append_only_rows ON "{table}"',
            f'DROP TRIGGER IF EXISTS append_only_truncate ON "{table}"',
        ]


class ChainedOnce(_PostgresOnly):
    """On an append-only table, allow one UPDATE per row: filling in `fields` while the first of
    them is still NULL, with every other column unchanged. The audit log's sequencer chains events
    this way; once chained, an event is as immutable as before (MakeAppendOnly's trigger, given
    the fields as arguments)."""

    def __init__(self, model_name, fields):
        self.model_name = model_name
        self.fields = tuple(fields)

    def deconstruct(self):
        return self.__class__.__name__, [], {"model_name": self.model_name, "fields": self.fields}

    def describe(self):
        return f"Let {self.model_name}'s {', '.join(self.fields)} be filled in once"

    def forwards_sql(self, table):
        arguments = ", ".join(f"'{name}'" for name in self.fields)
        return [
            REFUSE_CHANGE_FUNCTION,
            f'DROP TRIGGER IF EXISTS append_only_rows ON "{table}"',
            f'CREATE TRIGGER append_only_rows BEFORE UPDATE OR DELETE ON "{table}" '
            f"FOR EACH ROW EXECUTE FUNCTION agentapi_refuse_change({arguments})",
        ]

    def backwards_sql(self, table):
        return [
            f'DROP TRIGGER IF EXISTS append_only_rows ON "{table}"',
            f'CREATE TRIGGER append_only_rows BEFORE UPDATE OR DELETE ON "{table}" '
            "FOR EACH ROW EXECUTE FUNCTION agentapi_refuse_change()",
        ]


CHANGES_CHANNEL = "agentapi_access"

NOTIFY_CHANGE_FUNCTION = f"""
CREATE OR REPLACE FUNCTION agentapi_notify_change() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    -- TG_ARGV[0]: the column naming the row's organization ('' for a row every organization
    -- depends on); the other arguments: columns whose changes alone do not matter to access.
    ignored text[] := TG_ARGV[1:];
    old_row jsonb;
    new_row jsonb;
BEGIN
    IF TG_LEVEL = 'STATEMENT' THEN  -- TRUNCATE
        PERFORM pg_notify('{CHANGES_CHANNEL}', '*');
        RETURN NULL;
    END IF;
    IF TG_OP <> 'INSERT' THEN old_row := to_jsonb(OLD); END IF;
    IF TG_OP <> 'DELETE' THEN new_row := to_jsonb(NEW); END IF;
    IF TG_OP = 'UPDATE' AND (old_row - ignored) = (new_row - ignored) THEN
        RETURN NULL;
    END IF;
    -- Delivered at COMMIT, once per distinct payload and transaction; never for a rollback.
    PERFORM pg_notify('{CHANGES_CHANNEL}', COALESCE(NULLIF(old_row ->> TG_ARGV[0], ''), '*'))
        WHERE old_row IS NOT NULL;
    PERFORM pg_notify('{CHANGES_CHANNEL}', COALESCE(NULLIF(new_row ->> TG_ARGV[0], ''), '*'))
        WHERE new_row IS NOT NULL;
    RETURN NULL;
END
$$
"""


class NotifyChanges(_PostgresOnly):
    """Announce every committed change to a table's rows on the `agentapi_access` channel, with the
    organization it concerns as the payload ('*' for all of them): what the data plane keeps in
    memory about a caller's access (agentapi.db.aio.Changes) is forgotten on it. A trigger, not a
    Django signal: a queryset's update(), raw SQL, the admin and a migration are announced alike.
    `organization_column` names the row's organization ('' when every organization depends on the
    row: a user); a change to nothing but `ignored` columns (a last-used time, a health check's
    timestamps) is not announced."""

    def __init__(self, model_name, organization_column="organization_id", ignored=()):
        self.model_name = model_name
        self.organization_column = organization_column
        self.ignored = tuple(ignored)

    def deconstruct(self):
        kwargs = {"model_name": self.model_name, "organization_column": self.organization_column}
        if self.ignored:
            kwargs["ignored"] = self.ignored
        return self.__class__.__name__, [], kwargs

    def describe(self):
        return f"Announce changes to {self.model_name} on the {CHANGES_CHANNEL} channel"

    def forwards_sql(self, table):
        arguments = ", ".join(f"'{name}'" for name in (self.organization_column, *self.ignored))
        return [
            NOTIFY_CHANGE_FUNCTION,
            f'DROP TRIGGER IF EXISTS notify_change_rows ON "{table}"',
            f'CREATE TRIGGER notify_change_rows AFTER INSERT OR UPDATE OR DELETE ON "{table}" '
            f"FOR EACH ROW EXECUTE FUNCTION agentapi_notify_change({arguments})",
            f'DROP TRIGGER IF EXISTS notify_change_truncate ON "{table}"',
            f'CREATE TRIGGER notify_change_truncate AFTER TRUNCATE ON "{table}" '
            "FOR EACH STATEMENT EXECUTE FUNCTION agentapi_notify_change('')",
        ]

    def backwards_sql(self, table):
        return [
            f'DROP TRIGGER IF EXISTS notify_change_rows ON "{table}"',
            f'DROP TRIGGER IF EXISTS notify_change_truncate ON "{table}"',
        ]
