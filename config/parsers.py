"""The API's JSON parser, and the checks of hostile text it shares with the request middleware.

Every JSON body of the API goes through ``JSONParser`` (``DEFAULT_PARSER_CLASSES``):

- nested deeper than ``MAX_JSON_DEPTH`` levels, it is refused with 400 before ``json.loads``
  sees it (the depth is counted on the text, without recursion: deep enough JSON would
  otherwise exhaust Python's recursion limit and answer 500);
- a null character or a lone surrogate (``\\u0000``, ``\\ud800``) in any string or key is
  refused with 400, keyed by the field path in DRF's usual shape, e.g.
  ``{"events": {"3": {"metadata": {"model": ["Null characters are not allowed."]}}}}``:
  PostgreSQL cannot store the first, UTF-8 cannot encode the second.
"""

from __future__ import annotations

import json
import re
from typing import Any

from django.utils.translation import gettext_lazy as _
from rest_framework import parsers
from rest_framework.exceptions import ParseError, ValidationError

MAX_JSON_DEPTH = 32
# The first errors found are enough to fix a request; a body full of them is not echoed whole.
MAX_TEXT_ERRORS = 100

_BAD_CHARACTER = re.compile("[\x00\ud800-\udfff]")
# A JSON escape that may decode to a null character or a surrogate: only then are the
# decoded strings walked (a raw control character or an unencodable surrogate cannot
# reach ``json.loads`` unescaped: it refuses the first, the UTF-8 decoder the second).
_SUSPECT_ESCAPE = re.compile(r"\\u(?:0000|[dD][89a-fA-F])")
_ESCAPE = re.compile(r"\\.", re.DOTALL)
_NOT_A_BRACKET = re.compile(r"[^\[\]{}]+")
_UNIFORM_BRACKETS = str.maketrans("[{]}", "(())")


def text_problem(value: str) -> Any:
    """Why ``value`` cannot be accepted as text (a translated message), or ``None``."""
    found = _BAD_CHARACTER.search(value)
    if found is None:
        return None
    if found.group() == "\x00":
        return _("Null characters are not allowed.")
    return _("Lone surrogate characters are not allowed.")


def json_too_deep(text: str, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether the JSON ``text`` nests arrays and objects deeper than ``limit`` levels.

    Escapes are removed (so that ``\\"`` ends no string), then strings, then every other
    character but brackets; each pass then removes the innermost pairs, so a pair still
    there after ``limit`` passes encloses more than ``limit`` levels. What is left unpaired is malformed JSON, but unclosed brackets still
    nest (``json.loads`` would recurse into them), so more than ``limit`` of them count.
    The cost is a few regular-expression passes over the text, never a Python loop per byte.
    """
    if text.count("[") + text.count("{") <= limit:
        return False
    if "\\" in text:
        text = _ESCAPE.sub("", text)
    # Without escapes, quotes open and close strings in turn: every other piece between
    # quotes is outside any string (a final unclosed string is left out with its text).
    outside = "".join(text.split('"')[0::2])
    brackets = _NOT_A_BRACKET.sub("", outside).translate(_UNIFORM_BRACKETS)
    for _pass in range(limit):
        if "()" not in brackets:
            break
        brackets = brackets.replace("()", "")
    if "()" in brackets:
        return True
    # Only ")" * a + "(" * b is left: unmatched brackets.
    return brackets.count("(") > limit


def _put(errors: dict[str, Any], path: tuple[str, ...], message: Any) -> None:
    """Record ``message`` at ``path`` unless an error is already recorded on the way there."""
    node = errors
    for key in path[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            return
    if path[-1] not in node:
        node[path[-1]] = [message]


def text_errors(data: Any) -> dict[str, Any]:
    """Errors for every string and key of decoded JSON holding a null character or a lone
    surrogate, keyed by field path (list items by their index); ``{}`` when there is none.

    Walks with an explicit stack: the depth is bounded by the caller, not by recursion.
    """
    errors: dict[str, Any] = {}
    found = 0
    stack: list[tuple[tuple[str, ...], Any]] = [((), data)]
    while stack and found < MAX_TEXT_ERRORS:
        path, value = stack.pop()
        if isinstance(value, str):
            problem = text_problem(value)
            if problem is not None:
                _put(errors, path or ("non_field_errors",), problem)
                found += 1
        elif isinstance(value, dict):
            if any(text_problem(key) is not None for key in value):
                message = _("Keys may not contain null characters or lone surrogates.")
                _put(errors, path or ("non_field_errors",), message)
                found += 1
                continue
            stack.extend(((*path, key), item) for key, item in reversed(value.items()))
        elif isinstance(value, list):
            stack.extend(((*path, str(i)), item) for i, item in reversed(list(enumerate(value))))
    return errors


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


class JSONParser(parsers.JSONParser):
    """JSON, refused with 400 when nested too deep or holding null characters or lone surrogates.

    ``NaN`` and ``Infinity`` are refused as DRF's strict parser does. Subclasses change how
    the text is decoded by overriding ``loads``.
    """

    def loads(self, text: str) -> Any:
        return json.loads(text, parse_constant=_reject_constant)

    def parse(self, stream: Any, media_type: str | None = None, parser_context: Any = None) -> Any:
        encoding = (parser_context or {}).get("encoding", "utf-8")
        try:
            text = stream.read().decode(encoding)
        except UnicodeDecodeError as exc:
            raise ParseError(f"JSON parse error - {exc}") from exc
        if json_too_deep(text):
            raise ParseError(
                _("JSON nested deeper than %(limit)s levels is not accepted.")
                % {"limit": MAX_JSON_DEPTH}
            )
        try:
            data = self.loads(text)
        except ValueError as exc:
            raise ParseError(f"JSON parse error - {exc}") from exc
        if _SUSPECT_ESCAPE.search(text):
            errors = text_errors(data)
            if errors:
                raise ValidationError(errors)
        return data
