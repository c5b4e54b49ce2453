"""PostgreSQL backend that carries the tenant scope into row-level security settings.

Before any statement runs, the connection's `app.*` settings are made to match
agentapi.db.scope.current_scope(). Inside a transaction they are set transaction-local
(`set_config(..., true)`), so nothing outlives the transaction even behind a pooler; in autocommit
they are set for the session and re-checked before the next statement. Anything that can undo a
setting (commit, rollback, rollback to a savepoint, a change of autocommit, a new connection)
forgets what was applied, so the next statement sets it again. The setting statement is pipelined
with the statement it precedes, so it costs no extra round trip.

django-prometheus's cursor wrapper counts every statement and its duration and the connections
made (django_db_execute_total, django_db_query_duration_seconds, django_db_new_connections_total),
as its own PostgreSQL backend does; the data plane's statements (agentapi.db.aio) are not
Django's and are not counted there.
"""

import psycopg
from django.db.backends.postgresql import base
from django_prometheus.db.common import DatabaseWrapperMixin, ExportingCursorWrapper

from agentapi.db.scope import DatabaseScope, current_scope

_SET_SCOPE_SQL = "SELECT " + ", ".join("set_config(%s, %s, %s)" for _ in DatabaseScope().as_settings())


class DatabaseWrapper(DatabaseWrapperMixin, base.DatabaseWrapper):
    def get_connection_params(self):
        params = super().get_connection_params()
        params["cursor_factory"] = ExportingCursorWrapper(params["cursor_factory"], self.alias, self.vendor)
        return params

    def create_cursor(self, name=None):
        # psycopg makes the counting cursors (cursor_factory above); the mixin's create_cursor
        # is psycopg 2's way (as django_prometheus.db.backends.postgresql does).
        return base.DatabaseWrapper.create_cursor(self, name=name)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._applied_scope = None
        self.scope_statements = 0  # how many set_config round trips this connection made (tests, benchmarks)
        self.execute_wrappers.append(self._apply_scope)

    def _apply_scope(self, execute, sql, params, many, context):
        scope = current_scope()
        if scope == self._applied_scope:
            return execute(sql, params, many, context)
        local = not self.get_autocommit()
        args = []
        for name, value in scope.as_settings():
            args += [name, value, local]
        self.scope_statements += 1
        if many or params is None or isinstance(context["cursor"].cursor, psycopg.ServerCursor):
            # executemany pipelines on its own; a named cursor cannot run in a pipeline; nor can a
            # statement without parameters, which may be several commands (a schema change adding a
            # foreign key is one, then SET CONSTRAINTS) that only the simple protocol runs. The
            # ORM always passes parameters, if only an empty tuple.
            with self.wrap_database_errors, self.connection.cursor() as cursor:
                cursor.execute(_SET_SCOPE_SQL, args)
            self._applied_scope = scope
            return execute(sql, params, many, context)
        # Pipelined: the scope, the statement and the BEGIN psycopg puts before them when a
        # transaction starts travel in one round trip instead of three. The scope gets a cursor of
        # its own so the statement's cursor holds only the statement's results.
        with self.wrap_database_errors, self.connection.pipeline(), self.connection.cursor() as cursor:
            cursor.execute(_SET_SCOPE_SQL, args)
            self._applied_scope = scope
            return execute(sql, params, many, context)

    def _forget_scope(self):
        self._applied_scope = None

    def connect(self):
        self._forget_scope()
        return super().connect()

    def _commit(self):
        self._forget_scope()
        return super()._commit()

    def _rollback(self):
        self._forget_scope()
        return super()._rollback()

    def _savepoint_rollback(self, sid):
        result = super()._savepoint_rollback(sid)
        self._forget_scope()
        return result

    def _set_autocommit(self, autocommit):
        self._forget_scope()
        return super()._set_autocommit(autocommit)

    def _close(self):
        self._forget_scope()
        return super()._close()
