"""The HL7 interface page for administrators: messages in and out, re-process, retry."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import permission_required
from django.core.exceptions import ValidationError
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_GET, require_POST

from core import audit
from core.permissions import acting_user
from ris.hl7 import inbound, outbox, selectors
from ris.hl7.forms import MessageFilterForm
from ris.hl7.models import InboundMessage, OutboundMessage

PAGE_SIZE = 50


@require_GET
@permission_required("hl7.view_inboundmessage", raise_exception=True)
def message_list(request: HttpRequest) -> HttpResponse:
    """Messages received or sent, newest first, searchable by patient, type and status."""
    form = MessageFilterForm(request.GET or None)
    if form.is_bound and not form.is_valid():
        context = {"form": form, "page": None, "direction": "in"}
        return render(request, "hl7/messages.html", context, status=400)
    criteria = form.criteria() if form.is_bound else selectors.MessageFilter()
    direction = form.direction_value
    if direction == "out":
        rows = selectors.outbound_messages(criteria)
        object_type = "hl7.outboundmessage"
    else:
        rows = selectors.inbound_messages(criteria)  # type: ignore[assignment]
        object_type = "hl7.inboundmessage"
    page = Paginator(rows, PAGE_SIZE).get_page(request.GET.get("page"))
    response = render(
        request,
        "hl7/messages.html",
        {
            "form": form,
            "page": page,
            "direction": direction,
            "destinations": selectors.destinations_with_backlog(),
        },
    )
    audit.record_query(
        request, object_type, count=page.paginator.count, criteria=request.GET.urlencode()
    )
    return response


def _segments(raw: str) -> str:
    return raw.replace("\r\n", "\n").replace("\r", "\n")


@require_GET
@permission_required("hl7.view_inboundmessage", raise_exception=True)
def inbound_detail(request: HttpRequest, pk: int) -> HttpResponse:
    message = get_object_or_404(
        InboundMessage.objects.select_related("patient", "duplicate_of"), pk=pk
    )
    audit.record(audit.Action.VIEW, message, request=request)
    return render(
        request,
        "hl7/inbound_detail.html",
        {
            "message": message,
            "raw": _segments(message.raw),
            "ack": _segments(message.ack),
            "duplicates": message.duplicates.order_by("received_at", "id"),
            "can_reprocess": message.duplicate_of_id is None
            and message.status
            not in (InboundMessage.Status.ACCEPTED, InboundMessage.Status.RECEIVED)
            and request.user.has_perm("hl7.reprocess_inboundmessage"),
        },
    )


@require_POST
@permission_required("hl7.reprocess_inboundmessage", raise_exception=True)
def inbound_reprocess(request: HttpRequest, pk: int) -> HttpResponse:
    message = get_object_or_404(InboundMessage, pk=pk)
    try:
        message = inbound.reprocess(message, actor=acting_user(request))
    except ValidationError as exc:
        messages.error(request, " ".join(exc.messages))
        return redirect("hl7:inbound-detail", pk=pk)
    if message.status == InboundMessage.Status.ACCEPTED:
        messages.success(request, f"Message {message.control_id} applied.")
    else:
        messages.error(request, f"Message {message.control_id} still fails: {message.error}")
    return redirect("hl7:inbound-detail", pk=pk)


@require_GET
@permission_required("hl7.view_outboundmessage", raise_exception=True)
def outbound_detail(request: HttpRequest, pk: int) -> HttpResponse:
    message = get_object_or_404(
        OutboundMessage.objects.select_related("patient", "destination"), pk=pk
    )
    audit.record(audit.Action.VIEW, message, request=request)
    head = selectors.queue_head(message)
    return render(
        request,
        "hl7/outbound_detail.html",
        {
            "message": message,
            "raw": _segments(message.raw),
            "ack": _segments(message.ack),
            "head": head if head is not None and head.pk != message.pk else None,
            "can_retry": message.status != OutboundMessage.Status.DELIVERED
            and request.user.has_perm("hl7.retry_outboundmessage"),
        },
    )


@require_POST
@permission_required("hl7.retry_outboundmessage", raise_exception=True)
def outbound_retry(request: HttpRequest, pk: int) -> HttpResponse:
    message = get_object_or_404(OutboundMessage, pk=pk)
    if message.status == OutboundMessage.Status.DELIVERED:
        messages.error(request, f"Message {message.control_id} was delivered already.")
        return redirect("hl7:outbound-detail", pk=pk)
    outbox.retry_now(message)
    audit.record(
        audit.Action.UPDATE,
        message,
        request=request,
        detail=f"retry now: HL7 {message.message_type} {message.control_id}",
    )
    message.refresh_from_db()
    if message.status == OutboundMessage.Status.DELIVERED:
        messages.success(request, f"Message {message.control_id} delivered.")
    else:
        messages.info(request, f"Message {message.control_id} is being sent again.")
    return redirect("hl7:outbound-detail", pk=pk)
