"""manage.py dicomnode add AE HOST PORT [--no-store] [--no-query] [--no-retrieve], list, remove."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from core.dicom_values import is_valid_ae_title
from pacs import services
from pacs.models import DicomNode


class Command(BaseCommand):
    help = "Manage the DICOM nodes that may associate with the archive (and receive C-MOVE)."

    def add_arguments(self, parser: CommandParser) -> None:
        verbs = parser.add_subparsers(dest="verb", required=True)
        add = verbs.add_parser("add", help="add a node, or change one")
        add.add_argument("ae_title")
        add.add_argument("host")
        add.add_argument("port", type=int)
        add.add_argument("--no-store", action="store_true", help="may not send us instances")
        add.add_argument("--no-query", action="store_true", help="may not query (C-FIND)")
        add.add_argument(
            "--no-retrieve", action="store_true", help="may not retrieve or be moved to"
        )
        add.add_argument("--description", default="")
        verbs.add_parser("list", help="list the nodes")
        remove = verbs.add_parser("remove", help="remove a node")
        remove.add_argument("ae_title")

    def handle(self, *args: Any, **options: Any) -> None:
        verb = options["verb"]
        if verb == "add":
            self._add(options)
        elif verb == "list":
            for node in DicomNode.objects.all():
                rights = (
                    ",".join(
                        right
                        for right, allowed in (
                            ("store", node.may_store),
                            ("query", node.may_query),
                            ("retrieve", node.may_retrieve),
                        )
                        if allowed
                    )
                    or "none"
                )
                self.stdout.write(
                    f"{node.ae_title:16s} {node.host}:{node.port}  {rights}  {node.description}"
                )
        elif verb == "remove":
            if not services.remove_node(options["ae_title"]):
                raise CommandError(f"no node with AE title {options['ae_title']!r}")
            self.stdout.write(f"removed {options['ae_title']}")

    def _add(self, options: dict[str, Any]) -> None:
        ae_title = options["ae_title"]
        if not is_valid_ae_title(ae_title):
            raise CommandError(
                f"{ae_title!r} is not an AE title: 1-16 printable ASCII, no backslash"
            )
        if not 0 < options["port"] < 65536:
            raise CommandError(f"port must be between 1 and 65535, got {options['port']}")
        node = services.add_node(
            ae_title.strip(),
            options["host"],
            options["port"],
            may_store=not options["no_store"],
            may_query=not options["no_query"],
            may_retrieve=not options["no_retrieve"],
            description=options["description"],
        )
        self.stdout.write(f"{node} saved")
