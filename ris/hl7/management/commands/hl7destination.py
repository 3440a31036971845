from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction

from ris.hl7.models import OUTBOUND_TYPES, CharacterSet, Destination, OutboundMessage


def _types(value: str) -> str:
    types = [code.strip().upper() for code in value.split(",") if code.strip()]
    unknown = sorted(set(types) - set(OUTBOUND_TYPES))
    if not types or unknown:
        raise CommandError(
            f"--types takes a comma-separated list of {', '.join(OUTBOUND_TYPES)}"
            + (f"; not {', '.join(unknown)}" if unknown else "")
        )
    return ",".join(dict.fromkeys(types))


class Command(BaseCommand):
    help = "Add, change, list, enable, disable or remove the systems HL7 messages are sent to."

    def add_arguments(self, parser: CommandParser) -> None:
        actions = parser.add_subparsers(dest="action", required=True)
        add = actions.add_parser("add", help="add a destination")
        add.add_argument("name")
        add.add_argument("host")
        add.add_argument("port", type=int)
        add.add_argument(
            "--types", required=True, help=f"e.g. ORU,DFT ({', '.join(OUTBOUND_TYPES)})"
        )
        self._options(add)
        change = actions.add_parser("change", help="change a destination")
        change.add_argument("name")
        change.add_argument("--host")
        change.add_argument("--port", type=int)
        change.add_argument("--types")
        self._options(change)
        actions.add_parser("list", help="list the destinations and what waits for each")
        for verb in ("enable", "disable", "remove"):
            actions.add_parser(verb, help=f"{verb} a destination").add_argument("name")

    def _options(self, parser: CommandParser) -> None:
        parser.add_argument("--receiving-application", help="MSH-5 of what is sent there")
        parser.add_argument("--receiving-facility", help="MSH-6 of what is sent there")
        parser.add_argument(
            "--character-set",
            choices=[value for value, _ in CharacterSet.choices],
            help="MSH-18 and the encoding of what is sent there (default UNICODE UTF-8)",
        )
        parser.add_argument("--disabled", action="store_true", help="add or leave it disabled")

    def handle(self, *args: Any, **options: Any) -> None:
        action = options["action"]
        if action == "list":
            self._list()
            return
        with transaction.atomic():
            if action == "add":
                destination = self._add(options)
            else:
                destination = self._get(options["name"])
                if action == "change":
                    self._change(destination, options)
                elif action == "remove":
                    self._remove(destination)
                    return
                else:
                    destination.enabled = action == "enable"
                    destination.save(update_fields=["enabled", "updated_at"])
        state = "enabled" if destination.enabled else "disabled"
        self.stdout.write(
            f"{destination.name}: {destination.host}:{destination.port} "
            f"types {destination.message_types}, {state}"
        )

    def _get(self, name: str) -> Destination:
        destination = Destination.objects.select_for_update().filter(name=name).first()
        if destination is None:
            raise CommandError(f"no destination named {name!r}")
        return destination

    def _save(self, destination: Destination) -> None:
        try:
            destination.full_clean()
        except ValidationError as exc:
            messages = "; ".join(f"{k}: {' '.join(v)}" for k, v in exc.message_dict.items())
            raise CommandError(messages) from exc
        destination.save()

    def _add(self, options: dict[str, Any]) -> Destination:
        if Destination.objects.filter(name=options["name"]).exists():
            raise CommandError(f"a destination named {options['name']!r} exists already")
        destination = Destination(
            name=options["name"],
            host=options["host"],
            port=options["port"],
            message_types=_types(options["types"]),
            enabled=not options["disabled"],
            receiving_application=options["receiving_application"] or "",
            receiving_facility=options["receiving_facility"] or "",
            character_set=options["character_set"] or CharacterSet.UTF8,
        )
        self._save(destination)
        return destination

    def _change(self, destination: Destination, options: dict[str, Any]) -> None:
        for name in ("host", "port", "receiving_application", "receiving_facility"):
            if options[name] is not None:
                setattr(destination, name, options[name])
        if options["character_set"]:
            destination.character_set = options["character_set"]
        if options["types"] is not None:
            destination.message_types = _types(options["types"])
        if options["disabled"]:
            destination.enabled = False
        self._save(destination)

    def _remove(self, destination: Destination) -> None:
        waiting = destination.messages.exclude(status=OutboundMessage.Status.DELIVERED).count()
        if waiting:
            raise CommandError(
                f"{destination.name} has {waiting} undelivered message(s); "
                "disable it instead, so that nothing is dropped"
            )
        if destination.messages.exists():
            raise CommandError(
                f"{destination.name} has a message history; disable it instead of removing it"
            )
        destination.delete()
        self.stdout.write(f"{destination.name} removed")

    def _list(self) -> None:
        destinations = list(Destination.objects.order_by("name"))
        if not destinations:
            self.stdout.write("no destinations")
            return
        for destination in destinations:
            waiting = destination.messages.exclude(status=OutboundMessage.Status.DELIVERED).count()
            state = "enabled" if destination.enabled else "disabled"
            self.stdout.write(
                f"{destination.name}\t{destination.host}:{destination.port}\t"
                f"{destination.message_types}\t{state}\t{waiting} waiting"
            )
