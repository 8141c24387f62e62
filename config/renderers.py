"""JSON rendering of API answers: DRF's ``JSONRenderer``, the same bytes, written by orjson.

orjson writes a compact answer several times faster than the standard library's encoder
(about a tenth of the CPU of a capacities answer of 13 lines, docs/performance.md). What
it does not write itself (datetimes, decimals, lazy translations...) goes through DRF's
encoder, as before; anything orjson refuses (an integer past 64 bits, keys that are not
strings) and every indented answer (``Accept: application/json; indent=4``, the browsable
API) is rendered by DRF's renderer itself.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import orjson
from rest_framework.renderers import JSONRenderer
from rest_framework.utils.encoders import JSONEncoder

_encode = JSONEncoder().default


def _default(value: Any) -> Any:
    # Quantities in seconds are decimals: written as floats, as DRF's encoder writes them,
    # without its other checks first.
    if type(value) is Decimal:
        return float(value)
    return _encode(value)


# Datetimes and dataclasses go to DRF's encoder, which writes them as answers always were
# (``Z`` for UTC); subclasses of str, int, dict and list are written as their base types,
# as the standard library does.
_OPTIONS = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS
# Written escaped, as DRF does, so that the answer is also valid JavaScript.
_LINE_SEPARATORS = ((b"\xe2\x80\xa8", b"\\u2028"), (b"\xe2\x80\xa9", b"\\u2029"))


class FastJSONRenderer(JSONRenderer):
    def render(
        self, data: Any, accepted_media_type: str | None = None, renderer_context: Any = None
    ) -> bytes:
        if (
            data is None
            or not self.compact
            or self.ensure_ascii
            or self.get_indent(accepted_media_type, renderer_context or {}) is not None
        ):
            return super().render(data, accepted_media_type, renderer_context)
        try:
            rendered = orjson.dumps(data, default=_default, option=_OPTIONS)
        except (orjson.JSONEncodeError, TypeError, ValueError):
            return super().render(data, accepted_media_type, renderer_context)
        if b"\xe2\x80" in rendered:
            for separator, escaped in _LINE_SEPARATORS:
                rendered = rendered.replace(separator, escaped)
        return rendered
