"""What the app's commands share: --json output and turning service errors into CommandError."""

from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandError


class ServiceCommand(BaseCommand):
    """A thin command: parse options, call one service function, print its summary."""

    def add_arguments(self, parser) -> None:
        parser.add_argument(
            "--json", action="store_true", help="print a one-line JSON summary as the last line"
        )

    def emit(self, summary: str, data: dict[str, Any], as_json: bool) -> None:
        self.stdout.write(summary)
        if as_json:
            self.stdout.write(json.dumps(data, default=str))

    @staticmethod
    def error(exc: Exception) -> CommandError:
        return CommandError(str(exc))
