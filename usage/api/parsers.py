from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

from config.parsers import JSONParser


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


class ExactJSONParser(JSONParser):
    """JSON with numbers kept exact: ``0.1`` becomes ``Decimal("0.1")``, never a float.

    The checks of every JSON body (depth, null characters, lone surrogates) are the base's.
    """

    def loads(self, text: str) -> Any:
        return json.loads(text, parse_float=Decimal, parse_constant=_reject_constant)
