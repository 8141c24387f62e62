"""OpenAPI: the request limits every operation shares (config/request_limits.py, config/parsers.py,
config/pagination.py, config/api.py), added by a drf-spectacular postprocessing hook.

Every operation documents 400 (its own validation errors, or a request limit), 405 (with
``Allow``), 411 and 413; every string parameter, and every string of a request body without
a format or choices of its own, refuses null characters (``pattern``); a paginated list
documents 404 for a page past the last one. Free-form values (``metadata``) cannot say it
of their keys in OpenAPI 3.0: the 400's description states the rule for every JSON string.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.utils.translation import gettext as _

from config.parsers import MAX_JSON_DEPTH

NO_NULL_PATTERN = r"^[^\u0000]*$"
REQUEST_ERROR = "RequestError"
_METHODS = ("get", "put", "post", "patch", "delete")


def _json(reference: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": reference}}


def _allow(path_item: dict[str, Any]) -> str:
    """The methods DRF lists in ``Allow`` for this path: its own, HEAD with GET, OPTIONS."""
    methods = [method.upper() for method in _METHODS if method in path_item]
    if "GET" in methods:
        methods.append("HEAD")
    return ", ".join([*methods, "OPTIONS"])


def _no_null_in_request_strings(result: dict[str, Any]) -> None:
    """``NO_NULL_PATTERN`` on each plain string of every request body (``$ref`` followed)."""
    components = result.get("components", {}).get("schemas", {})
    visited: set[str] = set()

    def visit(schema: Any) -> None:
        if not isinstance(schema, dict):
            return
        ref = schema.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/components/schemas/"):
            name = ref.rsplit("/", 1)[-1]
            if name not in visited:
                visited.add(name)
                visit(components.get(name))
            return
        if schema.get("type") == "string" and not ({"pattern", "enum", "format"} & set(schema)):
            schema["pattern"] = NO_NULL_PATTERN
        for child in schema.get("properties", {}).values():
            visit(child)
        for key in ("items", "additionalProperties"):
            visit(schema.get(key))
        for key in ("allOf", "oneOf", "anyOf"):
            for child in schema.get(key, []):
                visit(child)

    for path_item in result.get("paths", {}).values():
        for method in _METHODS:
            body = path_item.get(method, {}).get("requestBody", {})
            for media in body.get("content", {}).values():
                visit(media.get("schema"))


def postprocess_request_limits(
    result: dict[str, Any], generator: Any, request: Any, public: bool, **kwargs: Any
) -> dict[str, Any]:
    """Adds the responses and parameter patterns of the request limits to every operation."""
    error = {"$ref": f"#/components/schemas/{REQUEST_ERROR}"}
    result.setdefault("components", {}).setdefault("schemas", {})[REQUEST_ERROR] = {
        "type": "object",
        "description": _(
            "The request breaks a request limit: `detail` says which, or the message is "
            "keyed by the query parameter's name, by `headers` and the header's name, or by "
            "the field path in the JSON body."
        ),
        "properties": {"detail": {"type": "string"}},
        "additionalProperties": {},
    }
    limits_400 = _(
        "A request limit: a null character or a lone surrogate in a query parameter, a "
        "header or a JSON string (keyed by its path), JSON nested deeper than %(depth)s "
        "levels, an invalid Content-Length, a query parameter given more than once, or a "
        "page that is not a number from 1."
    ) % {"depth": MAX_JSON_DEPTH}
    for path_item in result.get("paths", {}).values():
        allow = _allow(path_item)
        for method in _METHODS:
            operation = path_item.get(method)
            if operation is None:
                continue
            parameters = operation.get("parameters", [])
            for parameter in parameters:
                schema = parameter.get("schema", {})
                if schema.get("type") == "string" and not ({"pattern", "enum"} & set(schema)):
                    schema["pattern"] = NO_NULL_PATTERN
            responses = operation.setdefault("responses", {})
            existing = responses.get("400")
            if existing is None:
                responses["400"] = {"description": limits_400, "content": _json(error)}
            else:
                description = existing.get("description") or _("Invalid request.")
                existing["description"] = f"{description} {limits_400}"
                for media in existing.get("content", {}).values():
                    if "schema" in media:
                        media["schema"] = {"anyOf": [media["schema"], error]}
            if any(p.get("name") == "page" and p.get("in") == "query" for p in parameters):
                responses.setdefault(
                    "404",
                    {"description": _("A page past the last one."), "content": _json(error)},
                )
            responses.setdefault(
                "405",
                {
                    "description": _(
                        "A method this path does not serve (after authentication); "
                        "`Allow` lists those it serves."
                    ),
                    "headers": {
                        "Allow": {
                            "schema": {"type": "string"},
                            "description": _("The methods this path serves: %(methods)s.")
                            % {"methods": allow},
                        }
                    },
                    "content": _json(error),
                },
            )
            responses.setdefault(
                "411",
                {
                    "description": _(
                        "A chunked body (no Content-Length) that this server cannot read."
                    ),
                    "content": _json(error),
                },
            )
            responses.setdefault(
                "413",
                {
                    "description": _(
                        "The body is larger than the limit of %(limit)s bytes "
                        "(REQUEST_BODY_MAX_BYTES)."
                    )
                    % {"limit": settings.REQUEST_BODY_MAX_BYTES},
                    "content": _json(error),
                },
            )
    _no_null_in_request_strings(result)
    return result
