"""Serializers that describe the usage documents (rendering and the OpenAPI schema).

Incoming events are checked by ``usage.ingest`` in plain Python, not by these.
"""

from __future__ import annotations

from rest_framework import serializers

from accounts.metrics import METRICS
from usage.ingest import MAX_BATCH

METRIC_CHOICES = list(METRICS)
STATUS_CHOICES = ["ok", "warning", "blocked"]


class EventSerializer(serializers.Serializer):
    event_id = serializers.CharField(
        max_length=128, help_text="Unique per account; a retry with the same id counts once."
    )
    account = serializers.UUIDField(help_text="The account's id.")
    metric = serializers.ChoiceField(choices=METRIC_CHOICES, help_text="The metric's code.")
    quantity = serializers.DecimalField(
        max_digits=16,
        decimal_places=3,
        coerce_to_string=False,
        help_text="Greater than 0, at most 1,000,000,000,000; an integer for tokens, "
        "at most 3 decimals for seconds. Never rounded.",
    )
    occurred_at = serializers.DateTimeField(
        required=False,
        allow_null=True,
        help_text="ISO 8601 with offset; now when null or left out; at most 5 minutes in the future. "
        "Counts in the period that contains it in the account's time zone.",
    )
    source = serializers.CharField(
        required=False,
        allow_null=True,
        allow_blank=True,
        max_length=64,
        help_text="The reporting service; none when null, empty or left out.",
    )
    metadata = serializers.DictField(
        required=False,
        allow_null=True,
        help_text="Free-form JSON object; empty when null or left out.",
    )


class EventBatchSerializer(serializers.Serializer):
    events = serializers.ListField(
        child=EventSerializer(),
        min_length=1,
        max_length=MAX_BATCH,
        help_text="1 to 1000 events, validated as a whole.",
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


class CheckRequestSerializer(serializers.Serializer):
    metric = serializers.ChoiceField(choices=METRIC_CHOICES)
    quantity = serializers.DecimalField(
        max_digits=16,
        decimal_places=3,
        required=False,
        allow_null=True,
        coerce_to_string=False,
        help_text="How much more would be processed; 0 when null or left out.",
    )


class CheckResultSerializer(serializers.Serializer):
    allowed = serializers.BooleanField(
        help_text="False when used + quantity would pass the effective blocked threshold, "
        "or quantity is 0 and the metric is blocked."
    )
    metric = serializers.ChoiceField(choices=METRIC_CHOICES)
    used = serializers.FloatField()
    remaining = serializers.FloatField(allow_null=True)
    status = serializers.ChoiceField(choices=STATUS_CHOICES)


class ValidationErrorSerializer(serializers.Serializer):
    """Errors keyed by field path (by event index in a batch), each a list of messages."""

    field_name = serializers.ListField(child=serializers.CharField(), required=False)
