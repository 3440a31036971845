"""Statements the listeners run at message rate, without the ORM's query building.

Building an INSERT through Model.save() costs a few hundred microseconds of CPU each time,
more than PostgreSQL takes to run it; the HL7 and DICOM listeners write several rows for
every message, association or query. On PostgreSQL the statements here also skip Django's
cursor wrapper (about 40 µs a statement) for one psycopg cursor kept per connection, with
Django's error translation and broken-transaction check kept; and inside `writes_together`
rows whose id nobody waits for travel to the server together, with the COMMIT.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from django.core.exceptions import EmptyResultSet, FullResultSet
from django.db import DEFAULT_DB_ALIAS, connections, models, router, transaction
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.models import QuerySet
from django.db.models.signals import post_save, pre_save
from django.db.models.sql import Query
from psycopg import ClientCursor, generators
from psycopg import errors as psycopg_errors
from psycopg.pq import ExecStatus, TransactionStatus

Rows = list[tuple[Any, ...]]

# (model, database alias) -> the INSERT statement, built once.
_STATEMENTS: dict[tuple[type[models.Model], str, bool], str] = {}


def fetch(sql: str, params: Sequence[Any] = (), *, using: str = DEFAULT_DB_ALIAS) -> Rows:
    """Run SQL with PARAMS on database USING; return the rows it answers (none: [])."""
    connection = connections[using]
    pending = _pending(connection)
    if pending is not None:
        if pending.ahead:
            try:
                rows = pending.ahead.pop((sql, tuple(params)), None)
            except TypeError:  # a parameter that is no key (a list): not read ahead
                rows = None
            if rows is not None:
                return rows
            pending.ahead.clear()  # another statement runs: what was read may be stale
        _flush(connection)
    cursor = _fast_cursor(connection)
    if cursor is None:
        with connection.cursor() as slow:
            slow.execute(sql, params)
            return slow.fetchall() if slow.description is not None else []
    started = time.monotonic() if connection.queries_logged else 0.0
    with connection.wrap_database_errors:
        cursor.execute(sql, params)
        rows = cursor.fetchall() if _has_rows(cursor) else []
    if started:
        _log(connection, sql, params, started)
    return rows


def insert_row(instance: models.Model, *, wait: bool = True) -> None:
    """Write INSTANCE, a new row, with one INSERT; its primary key is set on return.

    It is what Model.save() does for a new row: field defaults and auto_now(_add) values,
    foreign keys by id. A model that a pre_save or post_save receiver listens to is saved
    with save(), so that no receiver is skipped; the model's own save() is not called.

    Without WAIT, inside `writes_together`, the row goes to the server with the next
    statement, and its primary key is set then: for rows no one asks for by id meanwhile.
    """
    model = type(instance)
    meta = model._meta
    if instance.pk is not None:
        raise ValueError(f"{meta.label} {instance.pk} is written already: insert_row adds rows")
    if pre_save.has_listeners(model) or post_save.has_listeners(model) or meta.auto_field is None:
        instance.save(force_insert=True)
        return
    connection = connections[router.db_for_write(model, instance=instance)]
    returning = connection.features.can_return_columns_from_insert
    statement, values = _insert_of(instance, connection, returning)

    def written(rows: Rows) -> None:
        _written(instance, connection, rows[0][0])

    if not returning:  # no RETURNING (SQLite before 3.35): the id comes from the cursor
        with connection.cursor() as cursor:
            cursor.execute(statement, values)
            written([(cursor.lastrowid,)])
        return
    if not wait and _pending(connection) is not None:
        execute_later(statement, values, written, using=connection.alias)
        return
    written(fetch(statement, values, using=connection.alias))


def insert_rows_beside(instances: Sequence[models.Model]) -> Callable[[], None]:
    """Send the INSERTs of INSTANCES, new rows of one model, now, in one transaction of their
    own, and return the function that waits for the answer (the rows are then committed
    and their primary keys set; an error is raised there, and then none is written).
    PostgreSQL writes and commits the rows while the caller goes on, which must call the
    function before anything else uses this thread's connection. A statement sent whole
    is committed even if this process dies before it waits.

    Where that cannot be (not PostgreSQL, inside a transaction, Django's debug cursor, a
    model with save receivers), the rows are written at once and the function does nothing.
    """
    if not instances:
        return _nothing
    model = type(instances[0])
    connection = connections[router.db_for_write(model, instance=instances[0])]
    if (
        connection.vendor != "postgresql"
        or connection.in_atomic_block
        or connection.queries_logged
        or pre_save.has_listeners(model)
        or post_save.has_listeners(model)
        or model._meta.auto_field is None
        or any(type(instance) is not model or instance.pk is not None for instance in instances)
    ):
        return _written_at_once(instances)
    _fast_cursor(connection)  # connected, and no broken transaction
    raw = connection.connection
    if raw.pgconn.transaction_status != _IDLE or not raw.autocommit:
        return _written_at_once(instances)
    pgconn = raw.pgconn
    with connection.wrap_database_errors:
        # One query string, the values quoted by psycopg as execute() would. The simple
        # protocol runs its statements in one transaction, committed at its end (no BEGIN:
        # the connection is in autocommit).
        client = _client_cursor(connection)
        text = "; ".join(
            client.mogrify(*_insert_of(instance, connection, True)) for instance in instances
        )
        pgconn.send_query(text.encode(raw.info.encoding))
        raw.wait(generators.send(pgconn))

    def answered() -> None:
        with connection.wrap_database_errors:
            results = raw.wait(generators.fetch_many(pgconn))
            for result in results:
                if result.status == ExecStatus.FATAL_ERROR:
                    raise psycopg_errors.error_from_result(result, encoding=raw.info.encoding)
        for instance, result in zip(instances, results, strict=True):
            _written(instance, connection, int(result.get_value(0, 0)))  # type: ignore[arg-type]

    return answered


def _written_at_once(instances: Sequence[models.Model]) -> Callable[[], None]:
    """Write INSTANCES now, all or none, as the statement sent would have."""
    with transaction.atomic(using=router.db_for_write(type(instances[0]), instance=instances[0])):
        for instance in instances:
            insert_row(instance)
    return _nothing


def _insert_of(
    instance: models.Model, connection: BaseDatabaseWrapper, returning: bool
) -> tuple[str, list[Any]]:
    """The INSERT of INSTANCE, a new row, and its values, as Model.save() makes them."""
    model = type(instance)
    instance._prepare_related_fields_for_save(operation_name="save")  # type: ignore[attr-defined]
    key = (model, connection.alias, returning)
    statement = _STATEMENTS.get(key)
    if statement is None:
        statement = _STATEMENTS[key] = _insert_statement(model, connection, returning)
    values = [
        field.get_db_prep_save(field.pre_save(instance, add=True), connection)
        for field in model._meta.concrete_fields
        if not field.primary_key
    ]
    return statement, values


def _written(instance: models.Model, connection: BaseDatabaseWrapper, pk: Any) -> None:
    instance.pk = pk
    instance._state.adding = False
    instance._state.db = connection.alias


def _nothing() -> None:
    return None


def insert_rows(parent: models.Model, child: models.Model, link: str) -> None:
    """Write PARENT and CHILD, new rows, CHILD's foreign key LINK naming PARENT: one
    statement on PostgreSQL (a data-modifying WITH), insert_row twice elsewhere."""
    connection = connections[router.db_for_write(type(parent), instance=parent)]
    models_ = (type(parent), type(child))
    if (
        connection.vendor != "postgresql"
        or any(pre_save.has_listeners(m) or post_save.has_listeners(m) for m in models_)
        or any(m._meta.auto_field is None for m in models_)
        or parent.pk is not None
        or child.pk is not None
    ):
        insert_row(parent)
        insert_row(child)
        return
    foreign_key = child._meta.get_field(link)
    parent._prepare_related_fields_for_save(operation_name="save")  # type: ignore[attr-defined]
    others = [f for f in child._meta.concrete_fields if f is not foreign_key]
    child._prepare_related_fields_for_save(operation_name="save", fields=others)  # type: ignore[attr-defined]
    key = (type(child), f"{connection.alias}:{link}", True)
    statement = _STATEMENTS.get(key)
    if statement is None:
        quote = connection.ops.quote_name
        child_meta, parent_pk = child._meta, quote(type(parent)._meta.pk.column)  # type: ignore[union-attr]
        columns = [f for f in child_meta.concrete_fields if not f.primary_key]
        placeholders = ", ".join(
            f"(SELECT {parent_pk} FROM parent)" if f is foreign_key else "%s"  # noqa: S608
            for f in columns
        )
        child_pk = quote(child_meta.pk.column)  # type: ignore[union-attr]
        # Names from the models, placeholders for every value: nothing comes from input.
        statement = _STATEMENTS[key] = (
            f"WITH parent AS ({_insert_statement(type(parent), connection, True)}) "  # noqa: S608
            f"INSERT INTO {quote(child_meta.db_table)} "
            f"({', '.join(quote(f.column) for f in columns)}) VALUES ({placeholders}) "
            f"RETURNING {quote(foreign_key.column)}, {child_pk}"  # type: ignore[union-attr, arg-type]
        )
    values = [
        field.get_db_prep_save(field.pre_save(instance, add=True), connection)
        for instance in (parent, child)
        for field in instance._meta.concrete_fields
        if not field.primary_key and field is not foreign_key
    ]
    [(parent_pk_value, child_pk_value)] = fetch(statement, values, using=connection.alias)
    for instance, pk in ((parent, parent_pk_value), (child, child_pk_value)):
        instance.pk = pk
        instance._state.adding = False
        instance._state.db = connection.alias
    setattr(child, foreign_key.attname, parent_pk_value)  # type: ignore[union-attr]


def _insert_statement(
    model: type[models.Model], connection: BaseDatabaseWrapper, returning: bool
) -> str:
    meta = model._meta
    quote = connection.ops.quote_name
    columns = [field.column for field in meta.concrete_fields if not field.primary_key]
    # Names from the model, placeholders for every value: nothing comes from input.
    return (
        f"INSERT INTO {quote(meta.db_table)} "  # noqa: S608
        f"({', '.join(quote(column) for column in columns)}) "
        f"VALUES ({', '.join(['%s'] * len(columns))})"
        + (f" RETURNING {quote(meta.pk.column)}" if returning else "")  # type: ignore[union-attr]
    )


# ---------------------------------------------------------------- writes together


@dataclass
class _Pending:
    """Statements waiting to go to the server with the next one, in order."""

    statements: list[tuple[str, Sequence[Any], Callable[[Rows], None] | None]] = field(
        default_factory=list
    )
    # Rows read by read_ahead, by statement and parameters, until anything else runs.
    ahead: dict[tuple[str, tuple[Any, ...]], Rows] = field(default_factory=dict)


def _pending(connection: BaseDatabaseWrapper) -> _Pending | None:
    pending: _Pending | None = getattr(connection, "_core_db_pending", None)
    return pending


def execute_later(
    sql: str,
    params: Sequence[Any],
    then: Callable[[Rows], None] | None = None,
    *,
    using: str = DEFAULT_DB_ALIAS,
) -> None:
    """Run SQL with the next statement on USING inside `writes_together`, at once outside it.

    THEN, if given, gets its rows. An error it meets is raised by the statement it travels
    with (or the commit): for writes whose failure fails the whole transaction anyway.
    """
    connection = connections[using]
    pending = _pending(connection)
    if pending is None:
        rows = fetch(sql, params, using=using)
        if then is not None:
            then(rows)
        return
    pending.ahead.clear()
    pending.statements.append((sql, params, then))


def read_ahead(
    statements: Sequence[tuple[str, Sequence[Any]]], *, using: str = DEFAULT_DB_ALIAS
) -> None:
    """Run STATEMENTS, reads a caller is about to make, together in one round trip.

    Inside `writes_together` on PostgreSQL, `fetch` then answers each of them, with the same
    parameters, from what was read, as long as nothing else ran or waits to run on the
    connection meanwhile (then what was read is dropped). Elsewhere it does nothing: a
    statement read ahead and not asked for costs its run, one asked for and not read ahead
    runs as usual.
    """
    connection = connections[using]
    pending = _pending(connection)
    if pending is None or not statements or connection.queries_logged:
        return
    if _fast_cursor(connection) is None:
        return
    _flush(connection)
    raw = connection.connection
    begin = raw.pgconn.transaction_status == _IDLE and not raw.autocommit
    if begin:
        # psycopg would send BEGIN on its own and wait for it: it goes with the reads
        # instead. psycopg is told to leave transactions alone (its autocommit) while this
        # one is open; Django's commit or rollback ends it as usual, and Django turns
        # psycopg's autocommit on again at the end of the atomic block anyway.
        raw.autocommit = True
    rows_read = _together(connection, statements, begin=begin)
    for rows, (sql, params) in zip(rows_read, statements, strict=True):
        with contextlib.suppress(TypeError):  # a parameter that is no key: asked for, it runs
            pending.ahead[(sql, tuple(params))] = rows


@contextmanager
def writes_together(
    *, commit: bool = False, together: bool = True, using: str = DEFAULT_DB_ALIAS
) -> Iterator[None]:
    """Within the block, let `execute_later` statements wait for the next statement on USING.

    They are sent before any other statement runs (Django's queries included), so no read
    misses them, and at the end of the block. With COMMIT, the block must be the end of the
    outermost atomic block: the statements go with the COMMIT, in one round trip, and
    Django's own commit then finds nothing left to do. An error drops what is waiting: the
    transaction rolls back. Not TOGETHER: each statement runs when it is given, as outside.
    """
    connection = connections[using]
    if not together or _pending(connection) is not None:  # nested: the outer block sends
        yield
        return
    pending = connection._core_db_pending = _Pending()  # type: ignore[attr-defined]
    try:
        with connection.execute_wrapper(_flush_first):
            yield
        _flush(connection, commit=commit and not connection.needs_rollback)
    finally:
        pending.statements.clear()
        connection._core_db_pending = None  # type: ignore[attr-defined]


def _flush_first(
    execute: Callable[..., Any], sql: str, params: Any, many: bool, context: Any
) -> Any:
    connection = context["connection"]
    pending = _pending(connection)
    if pending is not None:
        pending.ahead.clear()
    _flush(connection)
    return execute(sql, params, many, context)


def _flush(connection: BaseDatabaseWrapper, *, commit: bool = False) -> None:
    """Send what waits for the next statement on CONNECTION, with the COMMIT if asked."""
    pending = _pending(connection)
    if pending is None or not pending.statements:
        return
    statements, pending.statements = pending.statements, []
    cursor = None if connection.queries_logged else _fast_cursor(connection)
    if cursor is None:  # not PostgreSQL, or counted by Django's debug cursor: one at a time
        for sql, params, then in statements:
            with connection.cursor() as slow:
                slow.execute(sql, params)
                rows = slow.fetchall() if slow.description is not None else []
            if then is not None:
                then(rows)
        return
    texts = [(sql, params) for sql, params, _ in statements]
    results = _together(connection, texts, commit=commit)
    # Django's commit then finds the transaction ended: psycopg sends no COMMIT when none
    # is open.
    for (_, _, then), rows in zip(statements, results, strict=True):
        if then is not None:
            then(rows)


def _together(
    connection: BaseDatabaseWrapper,
    statements: Sequence[tuple[str, Sequence[Any]]],
    *,
    begin: bool = False,
    commit: bool = False,
) -> list[Rows]:
    """Run STATEMENTS (after a BEGIN, before a COMMIT) in one round trip on PostgreSQL;
    return their rows."""
    cursors = _pipeline_cursors(connection, len(statements) + begin + commit)
    if cursors is None:
        return _together_in_one_string(connection, statements, begin=begin, commit=commit)
    # A psycopg pipeline: every statement is sent without waiting for the one before, and
    # the answers are read after the last. Unlike one query string, each is bound by the
    # server and, run often, prepared: PostgreSQL parses and plans it once per connection
    # (a read-ahead's three SELECTs with their BEGIN and COMMIT: 0.48 -> 0.13 ms of server
    # CPU). An error skips what follows it up to the end of the pipeline, the COMMIT
    # included, and psycopg raises it when the pipeline ends; Django then rolls back.
    controls = iter(cursors[len(statements) :])
    raw = connection.connection
    with connection.wrap_database_errors, raw.pipeline():
        if begin:
            next(controls).execute("BEGIN")
        for cursor, (sql, params) in zip(cursors, statements, strict=False):
            cursor.execute(sql, params)
        if commit:
            next(controls).execute("COMMIT")
    return [cursor.fetchall() if _has_rows(cursor) else [] for cursor in cursors[: len(statements)]]


def _together_in_one_string(
    connection: BaseDatabaseWrapper,
    statements: Sequence[tuple[str, Sequence[Any]]],
    *,
    begin: bool,
    commit: bool,
) -> list[Rows]:
    # Where the server does not bind parameters (DATABASE_PREPARED_STATEMENTS=0, for a
    # pooler): one query string, values bound by psycopg on this side (its quoting); the
    # server gets the statements in one packet and answers them in one.
    text = "; ".join(sql for sql, _ in statements) + ("; COMMIT" if commit else "")
    if begin:
        text = "BEGIN; " + text
    values = [value for _, params in statements for value in params]
    client = _client_cursor(connection)
    results: list[Rows] = []
    with connection.wrap_database_errors:
        client.execute(text, values)
        if begin:
            client.nextset()
        for _ in statements:
            results.append(client.fetchall() if _has_rows(client) else [])
            client.nextset()
    return results


# ---------------------------------------------------------------- the cursor


_IDLE = TransactionStatus.IDLE
_TUPLES_OK = ExecStatus.TUPLES_OK


def _fast_cursor(connection: BaseDatabaseWrapper) -> Any:
    """This connection's own psycopg cursor, or None where Django's cursor must be used."""
    if connection.vendor != "postgresql" or any(
        wrapper is not _flush_first for wrapper in connection.execute_wrappers
    ):
        return None
    connection.close_if_health_check_failed()
    connection.ensure_connection()
    connection.validate_no_broken_transaction()
    raw = connection.connection
    cached = getattr(connection, "_core_db_cursor", None)
    if cached is None or cached[0] is not raw:
        with connection.wrap_database_errors:
            cached = (raw, connection.create_cursor())
        connection._core_db_cursor = cached  # type: ignore[attr-defined]
    return cached[1]


def _pipeline_cursors(connection: BaseDatabaseWrapper, count: int) -> list[Any] | None:
    """COUNT of this connection's own server-binding cursors, kept from one use to the
    next (a pipeline keeps each statement's answer on the cursor that sent it); None where
    the connection's cursors bind on this side."""
    first = _fast_cursor(connection)
    if first is None or isinstance(first, ClientCursor):
        return None
    raw = connection.connection
    cached = getattr(connection, "_core_db_pipeline_cursors", None)
    if cached is None or cached[0] is not raw:
        cached = (raw, [])
        connection._core_db_pipeline_cursors = cached  # type: ignore[attr-defined]
    cursors: list[Any] = cached[1]
    while len(cursors) < count:
        with connection.wrap_database_errors:
            cursors.append(connection.create_cursor())
    return cursors[:count]


def _has_rows(cursor: Any) -> bool:
    # Not cursor.description: psycopg builds a Column for each column to answer it.
    result = cursor.pgresult
    return result is not None and result.status == _TUPLES_OK


def _client_cursor(connection: BaseDatabaseWrapper) -> Any:
    """This connection's psycopg ClientCursor: several statements in one query string."""
    from django.db.backends.postgresql.base import TIMESTAMPTZ_OID  # type: ignore[attr-defined]
    from django.db.backends.postgresql.psycopg_any import register_tzloader
    from psycopg.pq import Format

    raw = connection.connection
    cached = getattr(connection, "_core_db_client_cursor", None)
    if cached is None or cached[0] is not raw:
        cursor = ClientCursor(raw)
        # As Django's create_cursor: times in the connection's time zone.
        loader = raw.adapters.get_loader(TIMESTAMPTZ_OID, Format.TEXT)
        if connection.timezone != loader.timezone:  # type: ignore[attr-defined]
            register_tzloader(connection.timezone, cursor)  # type: ignore[attr-defined]
        cached = (raw, cursor)
        connection._core_db_client_cursor = cached  # type: ignore[attr-defined]
    return cached[1]


def _log(connection: BaseDatabaseWrapper, sql: str, params: Sequence[Any], started: float) -> None:
    """Log the statement as Django's debug cursor does (assertNumQueries counts it)."""
    connection.queries_log.append(
        {"sql": f"{sql} -- {list(params)!r}", "time": f"{time.monotonic() - started:.3f}"}
    )


# ---------------------------------------------------------------- queries of one shape


def shaped(model: type[models.Model]) -> QuerySet[Any]:
    """MODEL's rows, as MODEL.objects.all(), but compiled once per shape: queries built the
    same way and differing only in their values reuse the SQL of the first.

    Django builds the whole SQL of a query every time, its select list and ORDER BY too:
    about 0.3 ms of a C-FIND matching a study, more than PostgreSQL takes to answer it.
    Here only the WHERE clause is compiled, for the values; the rest, and what Django
    reads the rows with, is kept from the first query of that shape (its WHERE, joins,
    ordering, slice, selected columns). A query whose other parts take values of their
    own is compiled whole every time.
    """
    return QuerySet(model=model, query=_ShapedQuery(model))


class _ShapedQuery(Query):
    def get_compiler(
        self,
        using: str | None = None,
        connection: BaseDatabaseWrapper | None = None,
        elide_empty: bool = True,
    ) -> Any:
        if connection is None:
            connection = connections[using or DEFAULT_DB_ALIAS]
        base = connection.ops.compiler(self.compiler)
        compiler = _SHAPED_COMPILERS.get(base)
        if compiler is None:
            compiler = type(f"Shaped{base.__name__}", (_Shaped, base), {})
            _SHAPED_COMPILERS[base] = compiler
        return compiler(self, connection, using, elide_empty)


class _Shaped:
    """A compiler that keeps, per shape of query, what as_sql makes besides the WHERE."""

    query: Query
    connection: BaseDatabaseWrapper

    def as_sql(self, with_limits: bool = True, with_col_aliases: bool = False) -> Any:
        query = self.query
        if (
            query.combinator
            or query.extra
            or (query.select and not query.values_select)
            or query.select_for_update
            or query.deferred_loading != (frozenset(), True)
        ):  # parts the key below does not tell apart: compiled whole
            return super().as_sql(with_limits, with_col_aliases)  # type: ignore[misc]
        try:
            where, params = self.compile(query.where)  # type: ignore[attr-defined]
        except FullResultSet:
            where, params = "", []
        except EmptyResultSet:  # Django answers it without a query, or with "0 = 1"
            return super().as_sql(with_limits, with_col_aliases)  # type: ignore[misc]
        key = (
            self.connection.alias,
            query.model,
            with_limits,
            with_col_aliases,
            where,
            tuple(
                (alias, join.table_name, join.join_type, getattr(join, "parent_alias", None))
                for alias, join in query.alias_map.items()
            ),
            query.order_by,
            query.low_mark,
            query.high_mark,
            query.distinct,
            query.default_cols,
            repr(query.select_related),
            query.values_select,
            repr(query.annotations),
            repr(query.group_by),
        )
        shape = _SHAPES.get(key)
        if shape is not None:
            sql, self.select, self.klass_info, self.annotation_col_map, self.col_count = shape
            self.has_extra_select = False
            return sql, tuple(params)
        sql, all_params = super().as_sql(with_limits, with_col_aliases)  # type: ignore[misc]
        # Kept only when the WHERE's values are all the query's values, in the same order
        # (a select list or ordering of their own would take values too).
        if tuple(all_params) == tuple(params) and not self.has_extra_select:
            if len(_SHAPES) >= KEPT_SHAPES:
                _SHAPES.clear()
            _SHAPES[key] = (
                sql,
                self.select,
                self.klass_info,
                self.annotation_col_map,
                self.col_count,
            )
        return sql, all_params

    # Set by as_sql (SQLCompiler's own attributes).
    select: Any
    klass_info: Any
    annotation_col_map: Any
    col_count: int
    has_extra_select: bool


KEPT_SHAPES = 256
_SHAPES: dict[tuple[Any, ...], tuple[Any, ...]] = {}
_SHAPED_COMPILERS: dict[type[Any], type[Any]] = {}
