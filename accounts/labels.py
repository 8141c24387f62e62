"""Labels on usage events and scoped limits (SPEC sections 11.1, 11.2, 11.4 and 11.5).

A label set is at most four ``key: value`` pairs, keys from ``LABEL_KEYS``, values of 1 to
64 characters from ``A-Z a-z 0-9 _ . : / -``. Its canonical key, ``labels_key``, is the
pairs sorted by key, written ``key=value`` and joined by ``;`` (``model=large;vendor=acme``,
``""`` for no labels): the ``X-Usage-Labels`` header of SPEC 11.5, and the one spelling
under which counters are kept. Neither ``=`` nor ``;`` can occur in a key or a value, so
two label sets have the same key exactly when they are equal.

A line (a scoped limit) applies to an event when the event's labels contain every pair of
the line's (``labels_match``); a line without labels applies to every event of its metric.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from django.utils.translation import gettext_lazy as _

LABEL_KEYS: dict[str, Any] = {
    "technology": _("Technology"),
    "vendor": _("Vendor"),
    "operation": _("Operation"),
    "model": _("Model"),
}
"""The label keys, the one list of them (SPEC 11.1), with their names for people."""

MAX_LABELS = 4
MAX_VALUE_LENGTH = 64
VALUE = re.compile(r"[A-Za-z0-9_.:/-]{1,64}")
PAIR_SEPARATOR = ";"

Labels = dict[str, str]
Errors = list[Any] | dict[str, list[Any]]


def _value_error(key: str, value: Any) -> Any | None:
    """What is wrong with ``value`` as the value of label ``key``, or ``None``."""
    if not isinstance(value, str):
        return _("The label “%(key)s” takes a string.") % {"key": key}
    if not value:
        return _("The label “%(key)s” may not be blank.") % {"key": key}
    if len(value) > MAX_VALUE_LENGTH:
        return _("Ensure the label “%(key)s” has no more than %(limit)s characters.") % {
            "key": key,
            "limit": MAX_VALUE_LENGTH,
        }
    if not VALUE.fullmatch(value):
        return _(
            "The label “%(key)s” may only contain letters A-Z and a-z, digits and _ . : / -."
        ) % {"key": key}
    return None


def _key_error(key: Any) -> Any | None:
    if key in LABEL_KEYS:
        return None
    return _("“%(key)s” is not a known label. Expected one of: %(keys)s.") % {
        "key": key,
        "keys": ", ".join(LABEL_KEYS),
    }


def labels_parse(raw: Any) -> tuple[Labels, Errors | None]:
    """Check the ``labels`` of an event, a scoped limit or a check: ``(labels, None)`` or
    ``({}, errors)``.

    ``None`` or leaving it out is ``{}``. ``errors`` is a list of messages when ``raw`` is
    not an object or holds too many pairs, else messages keyed by label, so that the caller
    nests them under ``labels`` and the field path reads ``labels.<key>`` (SPEC 11.1).
    """
    if raw is None:
        return {}, None
    if type(raw) is not dict:
        return {}, [_("Expected an object of labels, e.g. {“model”: “large”}.")]
    errors: dict[str, list[Any]] = {}
    for key, value in raw.items():
        message = _key_error(key) or _value_error(key, value)
        if message is not None:
            errors[str(key)] = [message]
    if errors:
        return {}, errors
    if len(raw) > MAX_LABELS:
        return {}, [_("Ensure there are no more than %(limit)s labels.") % {"limit": MAX_LABELS}]
    return dict(raw), None


def labels_key(labels: Mapping[str, str]) -> str:
    """The canonical spelling of a checked label set: ``key=value`` pairs sorted by key,
    joined by ``;``; ``""`` for none."""
    return PAIR_SEPARATOR.join(f"{key}={labels[key]}" for key in sorted(labels))


def labels_from_key(key: str) -> Labels:
    """The label set that ``labels_key`` wrote as ``key``; ``ValueError`` if it is not one."""
    if key == "":
        return {}
    labels: Labels = {}
    for pair in key.split(PAIR_SEPARATOR):
        name, separator, value = pair.partition("=")
        if not separator or name in labels:
            raise ValueError(key)
        labels[name] = value
    checked, errors = labels_parse(labels)
    if errors or labels_key(checked) != key:
        raise ValueError(key)
    return checked


def labels_from_options(options: Iterable[str]) -> tuple[Labels, Errors | None]:
    """Check ``--label KEY=VALUE`` options (``set_limits``): ``(labels, None)`` or
    ``({}, errors)`` shaped as ``labels_parse``'s. A key given twice is refused."""
    raw: dict[str, str] = {}
    errors: dict[str, list[Any]] = {}
    for option in options:
        key, separator, value = option.partition("=")
        key = key.strip()
        if not separator or not key:
            return {}, [
                _("“%(option)s” is not a label: use KEY=VALUE, e.g. model=large.")
                % {"option": option}
            ]
        if key in raw:
            errors[key] = [_("The label “%(key)s” is given more than once.") % {"key": key}]
        raw[key] = value
    if errors:
        return {}, errors
    return labels_parse(raw)


def labels_match(*, line: Mapping[str, str], event: Mapping[str, str]) -> bool:
    """Whether a line scoped to ``line`` counts an event (or applies to a check) labelled
    ``event``: every pair of the line is among the event's (SPEC 11.2 and 11.4)."""
    return all(event.get(key) == value for key, value in line.items())


def labels_text(labels: Mapping[str, str]) -> str:
    """The label set for people, in the active language: ``Model: large, Vendor: acme``."""
    return ", ".join(
        _("%(name)s: %(value)s") % {"name": LABEL_KEYS[key], "value": labels[key]}
        for key in sorted(labels)
    )
