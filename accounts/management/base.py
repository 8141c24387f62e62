"""What the ops commands share: a refusal of bad arguments in one line (SPEC section 8)."""

from __future__ import annotations

from typing import Any, NoReturn

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils.translation import gettext as _

from accounts.models import Account
from accounts.selectors import account_get_by_reference


class OneLineErrorParser(CommandParser):
    """A ``CommandParser`` that refuses bad arguments with one line instead of the usage text."""

    def error(self, message: str) -> NoReturn:
        if self.called_from_command_line:
            self.exit(2, f"{self.prog}: error: {message} (see --help)\n")
        # As CommandParser does for call_command(): the caller sees a CommandError.
        raise CommandError(f"Error: {message}")


class OpsCommand(BaseCommand):
    """A management command whose every refusal, of arguments or of values, is one line.

    Its messages, ``help`` included, are translated: it speaks the active language
    (``settings.LANGUAGE_CODE`` on the command line). ``help`` may hold ``%(name)s``
    placeholders, filled from ``help_values`` once translated.
    """

    help_values: dict[str, object] = {}

    def get_account(self, reference: str) -> Account:
        """The account whose id or external id is ``reference``, or a one-line refusal."""
        account = account_get_by_reference(reference=reference)
        if account is None:
            raise CommandError(
                _("Unknown account “%(reference)s” (give its id or external id).")
                % {"reference": reference}
            )
        return account

    def create_parser(self, prog_name: str, subcommand: str, **kwargs: Any) -> CommandParser:
        # argparse takes ``str``, not lazy text: translate now, in the active language.
        self.help = str(self.help) % self.help_values if self.help_values else str(self.help)
        parser = super().create_parser(prog_name, subcommand, **kwargs)
        # BaseCommand builds its parser itself; the subclass changes only how errors print.
        parser.__class__ = OneLineErrorParser
        return parser
