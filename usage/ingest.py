"""Parsing and checking of usage events, in plain Python.

The batch path validates up to 1000 events per request; a DRF serializer per event would
cost more than the database work (SPEC section 10), so the checks are written out here,
once, with DRF-style messages keyed by field.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from functools import lru_cache
from typing import Any, NamedTuple

from django.utils.translation import gettext_lazy as _

from accounts.labels import labels_key, labels_parse
from accounts.metrics import METRICS

MAX_BATCH = 1000
MAX_QUANTITY = 10**12
MAX_EVENT_ID_LENGTH = 128
MAX_RESERVATION_ID_LENGTH = 128
MIN_TTL_SECONDS, MAX_TTL_SECONDS, DEFAULT_TTL_SECONDS = 1, 86400, 900
MAX_SOURCE_LENGTH = 64
MAX_METADATA_BYTES = 8192
MAX_FUTURE = timedelta(minutes=5)
# No usage of this product predates the year 2000, and moments near year 1 or 9999
# overflow once moved to another time zone. The year is the one written, in the moment's
# own offset, so that the schema states the rule exactly (``pattern: ^[2-9][0-9]{3}-``):
# the earliest instant taken is 2000-01-01T00:00+23:59, 1999-12-31T00:01Z.
EARLIEST_OCCURRED_YEAR = 2000

Errors = dict[Any, Any]

MSG_NOT_A_NUMBER = _("Expected a JSON number.")
MSG_UNKNOWN_FIELD = _("Unknown field.")

# The fields an event may have; any other is refused ("Unknown field."), as in the schema.
EVENT_FIELDS = frozenset(
    {
        "event_id",
        "account",
        "metric",
        "quantity",
        "occurred_at",
        "source",
        "metadata",
        "labels",
        "reservation_id",
    }
)
BATCH_FIELDS = frozenset({"events"})


def unknown_fields(raw: dict[Any, Any], known: frozenset[str]) -> Errors:
    """``{name: ["Unknown field."]}`` for each key of ``raw`` not in ``known``."""
    return {str(key): [MSG_UNKNOWN_FIELD] for key in raw.keys() - known}


MSG_OTHER_ACCOUNT = _("This token may only record usage for its own account.")


def _json_number(value: object) -> object:
    """A number parsed as ``Decimal`` written back as a JSON number: 7 stays 7, 0.7 stays 0.7.

    One beyond what a float holds is kept as text rather than written as ``Infinity``.
    """
    if isinstance(value, Decimal):
        if value == value.to_integral_value():
            return int(value)
        number = float(value)
        if number not in (float("inf"), float("-inf")):
            return number
    return str(value)


class EventsInvalid(Exception):
    """The request's events break a rule; ``errors`` is keyed by field (and index in a batch)."""

    def __init__(self, errors: Errors) -> None:
        super().__init__(errors)
        self.errors = errors


class EventIn(NamedTuple):
    """A checked event, ready to store.

    A named tuple rather than a frozen dataclass: a batch builds a thousand of them, and a
    frozen dataclass sets each field through ``object.__setattr__`` (about five times the
    cost of a tuple).
    """

    account_id: uuid.UUID
    event_id: str
    metric: str
    quantity_milli: int
    occurred_at: datetime
    source: str
    metadata: str  # JSON text
    labels: str = "{}"  # JSON text, keys sorted (SPEC 11.1)
    labels_key: str = ""  # ``accounts.labels.labels_key``: ``model=large;vendor=acme``
    reservation_id: str = ""  # the reservation this event settles (SPEC 12.1); "" for none


def _required() -> Any:
    return _("This field is required.")


def _identifier_error(raw: Any, limit: int) -> Any | None:
    """What is wrong with ``raw`` as a required id of 1 to ``limit`` characters, or ``None``."""
    if raw is None:
        return _required()
    if raw == "":
        return _("This field may not be blank.")
    if not isinstance(raw, str):
        return _("Not a valid string.")
    if len(raw) > limit:
        return _("Ensure this field has no more than %(limit)s characters.") % {"limit": limit}
    return None


def parse_quantity(raw: Any, decimal_places: int, *, allow_zero: bool = False) -> tuple[int, Any]:
    """``raw`` as exact thousandths of the unit: ``(milli, None)`` or ``(0, message)``.

    Only a JSON number is a quantity (``int``, or ``Decimal`` as ``ExactJSONParser`` reads
    one; ``float`` from other callers): text such as ``"7"`` or ``"1e3"`` and booleans are
    refused, as text would let every spelling Python's ``Decimal`` accepts through
    (``" 7 "``, ``"1_000"``, other scripts' digits). Checks the value, not its spelling:
    ``1530.0`` tokens is 1530, ``1.2500`` seconds has two decimals. Never rounds.
    """
    if type(raw) is int and 0 < raw <= MAX_QUANTITY:  # the common case, checked cheaply
        return raw * 1000, None
    if isinstance(raw, bool) or not isinstance(raw, int | Decimal | float):
        return 0, MSG_NOT_A_NUMBER
    value = Decimal(str(raw)) if isinstance(raw, float) else Decimal(raw)
    if not value.is_finite():
        return 0, _("A valid number is required.")
    if value < 0 or (value == 0 and not allow_zero):
        if allow_zero:
            return 0, _("Ensure this value is greater than or equal to 0.")
        return 0, _("Ensure this value is greater than 0.")
    if value > MAX_QUANTITY:
        return 0, _("Ensure this value is less than or equal to %(limit)s.") % {
            "limit": MAX_QUANTITY
        }
    _sign, digits, exponent = value.as_tuple()
    assert isinstance(exponent, int)  # finite, checked above
    while exponent < 0 and digits and digits[-1] == 0:
        digits, exponent = digits[:-1], exponent + 1
    if -exponent > decimal_places:
        if decimal_places == 0:
            return 0, _("Ensure this value is a whole number: this metric takes no decimals.")
        return 0, _("Ensure that there are no more than %(places)s decimal places.") % {
            "places": decimal_places
        }
    mantissa = int("".join(map(str, digits)) or "0")
    return mantissa * 10 ** (exponent + 3), None


def parse_metric(raw: Any) -> tuple[str, Any]:
    if raw is None or raw == "":
        return "", _required()
    if not isinstance(raw, str) or raw not in METRICS:
        return "", _("“%(value)s” is not a valid metric. Expected one of: %(metrics)s.") % {
            "value": raw,
            "metrics": ", ".join(METRICS),
        }
    return raw, None


def _parse_occurred_at(raw: Any, now: datetime) -> tuple[datetime | None, Any]:
    if raw is None:
        return now, None
    if not isinstance(raw, str):
        return None, _("Datetime has wrong format. Use ISO 8601 with a UTC offset.")
    try:
        moment = datetime.fromisoformat(raw)
    except ValueError:
        return None, _("Datetime has wrong format. Use ISO 8601 with a UTC offset.")
    if moment.tzinfo is None or moment.utcoffset() is None:
        return None, _("Datetime has no UTC offset. Use ISO 8601 with a UTC offset.")
    if moment.year < EARLIEST_OCCURRED_YEAR:
        return None, _("Ensure this moment is in the year %(year)s or later.") % {
            "year": EARLIEST_OCCURRED_YEAR
        }
    # Comparing aware moments subtracts them as durations: it never overflows, even at
    # year 9999 with any offset.
    if moment > now + MAX_FUTURE:
        return None, _("Ensure this moment is not more than 5 minutes in the future.")
    # In UTC: PostgreSQL refuses offsets past 15:59 that ISO 8601 allows (up to 23:59).
    return moment.astimezone(UTC), None


@lru_cache(maxsize=4096)
def _uuid_of(text: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(text)
    except ValueError:
        return None


def _uuid(raw: Any) -> uuid.UUID | None:
    """``raw`` as a UUID, or ``None``; a batch names few accounts, so parsing is cached."""
    return _uuid_of(raw) if isinstance(raw, str) else None


# What a batch repeats, checked and written once per request: ``(kind, value)`` ->
# ``(json text, labels key)`` for label sets, json text for metadata objects.
_Seen = dict[tuple[str, Any], Any]


def _hashable(value: dict[Any, Any]) -> tuple[Any, ...] | None:
    """A key for a flat JSON object that tells apart what its JSON text tells apart: each
    value with its type (``True`` and ``1`` are equal in Python); ``None`` when a value is
    not hashable (a nested object or list), then it is not remembered."""
    try:
        key = tuple((name, type(item), item) for name, item in value.items())
        hash(key)
    except TypeError:
        return None
    return key


def _parse_event(
    raw: Any, now: datetime, bound: uuid.UUID | None, seen: _Seen | None = None
) -> tuple[EventIn | None, Errors]:
    if not isinstance(raw, dict):
        return None, {"non_field_errors": [_("Expected an event object.")]}
    errors: Errors = unknown_fields(raw, EVENT_FIELDS)

    event_id = raw.get("event_id")
    error = _identifier_error(event_id, MAX_EVENT_ID_LENGTH)
    if error:
        errors["event_id"] = [error]

    reservation_id = raw.get("reservation_id")
    if reservation_id is not None:
        error = _identifier_error(reservation_id, MAX_RESERVATION_ID_LENGTH)
        if error:
            errors["reservation_id"] = [error]

    account_id = None
    account = raw.get("account")
    if account is None or account == "":
        if bound is None:
            errors["account"] = [_required()]
        account_id = bound
    else:
        account_id = _uuid(account)
        if account_id is None:
            errors["account"] = [_("Must be a valid UUID.")]
        elif bound is not None and account_id != bound:
            errors["account"] = [MSG_OTHER_ACCOUNT]

    metric, error = parse_metric(raw.get("metric"))
    if error:
        errors["metric"] = [error]

    quantity_milli = 0
    if "quantity" not in raw or raw["quantity"] is None:
        errors["quantity"] = [_required()]
    elif metric:
        quantity_milli, error = parse_quantity(raw["quantity"], METRICS[metric].decimal_places)
        if error:
            errors["quantity"] = [error]

    occurred_at, error = _parse_occurred_at(raw.get("occurred_at"), now)
    if error:
        errors["occurred_at"] = [error]

    source = raw.get("source")
    if source is None:
        source = ""
    elif not isinstance(source, str):
        errors["source"] = [_("Not a valid string.")]
    elif len(source) > MAX_SOURCE_LENGTH:
        errors["source"] = [
            _("Ensure this field has no more than %(limit)s characters.")
            % {"limit": MAX_SOURCE_LENGTH}
        ]

    metadata = raw.get("metadata")
    metadata_json = "{}"
    if metadata is not None:
        if type(metadata) is not dict:
            errors["metadata"] = [_("Expected an object.")]
        elif metadata:
            memo = _hashable(metadata) if seen is not None else None
            found = seen.get(("metadata", memo)) if memo is not None else None
            if found is not None:
                metadata_json = found
            else:
                metadata_json = json.dumps(metadata, default=_json_number, separators=(",", ":"))
                if len(metadata_json) > MAX_METADATA_BYTES:
                    errors["metadata"] = [
                        _("Ensure the metadata is at most %(limit)s bytes once encoded.")
                        % {"limit": MAX_METADATA_BYTES}
                    ]
                elif memo is not None:
                    seen[("metadata", memo)] = metadata_json

    raw_labels = raw.get("labels")
    labels_json, key = "{}", ""
    if raw_labels is not None and raw_labels != {}:
        memo = _hashable(raw_labels) if seen is not None and type(raw_labels) is dict else None
        found = seen.get(("labels", memo)) if memo is not None else None
        if found is not None:
            labels_json, key = found
        else:
            labels, label_errors = labels_parse(raw_labels)
            if label_errors:
                errors["labels"] = label_errors
            elif labels:
                labels_json = json.dumps(labels, sort_keys=True, separators=(",", ":"))
                key = labels_key(labels)
                if memo is not None:
                    seen[("labels", memo)] = (labels_json, key)

    if errors:
        return None, errors
    assert account_id is not None and occurred_at is not None
    return (
        EventIn(
            account_id=account_id,
            event_id=event_id,
            metric=metric,
            quantity_milli=quantity_milli,
            occurred_at=occurred_at,
            source=source,
            metadata=metadata_json,
            labels=labels_json,
            labels_key=key,
            reservation_id=reservation_id or "",
        ),
        {},
    )


# The smallest step of a quantity with 0 to 3 decimals.
_QUANTUM = {places: Decimal(1).scaleb(-places) for places in range(4)}
_DECIMAL_PLACES = {code: spec.decimal_places for code, spec in METRICS.items()}
assert max(_DECIMAL_PLACES.values()) <= 3  # thousandths hold every metric's quantities
_METADATA_ENCODER = json.JSONEncoder(default=_json_number, separators=(",", ":"))
_LABELS_ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"))


def _all_text(value: dict[Any, Any]) -> bool:
    """Whether every key and value of ``value`` is a ``str``: then its items tell apart what
    its JSON text tells apart (``True`` equals ``1`` in Python, never a ``str``)."""
    return all(type(item) is str for item in value) and all(
        type(item) is str for item in value.values()
    )


def _parse_batch(
    raw_events: list[Any], now: datetime, bound: uuid.UUID | None
) -> tuple[list[EventIn], Errors]:
    """The events of a batch, checked, or the errors keyed by index.

    The usual event (every field of the usual type and valid) is checked and built by
    ``usual``, one call per event with the checks written out; any other goes through
    ``_parse_event``, which holds every rule and message, so the answer is the same either
    way. What a batch repeats is worked out once: account ids, label sets and metadata
    objects (keyed by their items; metadata only when every key and value is a string).
    """
    seen: _Seen = {}
    accounts: dict[str, uuid.UUID] = {}  # account texts already checked, to their id
    labels_seen: dict[tuple[Any, ...], tuple[str, str]] = {}
    metadata_seen: dict[tuple[Any, ...], str] = {}
    places, quanta, fields = _DECIMAL_PLACES, _QUANTUM, EVENT_FIELDS
    latest = now + MAX_FUTURE
    parse_moment = datetime.fromisoformat

    def usual(raw: Any) -> EventIn | None:
        """The event, if each of its fields has the usual shape and is valid; else ``None``."""
        if type(raw) is not dict or not raw.keys() <= fields:
            return None
        get = raw.get
        event_id = get("event_id")
        if type(event_id) is not str or not 0 < len(event_id) <= MAX_EVENT_ID_LENGTH:
            return None
        reservation_id = get("reservation_id")
        if reservation_id is None:
            reservation_id = ""
        elif type(reservation_id) is not str or not (
            0 < len(reservation_id) <= MAX_RESERVATION_ID_LENGTH
        ):
            return None
        account = get("account")
        if account is None or account == "":
            if bound is None:
                return None
            account_id = bound
        else:
            account_id = accounts.get(account) if type(account) is str else None
            if account_id is None:
                account_id = _uuid(account)
                if account_id is None or (bound is not None and account_id != bound):
                    return None
                accounts[account] = account_id
        metric = get("metric")
        if type(metric) is not str or metric not in places:
            return None
        quantity = get("quantity")
        if type(quantity) is int and 0 < quantity <= MAX_QUANTITY:
            quantity_milli = quantity * 1000
        elif type(quantity) is Decimal and quantity.is_finite() and 0 < quantity <= MAX_QUANTITY:
            # Exact: a quantity of at most 10**12 with 3 decimals fits the context's 28
            # digits, and one with more decimals than the metric takes differs from its
            # value quantized to the metric's decimals.
            exact = quantity.quantize(quanta[places[metric]])
            if exact != quantity:
                return None
            quantity_milli = int(exact.scaleb(3))
        else:
            return None
        occurred = get("occurred_at")
        if occurred is None:
            occurred_at = now
        elif type(occurred) is str:
            try:
                moment = parse_moment(occurred)
            except ValueError:
                return None
            if moment.tzinfo is None or moment.year < EARLIEST_OCCURRED_YEAR or moment > latest:
                return None
            occurred_at = moment.astimezone(UTC)
        else:
            return None
        source = get("source")
        if source is None:
            source = ""
        elif type(source) is not str or len(source) > MAX_SOURCE_LENGTH:
            return None
        metadata = get("metadata")
        if metadata is None or metadata == {}:
            metadata_json = "{}"
        elif type(metadata) is dict:
            memo: tuple[Any, ...] | None = tuple(metadata.items())
            try:
                found = metadata_seen.get(memo)  # type: ignore[arg-type]
            except TypeError:  # a nested object or list
                memo, found = None, None
            if found is None:
                found = _METADATA_ENCODER.encode(metadata)
                if len(found) > MAX_METADATA_BYTES:
                    return None
                if memo is not None and _all_text(metadata):
                    metadata_seen[memo] = found
            metadata_json = found
        else:
            return None
        raw_labels = get("labels")
        if raw_labels is None or raw_labels == {}:
            labels_json, key = "{}", ""
        elif type(raw_labels) is dict:
            memo = tuple(raw_labels.items())
            try:
                found_labels = labels_seen.get(memo)
            except TypeError:
                return None
            if found_labels is None:
                labels, label_errors = labels_parse(raw_labels)
                if label_errors:
                    return None
                # Only strings pass ``labels_parse``: the items key the set exactly.
                found_labels = (_LABELS_ENCODER.encode(labels), labels_key(labels))
                labels_seen[memo] = found_labels
            labels_json, key = found_labels
        else:
            return None
        return EventIn(
            account_id,
            event_id,
            metric,
            quantity_milli,
            occurred_at,
            source,
            metadata_json,
            labels_json,
            key,
            reservation_id,
        )

    events: list[EventIn] = []
    errors: Errors = {}
    for index, raw in enumerate(raw_events):
        event = usual(raw)
        if event is None:
            event, event_errors = _parse_event(raw, now, bound, seen)
            if event_errors:
                errors[str(index)] = event_errors
                continue
        if not errors and event is not None:
            events.append(event)
    return events, errors


def parse_events(
    payload: Any, now: datetime, *, bound: uuid.UUID | None = None
) -> tuple[list[EventIn], bool]:
    """Check one event or ``{"events": [...]}``; returns ``(events, is_batch)``.

    ``bound`` is the account of a token bound to one (SPEC section 11.6): an event that
    leaves ``account`` out is that account's, and one that names another is refused.

    A batch is checked whole: any invalid event raises ``EventsInvalid`` with errors keyed
    by the event's index, e.g. ``{"events": {"3": {"quantity": [...]}}}``.
    """
    if isinstance(payload, dict) and "events" in payload:
        unknown = unknown_fields(payload, BATCH_FIELDS)
        if unknown:
            raise EventsInvalid(unknown)
        raw_events = payload["events"]
        if not isinstance(raw_events, list):
            raise EventsInvalid({"events": [_("Expected a list of events.")]})
        if not raw_events:
            raise EventsInvalid({"events": [_("This list may not be empty.")]})
        if len(raw_events) > MAX_BATCH:
            raise EventsInvalid(
                {
                    "events": [
                        _("Ensure this list has at most %(limit)s events.") % {"limit": MAX_BATCH}
                    ]
                }
            )
        events, errors = _parse_batch(raw_events, now, bound)
        if errors:
            raise EventsInvalid({"events": errors})
        return events, True
    event, event_errors = _parse_event(payload, now, bound)
    if event_errors:
        raise EventsInvalid(event_errors)
    assert event is not None
    return [event], False


# --- Reservations (SPEC 12.1) ---

RESERVATION_FIELDS = frozenset({"reservation_id", "metric", "quantity", "labels", "ttl_seconds"})


@dataclass(frozen=True, slots=True)
class ReservationIn:
    """A checked request for a reservation."""

    reservation_id: str
    metric: str
    quantity_milli: int
    labels: dict[str, str]
    ttl_seconds: int


def parse_reservation(raw: Any) -> ReservationIn:
    """Check the body of ``POST .../usage/reservations/``; ``EventsInvalid`` keyed by field."""
    if not isinstance(raw, dict):
        raise EventsInvalid({"non_field_errors": [_("Expected an object.")]})
    errors: Errors = unknown_fields(raw, RESERVATION_FIELDS)
    reservation_id = raw.get("reservation_id")
    error = _identifier_error(reservation_id, MAX_RESERVATION_ID_LENGTH)
    if error:
        errors["reservation_id"] = [error]
    metric, error = parse_metric(raw.get("metric"))
    if error:
        errors["metric"] = [error]
    quantity_milli = 0
    if raw.get("quantity") is None:
        errors["quantity"] = [_required()]
    elif metric:
        quantity_milli, error = parse_quantity(raw["quantity"], METRICS[metric].decimal_places)
        if error:
            errors["quantity"] = [error]
    labels, label_errors = labels_parse(raw.get("labels"))
    if label_errors:
        errors["labels"] = label_errors
    ttl = raw.get("ttl_seconds")
    if ttl is None:
        ttl = DEFAULT_TTL_SECONDS
    elif (
        isinstance(ttl, bool)
        or not isinstance(ttl, int | Decimal)
        or (isinstance(ttl, Decimal) and (not ttl.is_finite() or ttl != ttl.to_integral_value()))
    ):
        errors["ttl_seconds"] = [_("A valid integer is required.")]
    elif not MIN_TTL_SECONDS <= ttl <= MAX_TTL_SECONDS:
        errors["ttl_seconds"] = [
            _("Ensure this value is between %(low)s and %(high)s.")
            % {"low": MIN_TTL_SECONDS, "high": MAX_TTL_SECONDS}
        ]
    if errors:
        raise EventsInvalid(errors)
    return ReservationIn(
        reservation_id=reservation_id,
        metric=metric,
        quantity_milli=quantity_milli,
        labels=labels,
        ttl_seconds=int(ttl),
    )
