"""Writes the listeners make at message rate, without the ORM's query building.

Building an INSERT through Model.save() costs a few hundred microseconds of CPU each time,
more than PostgreSQL takes to run it; the HL7 and DICOM listeners write several rows for
every message, association or query.
"""

from __future__ import annotations

from django.db import connections, models, router
from django.db.models.signals import post_save, pre_save

# (model, database alias) -> the INSERT statement, built once.
_STATEMENTS: dict[tuple[type[models.Model], str], str] = {}


def insert_row(instance: models.Model) -> None:
    """Write INSTANCE, a new row, with one INSERT; its primary key is set on return.

    It is what Model.save() does for a new row: field defaults and auto_now(_add) values,
    foreign keys by id. A model that a pre_save or post_save receiver listens to is saved
    with save(), so that no receiver is skipped; the model's own save() is not called.
    """
    model = type(instance)
    meta = model._meta
    if instance.pk is not None:
        raise ValueError(f"{meta.label} {instance.pk} is written already: insert_row adds rows")
    if pre_save.has_listeners(model) or post_save.has_listeners(model) or meta.auto_field is None:
        instance.save(force_insert=True)
        return
    instance._prepare_related_fields_for_save(operation_name="save")  # type: ignore[attr-defined]
    connection = connections[router.db_for_write(model, instance=instance)]
    columns = [field for field in meta.concrete_fields if not field.primary_key]
    values = [
        field.get_db_prep_save(field.pre_save(instance, add=True), connection) for field in columns
    ]
    returning = connection.features.can_return_columns_from_insert
    statement = _STATEMENTS.get((model, connection.alias))
    if statement is None:
        quote = connection.ops.quote_name
        # Names from the model, placeholders for every value: nothing comes from input.
        statement = (
            f"INSERT INTO {quote(meta.db_table)} "  # noqa: S608
            f"({', '.join(quote(field.column) for field in columns)}) "
            f"VALUES ({', '.join(['%s'] * len(columns))})"
            + (f" RETURNING {quote(meta.pk.column)}" if returning else "")  # type: ignore[union-attr]
        )
        _STATEMENTS[(model, connection.alias)] = statement
    with connection.cursor() as cursor:
        cursor.execute(statement, values)
        instance.pk = cursor.fetchone()[0] if returning else cursor.lastrowid
    instance._state.adding = False
    instance._state.db = connection.alias
