"""OpenAPI schema: the request bodies of the API admit no property they do not list.

Every write endpoint refuses an unknown field with 400 "Unknown field." (``usage.ingest``,
``backoffice.api.usage``, ``accounts.services``), so the schema says so: each object of a
request body that lists its properties gets ``additionalProperties: false``, unless it
states its own (``metadata`` is free-form). Answers are left as they are.
"""

from __future__ import annotations

from typing import Any

COMPONENT_PREFIX = "#/components/schemas/"


def forbid_unknown_request_fields(
    result: dict[str, Any], generator: Any, request: Any, public: bool
) -> dict[str, Any]:
    """drf-spectacular postprocessing hook: ``additionalProperties: false`` on request bodies.

    Follows ``$ref``, ``allOf``/``oneOf``/``anyOf``, properties and array items from each
    operation's request body. With ``COMPONENT_SPLIT_REQUEST`` the components of requests
    (``...Request``) are not those of answers, so no answer is changed.
    """
    components = result.get("components", {}).get("schemas", {})
    visited: set[str] = set()

    def close(schema: Any) -> None:
        if not isinstance(schema, dict):
            return
        ref = schema.get("$ref")
        if isinstance(ref, str) and ref.startswith(COMPONENT_PREFIX):
            name = ref.removeprefix(COMPONENT_PREFIX)
            if name not in visited:
                visited.add(name)
                close(components.get(name))
            return
        if "properties" in schema:
            schema.setdefault("additionalProperties", False)
            for child in schema["properties"].values():
                close(child)
        for key in ("allOf", "oneOf", "anyOf"):
            for child in schema.get(key, []):
                close(child)
        close(schema.get("items"))

    for path_item in result.get("paths", {}).values():
        for operation in path_item.values():
            if not isinstance(operation, dict):
                continue
            for media in operation.get("requestBody", {}).get("content", {}).values():
                close(media.get("schema"))
    return result
