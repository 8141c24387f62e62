"""The usage metrics: the one place that lists them.

Adding a metric is one line in ``METRICS`` (plus a migration for the choices).
"""

from __future__ import annotations

from dataclasses import dataclass

from django.db import models
from django.utils.translation import gettext_lazy as _


@dataclass(frozen=True)
class MetricSpec:
    """What a metric counts and how its quantities are written."""

    code: str
    label: str
    unit: str
    decimal_places: int


METRICS: dict[str, MetricSpec] = {
    spec.code: spec
    for spec in (
        MetricSpec("audio_transcribed_seconds", _("Audio transcribed"), "seconds", 3),
        MetricSpec("audio_analyzed_seconds", _("Audio analyzed"), "seconds", 3),
        MetricSpec("text_tokens", _("Text tokens"), "tokens", 0),
    )
}

Metric = models.TextChoices(
    "Metric", [(spec.code.upper(), (spec.code, spec.label)) for spec in METRICS.values()]
)
Metric.__doc__ = "The metric codes, as model field choices."
