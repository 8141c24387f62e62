"""Serializers that describe the usage documents (rendering and the OpenAPI schema).

Incoming events are checked by ``usage.ingest`` in plain Python, not by these.
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import PolymorphicProxySerializer, extend_schema_field
from rest_framework import serializers

from accounts.labels import LABEL_KEYS, MAX_LABELS, MAX_VALUE_LENGTH, VALUE
from accounts.metrics import METRICS
from accounts.windows import PeriodKind
from usage.ingest import (
    DEFAULT_TTL_SECONDS,
    EARLIEST_OCCURRED_YEAR,
    MAX_BATCH,
    MAX_EVENT_ID_LENGTH,
    MAX_METADATA_BYTES,
    MAX_QUANTITY,
    MAX_RESERVATION_ID_LENGTH,
    MAX_SOURCE_LENGTH,
    MAX_TTL_SECONDS,
    MIN_TTL_SECONDS,
)

METRIC_CHOICES = list(METRICS)
STATUS_CHOICES = ["ok", "warning", "blocked"]


def _units() -> dict[str, tuple[int, list[str]]]:
    """Each unit with its decimal places and its metrics, in ``METRICS`` order."""
    units: dict[str, tuple[int, list[str]]] = {}
    for spec in METRICS.values():
        places, codes = units.setdefault(spec.unit, (spec.decimal_places, []))
        assert places == spec.decimal_places, f"{spec.unit} is written with {places} decimals"
        codes.append(spec.code)
    return units


UNITS = _units()
# The metrics of each unit, named for SPECTACULAR_SETTINGS["ENUM_NAME_OVERRIDES"]: each
# choice set is an enum of the schema (a unit added to METRICS needs its line there too).
SECONDS_METRICS = UNITS["seconds"][1]
TOKENS_METRICS = UNITS["tokens"][1]


def _schema_field(name: str, base: type[serializers.Field], schema: dict[str, Any]) -> type:
    """A subclass of ``base`` that the OpenAPI schema describes as ``schema``.

    These serializers only describe requests (``usage.ingest`` checks them), so a field's
    schema is written out where DRF's own would not say the whole rule.
    """
    return extend_schema_field(schema)(type(name, (base,), {"__module__": __name__}))


def quantity_schema(unit: str, *, zero_allowed: bool) -> dict[str, Any]:
    """The exact set of quantities the API takes in ``unit``: bounds and decimal places.

    ``multipleOf`` says "at most N decimals" (1 for whole numbers, 0.001 for thousandths),
    and ``type: number`` rather than ``integer`` because ``1530.0`` or ``1e3`` tokens are
    taken at their value, and OpenAPI 3.0 calls only ``1530`` an integer.
    """
    places, _codes = UNITS[unit]
    schema: dict[str, Any] = {
        "type": "number",
        "maximum": MAX_QUANTITY,
        "multipleOf": 1 if places == 0 else 10**-places,
    }
    if zero_allowed:
        schema["minimum"] = 0
    elif places == 0:
        schema["minimum"] = 1
    else:
        schema.update(minimum=0, exclusiveMinimum=True)
    return schema


assert EARLIEST_OCCURRED_YEAR == 2000, "write the pattern of OCCURRED_AT_FIELD anew"
OCCURRED_AT_FIELD = _schema_field(
    "OccurredAtField",
    serializers.DateTimeField,
    # The years 2000 to 9999, as written (in the moment's own offset), as ``ingest`` checks.
    {"type": "string", "format": "date-time", "pattern": "^[2-9][0-9]{3}-"},
)


# SPEC 11.1: the label keys of the code, each a string of 1 to 64 characters from
# ``A-Z a-z 0-9 _ . : / -``, at most four pairs; ``null`` is ``{}``.
LABELS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "nullable": True,
    "additionalProperties": False,
    "maxProperties": MAX_LABELS,
    "properties": {
        key: {
            "type": "string",
            "minLength": 1,
            "maxLength": MAX_VALUE_LENGTH,
            "pattern": f"^{VALUE.pattern}$",
        }
        for key in LABEL_KEYS
    },
}
LABELS_FIELD = _schema_field("LabelsField", serializers.DictField, LABELS_SCHEMA)


def _event_variant(unit: str, metrics: list[str]) -> type[serializers.Serializer]:
    places, _codes = UNITS[unit]
    decimals = "a whole number" if places == 0 else f"at most {places} decimals"
    fields = {
        "event_id": serializers.CharField(
            max_length=MAX_EVENT_ID_LENGTH,
            help_text="Unique per account; a retry with the same id counts once.",
        ),
        "account": serializers.UUIDField(
            required=False,
            help_text="The account's id. Required, unless the token is bound to one account: "
            "then it defaults to that account, and naming another is refused (400).",
        ),
        "metric": serializers.ChoiceField(choices=metrics, help_text="The metric's code."),
        "quantity": _schema_field(
            f"{unit.title()}QuantityField",
            serializers.DecimalField,
            quantity_schema(unit, zero_allowed=False),
        )(
            max_digits=16,
            decimal_places=places,
            help_text=f"In {unit}: greater than 0, at most {MAX_QUANTITY:,}, {decimals}. "
            "A JSON number, never text; never rounded.",
        ),
        "occurred_at": OCCURRED_AT_FIELD(
            required=False,
            allow_null=True,
            help_text=f"ISO 8601 with offset, in the year {EARLIEST_OCCURRED_YEAR} or later "
            "(as written, in its own offset) and at most 5 minutes from now; now when null "
            "or left out. Counts in the period that contains it in "
            "the account's time zone.",
        ),
        "source": serializers.CharField(
            required=False,
            allow_null=True,
            allow_blank=True,
            max_length=MAX_SOURCE_LENGTH,
            help_text="The reporting service; none when null, empty or left out.",
        ),
        "metadata": serializers.DictField(
            required=False,
            allow_null=True,
            help_text=f"Free-form JSON object, at most {MAX_METADATA_BYTES} bytes once encoded; "
            "empty when null or left out.",
        ),
        "labels": LABELS_FIELD(
            required=False,
            allow_null=True,
            help_text="At most 4 labels, keys among "
            + ", ".join(LABEL_KEYS)
            + ", values of 1 to 64 characters from A-Z a-z 0-9 _ . : / -; none when null or "
            "left out. Part of the event: a later copy of its event_id with other labels is a "
            "duplicate.",
        ),
        "reservation_id": serializers.CharField(
            required=False,
            allow_null=True,
            min_length=1,
            max_length=MAX_RESERVATION_ID_LENGTH,
            help_text="The reservation this usage settles: an active one becomes `settled`. "
            "The event is recorded whatever the reservation (unknown, released or expired).",
        ),
    }
    name = f"{unit.title()}EventSerializer"
    doc = f"A usage event of a metric counted in {unit}."
    return serializers.SerializerMetaclass(
        name, (serializers.Serializer,), {"__doc__": doc, "__module__": __name__, **fields}
    )


def _check_variant(unit: str, metrics: list[str]) -> type[serializers.Serializer]:
    places, _codes = UNITS[unit]
    decimals = "a whole number" if places == 0 else f"at most {places} decimals"
    fields = {
        "metric": serializers.ChoiceField(choices=metrics, help_text="The metric's code."),
        "quantity": _schema_field(
            f"{unit.title()}CheckQuantityField",
            serializers.DecimalField,
            quantity_schema(unit, zero_allowed=True),
        )(
            max_digits=16,
            decimal_places=places,
            required=False,
            allow_null=True,
            help_text=f"How much more would be processed, in {unit}: 0 to {MAX_QUANTITY:,}, "
            f"{decimals}; 0 when null or left out.",
        ),
        "labels": LABELS_FIELD(
            required=False,
            allow_null=True,
            help_text="The labels the usage would carry, as on events; the lines that apply "
            "are the metric's lines whose labels these contain. None when null or left out.",
        ),
    }
    name = f"{unit.title()}CheckSerializer"
    doc = f"A pre-flight check of a metric counted in {unit}."
    return serializers.SerializerMetaclass(
        name, (serializers.Serializer,), {"__doc__": doc, "__module__": __name__, **fields}
    )


def _reservation_variant(unit: str, metrics: list[str]) -> type[serializers.Serializer]:
    places, _codes = UNITS[unit]
    decimals = "a whole number" if places == 0 else f"at most {places} decimals"
    fields = {
        "reservation_id": serializers.CharField(
            min_length=1,
            max_length=MAX_RESERVATION_ID_LENGTH,
            help_text="Unique per account: the same request again answers the same "
            "reservation (200); the same id with another metric, quantity or labels is a 409.",
        ),
        "metric": serializers.ChoiceField(choices=metrics, help_text="The metric's code."),
        "quantity": _schema_field(
            f"{unit.title()}ReservationQuantityField",
            serializers.DecimalField,
            quantity_schema(unit, zero_allowed=False),
        )(
            max_digits=16,
            decimal_places=places,
            help_text=f"How much to hold, in {unit}: greater than 0, at most {MAX_QUANTITY:,}, "
            f"{decimals}.",
        ),
        "labels": LABELS_FIELD(
            required=False,
            allow_null=True,
            help_text="The labels the usage will carry, as on events: the reservation holds "
            "capacity on the metric's lines whose labels these contain.",
        ),
        "ttl_seconds": serializers.IntegerField(
            required=False,
            allow_null=True,
            min_value=MIN_TTL_SECONDS,
            max_value=MAX_TTL_SECONDS,
            help_text=f"Seconds the reservation is held unless settled or released, "
            f"{MIN_TTL_SECONDS} to {MAX_TTL_SECONDS}; {DEFAULT_TTL_SECONDS} when null or left out.",
        ),
    }
    name = f"{unit.title()}NewReservationSerializer"
    doc = f"A reservation of a metric counted in {unit}."
    return serializers.SerializerMetaclass(
        name, (serializers.Serializer,), {"__doc__": doc, "__module__": __name__, **fields}
    )


EVENT_VARIANTS = {unit: _event_variant(unit, codes) for unit, (_places, codes) in UNITS.items()}
CHECK_VARIANTS = {unit: _check_variant(unit, codes) for unit, (_places, codes) in UNITS.items()}
# The metric says which variant applies (its unit's rule for quantities): the variants'
# metric enums are disjoint, so exactly one matches. No ``discriminator``: its mapping
# would name one variant under several metrics, which some tools read as one metric only.
EventSerializer = PolymorphicProxySerializer(
    component_name="Event",
    serializers=list(EVENT_VARIANTS.values()),
    resource_type_field_name=None,
)
RESERVATION_VARIANTS = {
    unit: _reservation_variant(unit, codes) for unit, (_places, codes) in UNITS.items()
}
ReservationRequestSerializer = PolymorphicProxySerializer(
    component_name="NewReservation",
    serializers=list(RESERVATION_VARIANTS.values()),
    resource_type_field_name=None,
)
CheckRequestSerializer = PolymorphicProxySerializer(
    component_name="CheckRequest",
    serializers=list(CHECK_VARIANTS.values()),
    resource_type_field_name=None,
)


class EventBatchSerializer(serializers.Serializer):
    events = serializers.ListField(
        child=EventSerializer,
        min_length=1,
        max_length=MAX_BATCH,
        help_text=f"1 to {MAX_BATCH} events, validated as a whole.",
    )


class MetricStatusSerializer(serializers.Serializer):
    account = serializers.UUIDField()
    metric = serializers.ChoiceField(choices=METRIC_CHOICES)
    used = serializers.FloatField(help_text="Current-period usage, read after the write.")
    status = serializers.ChoiceField(choices=STATUS_CHOICES)
    remaining = serializers.FloatField(
        allow_null=True, help_text="Effective blocked threshold minus used; null when unlimited."
    )
    is_within_budget = serializers.BooleanField(help_text="False when the status is blocked.")


class IngestResultSerializer(serializers.Serializer):
    accepted = serializers.IntegerField(help_text="Events recorded by this request.")
    duplicates = serializers.IntegerField(help_text="Events already recorded (not counted again).")
    usage = MetricStatusSerializer(
        many=True, help_text="One entry per account and metric the request touched."
    )


class PeriodSerializer(serializers.Serializer):
    start = serializers.DateTimeField(help_text="First day 00:00 in the account's time zone.")
    end = serializers.DateTimeField(help_text="Start of the next period (excluded).")
    timezone = serializers.CharField(help_text="The account's IANA time zone.")


class MetricUsageSerializer(serializers.Serializer):
    metric = serializers.ChoiceField(choices=METRIC_CHOICES)
    unit = serializers.ChoiceField(choices=["seconds", "tokens"])
    used = serializers.FloatField(help_text="Integer for tokens, up to 3 decimals for seconds.")
    warning_threshold = serializers.IntegerField(allow_null=True)
    blocked_threshold = serializers.IntegerField(allow_null=True)
    extension = serializers.IntegerField(help_text="Extensions granted for this period.")
    remaining = serializers.FloatField(allow_null=True)
    status = serializers.ChoiceField(choices=STATUS_CHOICES)
    is_within_budget = serializers.BooleanField()


class AccountUsageSerializer(serializers.Serializer):
    account = serializers.UUIDField()
    period = PeriodSerializer()
    has_remaining_capacity = serializers.BooleanField(help_text="False when any metric is blocked.")
    metrics = MetricUsageSerializer(many=True, help_text="Every metric, in a fixed order.")


class LineLabelsSerializer(serializers.Serializer):
    """The labels a line counts (SPEC 11.2): every key is optional; ``{}`` counts every event."""

    technology = serializers.CharField(required=False)
    vendor = serializers.CharField(required=False)
    operation = serializers.CharField(required=False)
    model = serializers.CharField(required=False)


class CheckLineSerializer(serializers.Serializer):
    period = serializers.ChoiceField(choices=PeriodKind.values)
    window_days = serializers.IntegerField(allow_null=True)
    labels = LineLabelsSerializer()
    used = serializers.FloatField(help_text="The line's usage over its current window.")
    remaining = serializers.FloatField(allow_null=True)
    status = serializers.ChoiceField(choices=STATUS_CHOICES)
    allowed = serializers.BooleanField(help_text="Whether this line lets the quantity through.")


class CheckResultSerializer(serializers.Serializer):
    allowed = serializers.BooleanField(
        help_text="False when any applying line would pass its effective blocked threshold "
        "with quantity, or quantity is 0 and an applying line is blocked."
    )
    metric = serializers.ChoiceField(choices=METRIC_CHOICES)
    used = serializers.FloatField(help_text="The whole-metric monthly line's usage.")
    remaining = serializers.FloatField(
        allow_null=True, help_text="The smallest of the applying lines; null if none is capped."
    )
    status = serializers.ChoiceField(
        choices=STATUS_CHOICES, help_text="The worst of the applying lines."
    )
    lines = CheckLineSerializer(
        many=True,
        help_text="Each line that applies: the metric's lines whose labels the check's contain.",
    )


class LinePeriodSerializer(serializers.Serializer):
    period = serializers.ChoiceField(choices=PeriodKind.values)
    window_days = serializers.IntegerField(
        allow_null=True, help_text="The window's length in days for `rolling`, else null."
    )
    start_time = serializers.DateTimeField(
        help_text="The window's start, with the account's local offset."
    )
    end_time = serializers.DateTimeField(help_text="The window's end (excluded).")


class CapacitySerializer(serializers.Serializer):
    metric = serializers.ChoiceField(choices=METRIC_CHOICES)
    unit = serializers.ChoiceField(choices=list(UNITS))
    labels = LineLabelsSerializer()
    current_period = LinePeriodSerializer()
    used = serializers.FloatField(help_text="Integer for tokens, up to 3 decimals for seconds.")
    warning_threshold = serializers.IntegerField(allow_null=True)
    blocked_threshold = serializers.IntegerField(allow_null=True)
    extension = serializers.IntegerField(help_text="Extensions granted for the current period.")
    is_extended = serializers.BooleanField(
        help_text="True when an extension raises the blocked threshold for the current period."
    )
    reserved = serializers.FloatField(help_text="What active reservations hold on the line.")
    remaining = serializers.FloatField(
        allow_null=True,
        help_text="Effective blocked threshold minus used and reserved; null when unlimited.",
    )
    status = serializers.ChoiceField(choices=STATUS_CHOICES)
    has_remaining_capacity = serializers.BooleanField(help_text="False when the line is blocked.")
    valid_until = serializers.DateTimeField(
        help_text="When the line's figures change without new usage: its window's end."
    )


class CapacitiesSerializer(serializers.Serializer):
    account = serializers.UUIDField()
    has_remaining_capacity = serializers.BooleanField(help_text="False when any line is blocked.")
    items = CapacitySerializer(
        many=True,
        help_text="The three whole-metric monthly lines, then each scoped limit in its order.",
    )


RESERVATION_STATUS_CHOICES = ["active", "settled", "released", "expired"]
RESERVATION_REFUSAL_CODES = ["insufficient_capacity", "reservation_id_reused"]


class ReservationLineSerializer(serializers.Serializer):
    period = serializers.ChoiceField(choices=PeriodKind.values)
    window_days = serializers.IntegerField(allow_null=True)
    labels = LineLabelsSerializer()
    used = serializers.FloatField(help_text="The line's usage over its current window.")
    reserved = serializers.FloatField(
        help_text="What active reservations hold on the line, this one included while active."
    )
    remaining = serializers.FloatField(
        allow_null=True,
        help_text="Effective blocked threshold minus used and reserved; null when unlimited.",
    )
    status = serializers.ChoiceField(choices=STATUS_CHOICES)


class ReservationSerializer(serializers.Serializer):
    reservation_id = serializers.CharField()
    status = serializers.ChoiceField(
        choices=RESERVATION_STATUS_CHOICES,
        help_text="`expired` once past `expires_at` unless settled or released before.",
    )
    metric = serializers.ChoiceField(choices=METRIC_CHOICES)
    quantity = serializers.FloatField(help_text="What it holds while active.")
    labels = LineLabelsSerializer()
    created_at = serializers.DateTimeField()
    expires_at = serializers.DateTimeField()
    ended_at = serializers.DateTimeField(
        allow_null=True, help_text="When it was settled, released or expired; null while active."
    )
    lines = ReservationLineSerializer(
        many=True, help_text="Each line it applies to, as it stands now."
    )


class RefusedLineSerializer(ReservationLineSerializer):
    allowed = serializers.BooleanField(help_text="Whether the line had room for the quantity.")


class ReservationRefusedSerializer(serializers.Serializer):
    code = serializers.ChoiceField(choices=RESERVATION_REFUSAL_CODES)
    detail = serializers.CharField()
    lines = RefusedLineSerializer(
        many=True,
        required=False,
        help_text="With `insufficient_capacity`: each line that applies, without the refused "
        "reservation.",
    )


class ValidationErrorSerializer(serializers.Serializer):
    """Errors keyed by field path (by event index in a batch), each a list of messages."""

    field_name = serializers.ListField(child=serializers.CharField(), required=False)
