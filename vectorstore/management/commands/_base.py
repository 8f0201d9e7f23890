"""What the app's commands share: --json output and turning service errors into CommandError."""

from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand


class ServiceCommand(BaseCommand):
    """A thin command: parse options, call one service function, print its summary."""

    def add_arguments(self, parser) -> None:
        parser.add_argument(
            "--json", action="store_true", help="print a one-line JSON summary as the last line"
        )

    def execute(self, *args: Any, **options: Any) -> Any:
        from vectorstore.parquet import use_system_allocator

        use_system_allocator()  # bounded memory for long loads, see its docstring
        return super().execute(*args, **options)

    def emit(self, summary: str, data: dict[str, Any], as_json: bool) -> None:
        self.stdout.write(summary)
        if as_json:
            self.stdout.write(json.dumps(data, default=str))
