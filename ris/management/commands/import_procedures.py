from __future__ import annotations

import sys
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from ris.catalogue import COLUMNS, CatalogueError, import_procedure_catalogue


class Command(BaseCommand):
    help = (
        "Create or update the procedure catalogue from a CSV file with the columns "
        f"{','.join(COLUMNS)}. Any bad row: nothing is imported."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("file", help="the CSV file (UTF-8), or - for standard input")

    def handle(self, *args: Any, **options: Any) -> None:
        path = options["file"]
        try:
            if path == "-":
                result = import_procedure_catalogue(sys.stdin.buffer)
            else:
                with open(path, "rb") as source:
                    result = import_procedure_catalogue(source)
        except OSError as exc:
            raise CommandError(f"cannot read {path}: {exc.strerror or exc}") from exc
        except CatalogueError as exc:
            lines = "\n".join(f"  {problem}" for problem in exc.problems)
            raise CommandError(
                f"{path}: {len(exc.problems)} problem(s), nothing imported:\n{lines}"
            ) from exc
        self.stdout.write(f"Procedure catalogue: {result}")
