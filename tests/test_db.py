"""core.db.insert_row writes what Model.save() writes for a new row, in one statement."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from django.db import IntegrityError, connection, transaction
from django.db.models import Model
from django.db.transaction import TransactionManagementError
from django.forms.models import model_to_dict
from django.utils import timezone

import core.db
from core.db import fetch, insert_row, insert_rows, read_ahead, writes_together
from pacs.models import DicomNode
from pacs.selectors import node_cache
from ris.models import Order, Patient, RequestedProcedure
from tests import factories

pytestmark = pytest.mark.django_db


def _stored(instance: Model) -> dict[str, Any]:
    """INSTANCE's row as read back, without its primary key."""
    row = model_to_dict(type(instance)._default_manager.get(pk=instance.pk))
    row.pop("id")
    return row


def test_a_row_written_by_insert_row_equals_one_written_by_save(
    django_assert_num_queries: Any,
) -> None:
    before = timezone.now()
    patient = factories.patient()
    saved = Order(accession_number="SAVE-1", patient=patient, reason="Headache")
    saved.save()
    inserted = Order(accession_number="INSERT-1", patient=patient, reason="Headache")
    with django_assert_num_queries(1):
        insert_row(inserted)
    assert inserted.pk is not None and inserted.pk != saved.pk
    assert not inserted._state.adding
    read_saved, read_inserted = _stored(saved), _stored(inserted)
    assert read_inserted.pop("accession_number") == "INSERT-1"
    read_saved.pop("accession_number")
    assert read_inserted == read_saved  # defaults, foreign keys, blank fields alike
    # auto_now_add and auto_now are filled in, as save() fills them.
    stored = Order.objects.get(pk=inserted.pk)
    assert before <= stored.ordered_at <= timezone.now()
    assert abs(stored.updated_at - stored.ordered_at) < dt.timedelta(seconds=1)


def test_a_model_with_a_save_receiver_is_saved_with_save() -> None:
    node_cache.clear()
    assert "INSERTED" not in node_cache.nodes()  # the cache now holds the table without it
    node = DicomNode(ae_title="INSERTED", host="127.0.0.1", port=11112)
    insert_row(node)
    # pacs.receivers empties the cache on post_save: the new node is found at once.
    found = node_cache.nodes().get("INSERTED")
    assert found is not None and found.port == 11112


def test_a_row_written_already_is_refused() -> None:
    patient = factories.patient()
    patient.family_name = "CHANGED"
    with pytest.raises(ValueError, match="written already"):
        insert_row(patient)
    assert not Patient.objects.filter(family_name="CHANGED").exists()


def test_fetch_raises_djangos_errors_and_refuses_a_broken_transaction() -> None:
    patient = factories.patient()
    table = Order._meta.db_table
    insert = f'INSERT INTO "{table}" (accession_number, patient_id) VALUES (%s, %s)'  # noqa: S608
    order = Order(accession_number="DUP-1", patient=patient)
    insert_row(order)
    with pytest.raises(IntegrityError), transaction.atomic():
        fetch(insert, ["DUP-1", patient.pk])  # the unique accession number
    with transaction.atomic():
        with pytest.raises(IntegrityError), transaction.atomic(savepoint=False):
            assert fetch(f'SELECT 1 FROM "{table}" WHERE id = %s', [order.pk])  # noqa: S608
            fetch(insert, ["DUP-1", patient.pk])
        # Django's own rule: nothing more runs in a transaction that met an error.
        with pytest.raises(TransactionManagementError):
            fetch("SELECT 1")
        transaction.set_rollback(True)
    select = f'SELECT accession_number FROM "{table}" WHERE id = %s'  # noqa: S608
    assert fetch(select, [order.pk]) == [("DUP-1",)]


def test_rows_written_together_are_there_for_the_next_read_and_go_on_an_error() -> None:
    patient = factories.patient()
    with transaction.atomic(), writes_together():
        later = Order(accession_number="LATER-1", patient=patient)
        insert_row(later, wait=False)
        assert later.pk is None  # waiting for the next statement
        # The ORM's next query sends it first, and finds it.
        assert Order.objects.filter(accession_number="LATER-1").exists()
        assert later.pk is not None
        another = Order(accession_number="LATER-2", patient=patient)
        insert_row(another, wait=False)
        assert fetch(
            f'SELECT count(*) FROM "{Order._meta.db_table}" WHERE accession_number = %s',  # noqa: S608
            ["LATER-2"],
        ) == [(1,)]
    with pytest.raises(IntegrityError), transaction.atomic(), writes_together():
        insert_row(Order(accession_number="LATER-3", patient=patient), wait=False)
        insert_row(Order(accession_number="LATER-1", patient=patient), wait=False)  # taken
    # The whole block rolled back: LATER-3, sent with it, is not there either.
    assert not Order.objects.filter(accession_number="LATER-3").exists()
    assert Order.objects.filter(accession_number__startswith="LATER-").count() == 2


def test_a_read_ahead_answers_only_until_something_else_runs(
    django_assert_num_queries: Any,
) -> None:
    patient = factories.patient()
    count = f'SELECT count(*) FROM "{Order._meta.db_table}" WHERE patient_id = %s'  # noqa: S608
    with transaction.atomic(), writes_together():
        read_ahead([(count, [patient.pk])])
        assert fetch(count, [patient.pk]) == [(0,)]
        # Answered once; then something else ran (here: a row waits to be written).
        read_ahead([(count, [patient.pk])])
        insert_row(Order(accession_number="AHEAD-1", patient=patient), wait=False)
        assert fetch(count, [patient.pk]) == [(1,)]
        read_ahead([(count, [patient.pk])])
        Order.objects.create(accession_number="AHEAD-2", patient=patient)
        assert fetch(count, [patient.pk]) == [(2,)]
    # Outside writes_together there is nothing to answer from: each fetch runs.
    read_ahead([(count, [patient.pk])])
    with django_assert_num_queries(1):
        assert fetch(count, [patient.pk]) == [(2,)]


def test_insert_rows_writes_a_row_and_its_child_as_insert_row_does() -> None:
    patient = factories.patient()
    procedure = factories.procedure("CTINS", "CT")
    rows = []
    for accession, write in (("ROWS-1", "each"), ("ROWS-2", "together")):
        order = Order(accession_number=accession, patient=patient, reason="Headache")
        requested = RequestedProcedure(
            order=order,
            requested_procedure_id="1",
            procedure_type=procedure,
            description="CT",
            study_instance_uid=f"1.2.3.{len(rows)}",
        )
        if write == "each":
            insert_row(order)
            insert_row(requested)
        else:
            insert_rows(order, requested, "order")
        assert order.pk is not None and requested.pk is not None
        assert requested.order_id == order.pk and not requested._state.adding
        rows.append((_stored(order), _stored(requested)))
    (order_each, requested_each), (order_together, requested_together) = rows
    assert order_each.pop("accession_number") == "ROWS-1"
    assert order_together.pop("accession_number") == "ROWS-2"
    assert order_each == order_together
    assert requested_each.pop("order") != requested_together.pop("order")
    assert requested_each.pop("study_instance_uid") != requested_together.pop("study_instance_uid")
    assert requested_each == requested_together


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("server_binds", [True, False], ids=["pipeline", "one-string"])
def test_a_commit_sent_with_a_failing_row_commits_nothing_and_the_connection_goes_on(
    server_binds: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What waits goes with the COMMIT in one round trip (on PostgreSQL a pipeline, or one
    query string where the server does not bind parameters): a row that fails there stops
    the COMMIT, the transaction rolls back whole, and the same connection then reads and
    commits as before."""
    if not server_binds:
        monkeypatch.setattr(core.db, "_pipeline_cursors", lambda connection, count: None)
    patient = factories.patient()
    Order.objects.create(accession_number="PIPE-1", patient=patient)
    count = f'SELECT count(*) FROM "{Order._meta.db_table}" WHERE patient_id = %s'  # noqa: S608
    for _ in range(3):  # on its third run a statement is prepared: that path too
        with pytest.raises(IntegrityError), transaction.atomic(), writes_together(commit=True):
            read_ahead([(count, [patient.pk])])  # with the BEGIN
            assert fetch(count, [patient.pk]) == [(1,)]
            insert_row(Order(accession_number="PIPE-2", patient=patient), wait=False)
            insert_row(Order(accession_number="PIPE-1", patient=patient), wait=False)  # taken
        assert fetch(count, [patient.pk]) == [(1,)]  # PIPE-2 went with it
    for number in range(3, 6):
        with transaction.atomic(), writes_together(commit=True):
            read_ahead([(count, [patient.pk])])
            assert fetch(count, [patient.pk]) == [(number - 2,)]
            insert_row(Order(accession_number=f"PIPE-{number}", patient=patient), wait=False)
    # Committed: another connection sees them.
    other = connection.copy()
    try:
        with other.cursor() as cursor:
            cursor.execute(count, [patient.pk])
            assert cursor.fetchone() == (4,)
    finally:
        other.close()


def test_a_shaped_query_is_the_sql_django_makes_and_compiled_once_per_shape(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """core.db.shaped: each query's SQL and values are Django's own, whatever its shape (a
    join, a related select, aggregates, a slice, an IN list); the second query of a shape,
    with other values, is not compiled whole again; its rows are read as Django reads them."""
    from django.db.models import Count, Max, Q, QuerySet
    from django.db.models.sql.compiler import SQLCompiler

    from core.db import shaped

    patient = factories.patient()
    for number in range(3):
        Order.objects.create(accession_number=f"SHAPE-{number}", patient=patient, reason="X")

    def variants(values: list[str]) -> list[Any]:
        def built(rows: QuerySet[Any]) -> list[QuerySet[Any]]:
            return [
                rows.filter(accession_number=values[0]).order_by("-id"),
                rows.filter(Q(accession_number__in=values) | Q(reason=values[0]))[:2],
                rows.filter(patient__family_name__startswith=values[0][:3]).select_related(
                    "patient"
                )[1:],
                rows.filter(accession_number__gte=values[0])
                .values("patient_id")
                .annotate(last=Max("accession_number"), orders=Count("id"))
                .order_by("patient_id"),
                rows.all(),
            ]

        return list(zip(built(Order.objects.all()), built(shaped(Order)), strict=True))

    def _seen(row: Model) -> dict[str, Any]:
        """A row's fields, and those of the rows selected with it."""
        seen = {key: value for key, value in vars(row).items() if key != "_state"}
        for name, related in row._state.fields_cache.items():
            seen[name] = _seen(related)
        return seen

    compiled: list[str] = []
    whole = SQLCompiler.as_sql

    def counted(self: SQLCompiler, *args: Any, **kwargs: Any) -> Any:
        compiled.append(str(self.query.model))
        return whole(self, *args, **kwargs)

    monkeypatch.setattr(SQLCompiler, "as_sql", counted)
    for values in (["SHAPE-0", "SHAPE-1"], ["SHAPE-2", "SHAPE-9"]):
        for plain, fast in variants(values):
            assert str(fast.query) == str(plain.query)
            assert fast.query.sql_with_params() == plain.query.sql_with_params()
            if isinstance(plain[0] if plain else None, dict) or not plain:
                assert list(fast) == list(plain)
            else:
                assert [_seen(row) for row in fast] == [_seen(row) for row in plain]
    shaped_compiles = len(compiled)
    compiled.clear()
    for _plain, fast in variants(["SHAPE-1", "SHAPE-2"]):
        list(fast)
    assert compiled == []  # every shape known: only WHEREs compiled
    assert shaped_compiles > 0
    # The same WHERE and order as a shape seen, other columns: not taken for that shape.
    for rows in (Order.objects.all(), shaped(Order)):
        only = rows.filter(accession_number="SHAPE-1").order_by("-id").only("accession_number")
        assert (
            only.query.sql_with_params()
            == Order.objects.filter(accession_number="SHAPE-1")
            .order_by("-id")
            .only("accession_number")
            .query.sql_with_params()
        )
        assert [_seen(row) for row in only] == [
            {"id": row.id, "accession_number": "SHAPE-1"}
            for row in Order.objects.filter(accession_number="SHAPE-1")
        ]
