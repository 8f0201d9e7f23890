"""What the app's commands share: --json output, and service errors turned into CommandError."""

from __future__ import annotations

import json
import re
from typing import Any

from django.core.management.base import BaseCommand, CommandError

# A library message names a parameter as ``name=value`` (``on_conflict='skip'``, ``workers=1``).
_PARAMETER = re.compile(r"\b(?P<name>[a-z][a-z0-9_]*)=(?P<value>'[^']*'|\"[^\"]*\"|[\w.-]+)")


class ServiceCommand(BaseCommand):
    """A thin command: parse options, call one service function, print its summary."""

    def add_arguments(self, parser) -> None:
        parser.add_argument(
            "--json", action="store_true", help="print a one-line JSON summary as the last line"
        )

    def create_parser(self, prog_name: str, subcommand: str, **kwargs: Any):
        parser = super().create_parser(prog_name, subcommand, **kwargs)
        # Each option's destination -> its flag, to speak of flags in error messages.
        self._flags = {a.dest: a.option_strings[-1] for a in parser._actions if a.option_strings}
        return parser

    def execute(self, *args: Any, **options: Any) -> Any:
        try:
            from vectorstore.loading.parquet import use_system_allocator
        except ImportError:
            pass  # installed without [embed]: no pyarrow, so no parquet loads to bound
        else:
            use_system_allocator()  # bounded memory for long loads, see its docstring
        return super().execute(*args, **options)

    def error(self, exc: Exception) -> CommandError:
        """``exc``'s message as a CommandError, each ``parameter=value`` it names written as this command's
        flag (``--on-conflict skip``); parameters the command has no flag for stay as they are."""
        flags = getattr(self, "_flags", {})

        def flag(match: re.Match) -> str:
            name = flags.get(match["name"])
            return f"{name} {match['value'].strip(chr(39) + chr(34))}" if name else match[0]

        return CommandError(_PARAMETER.sub(flag, str(exc)))

    def document_model(self, label: str | None, passages: bool = False) -> type:
        """``--model app_label.Model``, else the configured document model; with ``passages``, its passage
        model (``--passages``); a CommandError naming the flag."""
        from django.apps import apps

        from vectorstore import conf
        from vectorstore import passages as passages_mod

        try:
            model = apps.get_model(label) if label else conf.document_model()
        except (LookupError, ValueError) as exc:
            raise CommandError(f"--model: {exc}") from exc
        if not passages:
            return model
        found = passages_mod.passage_model(model)
        if found is None:
            raise CommandError(f"--passages: {model._meta.label} keeps no passages (keep_passages = True)")
        return found

    def emit(self, summary: str, data: dict[str, Any], as_json: bool) -> None:
        self.stdout.write(summary)
        if as_json:
            self.stdout.write(json.dumps(data, default=str))
