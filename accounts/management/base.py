"""What the ops commands share: a refusal of bad arguments in one line (SPEC section 8)."""

from __future__ import annotations

from typing import Any, NoReturn

from django.core.management.base import BaseCommand, CommandError, CommandParser


class OneLineErrorParser(CommandParser):
    """A ``CommandParser`` that refuses bad arguments with one line instead of the usage text."""

    def error(self, message: str) -> NoReturn:
        if self.called_from_command_line:
            self.exit(2, f"{self.prog}: error: {message} (see --help)\n")
        # As CommandParser does for call_command(): the caller sees a CommandError.
        raise CommandError(f"Error: {message}")


class OpsCommand(BaseCommand):
    """A management command whose every refusal, of arguments or of values, is one line."""

    def create_parser(self, prog_name: str, subcommand: str, **kwargs: Any) -> CommandParser:
        parser = super().create_parser(prog_name, subcommand, **kwargs)
        # BaseCommand builds its parser itself; the subclass changes only how errors print.
        parser.__class__ = OneLineErrorParser
        return parser
