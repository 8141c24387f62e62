"""What the usage commands share."""

from __future__ import annotations

from typing import Any

from django.core.management.base import CommandParser

from accounts.management.base import OpsCommand


class UsageCommand(OpsCommand):
    """An ``OpsCommand`` whose ``help`` is translatable: argparse takes ``str``, not lazy text."""

    def create_parser(self, prog_name: str, subcommand: str, **kwargs: Any) -> CommandParser:
        self.help = str(self.help)
        return super().create_parser(prog_name, subcommand, **kwargs)
