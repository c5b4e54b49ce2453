"""The data plane's database access: async psycopg, the tenant scope, one round trip per unit.

Why not the ORM here. The data plane (agentapi.dataplane) serves every tool call an agent makes on
the ASGI event loop. Django's ORM is synchronous: from the loop, each query would be a hand-off to a
worker thread and back (sync_to_async), and a request that holds a thread while an upstream answers
is what the data plane exists to avoid. Its async methods (aget, afirst...) are the same hand-off
underneath. Building a query also costs more CPU than running it on this path (the configuration
lookup measured 2.2 ms, mostly query compilation). So the few statements the data plane needs are
fixed SQL, built once from the models' own metadata, run here, and turned back into model
instances with `Model.from_db`, which is what the ORM does with a row: the models, their methods
and their rules stay the one model layer. Everything else (the management API, the admin, tasks)
uses the ORM.

What this module guarantees, as the ORM backend does (agentapi.db.backends.postgresql):
- every unit runs in a transaction whose first statement sets the row-level security scope
  (transaction-local, so nothing outlives it on a pooled connection);
- BEGIN, the scope, the statements and COMMIT travel as one query: one round trip;
- it connects as DATABASE_URL's role (no BYPASSRLS).

One query, bound on the client. A unit's statements are sent as one multi-statement query with
psycopg's client-side binding (values quoted by libpq's own escaping, for the connection's
encoding), not as a pipeline of server-bound statements: measured on this path, psycopg's async
pipeline cost 0.54 ms of CPU for BEGIN, scope, one SELECT and COMMIT, one query 0.27 ms, four
round trips 0.72 ms. Client-side binding cannot use the extended protocol's prepared statements,
so the hot statements are prepared with SQL instead (`Statement`: PREPARE once per connection, in
the same query as its first use; EXECUTE after): PostgreSQL plans them, row-level security
policies included, once per connection.

Connections come from a psycopg pool per event loop (the web process's loop in production; the MCP
pool's loop thread in tests and commands). PostgreSQL only: the embedded SQLite profile serves the
data plane's routes on the management plane instead (agentapi.dataplane.enabled).
"""

import asyncio
import functools
import logging
import random
import re
import time
import weakref
from dataclasses import dataclass

import psycopg
from django.conf import settings
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from agentapi.db.operations import CHANGES_CHANNEL
from agentapi.db.scope import DatabaseScope

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Statement:
    """A statement of the data plane, prepared on each connection the first time it runs there.
    `sql` uses %s placeholders (and no other %); `name` is unique among statements."""

    name: str
    sql: str

    def prepare_sql(self) -> str:
        count = iter(range(1, self.sql.count("%s") + 1))
        return f"PREPARE {self.name} AS " + re.sub(r"%s", lambda _: f"${next(count)}", self.sql)

    def execute_sql(self, params: list) -> str:
        return _execute_sql(self.name, len(params))


@functools.cache
def _execute_sql(name: str, count: int) -> str:
    return f"EXECUTE {name}" + (f"({', '.join('%s' for _ in range(count))})" if count else "")


# The settings' names are our own constants: written into the statement, only the values are bound.
_SET_SCOPE = Statement(
    "agentapi_set_scope",
    "SELECT " + ", ".join(f"set_config('{name}', %s, true)" for name, _ in DatabaseScope().as_settings()),
)
# What each connection has prepared (forgotten, and deallocated, when a unit fails on it).
_prepared: "weakref.WeakKeyDictionary[psycopg.AsyncConnection, set[str]]" = weakref.WeakKeyDictionary()
_pools: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, AsyncConnectionPool]" = weakref.WeakKeyDictionary()
_opening: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock]" = weakref.WeakKeyDictionary()


def available() -> bool:
    """True when the default database is PostgreSQL (the data plane needs it)."""
    return settings.DATABASES["default"]["ENGINE"].endswith("postgresql")


def _conninfo() -> dict:
    config = settings.DATABASES["default"]
    info = {
        "dbname": config["NAME"],
        "user": config.get("USER") or None,
        "password": config.get("PASSWORD") or None,
        "host": config.get("HOST") or None,
        "port": str(config["PORT"]) if config.get("PORT") else None,
        "application_name": "agentapi-dataplane",
        "options": "-c TimeZone=UTC",
    }
    return {name: value for name, value in info.items() if value is not None}


async def _configure(connection: psycopg.AsyncConnection) -> None:
    # Autocommit: each unit sends its own BEGIN and COMMIT in its one query.
    await connection.set_autocommit(True)
    # psycopg never prepares on its own here: this module prepares what it runs (Statement), and
    # the DEALLOCATE ALL after a failure would otherwise also drop what psycopg thinks it has
    # prepared (the load suite found a ROLLBACK run five times, prepared by psycopg, then missing).
    connection.prepare_threshold = None


async def pool() -> AsyncConnectionPool:
    loop = asyncio.get_running_loop()
    found = _pools.get(loop)
    if found is not None:
        return found
    opening = _opening.setdefault(loop, asyncio.Lock())
    async with opening:
        found = _pools.get(loop)
        if found is None:
            found = AsyncConnectionPool(
                kwargs=_conninfo(),
                min_size=1,
                max_size=settings.DATA_PLANE_DATABASE_CONNECTIONS,
                timeout=settings.DATA_PLANE_DATABASE_TIMEOUT,
                configure=_configure,
                open=False,
                name="dataplane",
            )
            await found.open(wait=False)
            _pools[loop] = found
    return found


async def close() -> None:
    """Close the running loop's pool and its Changes (a worker stopping, a test's loop ending)."""
    loop = asyncio.get_running_loop()
    found = _pools.pop(loop, None)
    if found is not None:
        await found.close()
    watching = _changes.pop(loop, None)
    if watching is not None:
        await watching.close()


class Changes:
    """Committed changes to what decides a caller's access, heard as they happen: what the data
    plane keeps between requests (mcp.dataplane's access cache) is good only while this says
    nothing it depends on changed since it was read.

    One LISTEN connection per event loop on the channel the tables' triggers announce on
    (agentapi.db.operations.NotifyChanges: API keys, memberships, users, organizations, MCP
    configurations, tool pins; the payload is the organization concerned, or '*'). Every
    notification is numbered; `mark()` is the number before a read, and `unchanged_since(mark,
    organization)` is true while no notification for that organization (or for all) came after it
    and the channel is known to carry notifications.

    Known to carry them: every CHANGES_HEARTBEAT_SECONDS this process announces a heartbeat of its
    own through the data plane's pool, another connection, and listens for it. Until the first
    comes back, and whenever one is more than twice that late (the listener's connection lost,
    PostgreSQL restarted, a proxy such as PgBouncer in transaction mode that does not carry
    LISTEN), nothing is unchanged; once one comes back after such a gap, everything read before it
    is out of date, since notifications may have been missed.

    What is left is the time a notification takes to arrive once the change is committed
    (PostgreSQL sends it to an idle listener at once: well under a millisecond on loopback): a
    request in that moment is answered as one that came just before the change.
    """

    def __init__(self):
        self.number = 0
        self._everything = 0  # the number of the last notification for every organization
        self._by_organization: dict[int, int] = {}
        self._heartbeat = f"heartbeat:{id(self):x}:{random.getrandbits(64):x}"
        self._heard_at: float | None = None  # when our heartbeat last came back
        self._connected = False
        self._beat_now = asyncio.Event()  # set: send a heartbeat now (a connection just made)
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._listen()), loop.create_task(self._beat())]

    @property
    def listening(self) -> bool:
        return (
            self._connected
            and self._heard_at is not None
            and time.monotonic() - self._heard_at < 2 * settings.CHANGES_HEARTBEAT_SECONDS
        )

    def mark(self) -> int | None:
        """The number to keep with what is read now, or None when nothing read now may be kept."""
        return self.number if self.listening else None

    def unchanged_since(self, mark: int | None, organization_id: int) -> bool:
        return (
            mark is not None
            and self.listening
            and self._everything <= mark
            and self._by_organization.get(organization_id, 0) <= mark
        )

    def _heard(self, payload: str) -> None:
        if payload.startswith("heartbeat:"):
            if payload == self._heartbeat:
                if not self.listening:
                    self._heard("*")  # after a gap, or at the start: what was read before is out of date
                self._heard_at = time.monotonic()
            return  # another process's heartbeat
        self.number += 1
        if payload.isdigit():
            self._by_organization[int(payload)] = self.number
        else:
            self._everything = self.number

    async def _listen(self) -> None:
        delay = 0.5
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                    **{**_conninfo(), "application_name": "agentapi-dataplane-changes"}, autocommit=True
                ) as connection:
                    await connection.execute(f"LISTEN {CHANGES_CHANNEL}")
                    self._connected, delay = True, 0.5
                    self._heard_at = None  # until our heartbeat comes back on this connection
                    self._beat_now.set()
                    async for notification in connection.notifies():
                        self._heard(notification.payload)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if self._connected:
                    log.warning("data plane change notifications lost: %s", type(exc).__name__)
            finally:
                self._connected = False
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    async def _beat(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._beat_now.wait(), settings.CHANGES_HEARTBEAT_SECONDS)
            except TimeoutError:
                pass
            self._beat_now.clear()
            if not self._connected:
                continue
            try:
                await run(DatabaseScope(), [("SELECT pg_notify(%s, %s)", [CHANGES_CHANNEL, self._heartbeat])])
            except Exception as exc:  # the database is down: the heartbeat is late, nothing is kept
                log.debug("data plane heartbeat not sent: %s", type(exc).__name__)

    async def close(self) -> None:
        self._connected = False
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


_changes: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Changes]" = weakref.WeakKeyDictionary()


def listen_for_changes() -> None:
    """EVENT_LOOP_STARTUP: listen from before the first request, so that the first are kept too."""
    if settings.DATA_PLANE_ENABLED and available():
        changes()


def changes() -> Changes:
    """The running loop's Changes, started on first use (it listens from its first moments on)."""
    loop = asyncio.get_running_loop()
    found = _changes.get(loop)
    if found is None:
        found = _changes[loop] = Changes()
    return found


_TUPLES_OK = psycopg.pq.ExecStatus.TUPLES_OK


def _adapt(params):
    return [Jsonb(value) if isinstance(value, (dict, list)) else value for value in params]


async def run(scope: DatabaseScope, statements: list[tuple[Statement | str, list]]) -> list[list[tuple]]:
    """Run the statements in one transaction under `scope`, in one round trip; return each one's
    rows (an empty list for a statement that returns none). Raises psycopg errors as they come."""
    scope_params = [value for _, value in scope.as_settings()]
    found = await pool()
    try:
        return await _run(found, scope_params, statements)
    except psycopg.OperationalError:
        # A connection lost (PostgreSQL restarted or failed over): this request fails (a 503; its
        # statements are not sent again, their fate unknown), and the pool's other idle
        # connections, lost the same way, are tested and replaced at once, not each on a request.
        _check_soon(found)
        raise


_checking: "weakref.WeakSet[AsyncConnectionPool]" = weakref.WeakSet()
_checks: set = set()


def _check_soon(found: AsyncConnectionPool) -> None:
    if found in _checking:
        return
    _checking.add(found)

    async def check():
        try:
            await found.check()
        except Exception as exc:  # the database is still down: the next failure checks again
            log.warning("data plane pool check failed: %s", type(exc).__name__)
        finally:
            _checking.discard(found)
            _checks.discard(task)

    task = asyncio.get_running_loop().create_task(check())
    _checks.add(task)  # held until done: the loop keeps only a weak reference to a task


async def _run(found: AsyncConnectionPool, scope_params: list, statements) -> list[list[tuple]]:
    async with found.connection() as connection:
        prepared = _prepared.setdefault(connection, set())
        preparing, parts, params = [], ["BEGIN"], []
        for statement, statement_params in [(_SET_SCOPE, scope_params), *statements]:
            statement_params = _adapt(statement_params)
            if isinstance(statement, Statement):
                if statement.name not in prepared and statement not in preparing:
                    preparing.append(statement)
                parts.append(statement.execute_sql(statement_params))
            else:
                parts.append(statement)
            params += statement_params
        parts.append("COMMIT")
        query = "; ".join([*(statement.prepare_sql() for statement in preparing), *parts])
        cursor = psycopg.AsyncClientCursor(connection)
        try:
            # prepare=False: psycopg's own automatic preparing does not apply to client-side
            # binding, and deciding so costs CPU on every query.
            await cursor.execute(query, params, prepare=False)
            results = []
            while True:
                # The result's status, not `cursor.description`, which builds a Column object per
                # column each time it is read (a tenth of this function's CPU, profiled).
                returned_rows = cursor.pgresult is not None and cursor.pgresult.status == _TUPLES_OK
                results.append(await cursor.fetchall() if returned_rows else [])
                if not cursor.nextset():
                    break
            prepared.update(statement.name for statement in preparing)
        except BaseException:
            prepared.clear()
            if not connection.closed:
                if connection.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                    await connection.execute("ROLLBACK", prepare=False)
                await connection.execute("DEALLOCATE ALL", prepare=False)
            raise
        finally:
            await cursor.close()
    # The statements' own results: not the PREPAREs, BEGIN, the scope or COMMIT.
    return results[len(preparing) + 2 : -1]


def instance(model, attnames: list[str], values):
    """A model instance from loaded values, as the ORM makes one (fields not loaded are deferred)."""
    return model.from_db(None, attnames, list(values))


def attnames(model) -> list[str]:
    """A model's concrete fields' attribute names, in the order Model.from_db expects."""
    return [field.attname for field in model._meta.concrete_fields]


def columns(model, names: list[str] | None = None, alias: str = "") -> str:
    """The quoted columns of the named fields (all concrete fields when None), optionally aliased."""
    prefix = f"{alias}." if alias else ""
    return ", ".join(f'{prefix}"{model._meta.get_field(name).column}"' for name in (names or attnames(model)))


def insert_sql(model, attnames: list[str]) -> str:
    """INSERT of the given fields of a model (our own table and column names only)."""
    fields = [model._meta.get_field(name) for name in attnames]
    columns = ", ".join(f'"{field.column}"' for field in fields)
    placeholders = ", ".join("%s" for _ in fields)
    return f'INSERT INTO "{model._meta.db_table}" ({columns}) VALUES ({placeholders})'  # noqa: S608
