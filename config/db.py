"""The cursor of the hot paths' statements.

Django binds parameters on the client (psycopg's ``ClientCursor``): each is quoted into
the SQL text, and PostgreSQL parses and plans every statement anew. The statements that
every request of the API makes (the account with its lines, the usage lock, a single
event's write, a reservation's insert) and a batch's large ones go instead through
``bound_cursor``: on PostgreSQL, parameters travel apart from the statement (server-side
binding), so a statement of the same text is the same statement, which psycopg prepares
on a connection once it has run ``prepare_threshold`` times there (the database's
``OPTIONS``, ``DATABASE_PREPARE_THRESHOLD`` in the environment, see the README); then
PostgreSQL neither parses nor, once it finds a generic plan as good, plans it again.
Planning was about half of PostgreSQL's CPU on the read paths (docs/performance.md).

Only these statements are prepared: the ORM's cursors stay client-side, since a
statement prepared on a connection stays in its memory (psycopg keeps at most
``prepared_max``, 100, per connection, and drops the least used), and most of the ORM's
statements vary in text with their arguments. Prepared statements are protocol-level,
as PgBouncer 1.21 and later keep them in transaction pooling (``max_prepared_statements``);
``DATABASE_PREPARE_THRESHOLD=off`` turns them off for older poolers.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from django.db import DEFAULT_DB_ALIAS, connections
from django.db.backends.utils import CursorDebugWrapper, CursorWrapper


@contextmanager
def bound_cursor() -> Iterator[Any]:
    """A cursor of the default connection; on PostgreSQL one with server-side binding.

    Wrapped as Django wraps its own, so query logging, ``CaptureQueriesContext`` and
    ``connection.execute_wrapper`` see its statements as any other. On other databases,
    Django's own cursor.
    """
    # The connection itself, not the proxy ``django.db.connection`` resolves at each access.
    db = connections[DEFAULT_DB_ALIAS]
    if db.vendor != "postgresql":
        with db.cursor() as cursor:
            yield cursor
        return
    from django.db.backends.postgresql.base import ServerBindingCursor

    db.ensure_connection()
    db.validate_thread_sharing()
    with db.wrap_database_errors:
        raw = ServerBindingCursor(db.connection)
    cursor = _DebugWrapper(raw, db) if db.queries_logged else db.make_cursor(raw)
    with cursor:
        yield cursor


class _DebugWrapper(CursorDebugWrapper):
    """Logs each statement with its parameters composed into it, as Django logs its own:
    psycopg keeps no text of a prepared statement's execution for Django to read back."""

    def execute(self, sql: str, params: Any = None) -> Any:
        from psycopg import Error

        try:
            logged = self.db.ops.compose_sql(sql, params)
        except Error:  # a parameter that cannot be written as a literal: log the text
            logged = sql
        with self.debug_sql(logged, params):
            return CursorWrapper.execute(self, sql, params)
