"""API answers are written by orjson, byte for byte as DRF's own JSON renderer writes them."""

from __future__ import annotations

import datetime
import decimal
import uuid

import pytest
from django.utils.translation import gettext_lazy
from rest_framework.renderers import JSONRenderer
from rest_framework.utils.serializer_helpers import ReturnDict, ReturnList

from accounts.windows import PeriodKind
from config.renderers import FastJSONRenderer

ANSWERS = {
    "capacities-like": {
        "account": uuid.UUID("6f1c7e1a-2b9e-4f57-9a51-1f0d2a3b4c5d"),
        "has_remaining_capacity": True,
        "items": [
            {
                "metric": "audio_transcribed_seconds",
                "labels": {"model": "large"},
                "current_period": {"period": PeriodKind.DAY, "window_days": None},
                "used": decimal.Decimal("12.500"),
                "remaining": decimal.Decimal("0.001"),
                "reserved": decimal.Decimal("0"),
                "blocked_threshold": 10**12,
                "status": "ok",
            }
        ],
    },
    "instants": {
        "utc": datetime.datetime(2026, 12, 2, 23, 0, tzinfo=datetime.UTC),
        "paris": datetime.datetime.fromisoformat("2026-12-03T00:00:00.250+01:00"),
        "day": datetime.date(2027, 2, 28),
    },
    "texts": {
        "lazy": gettext_lazy("Account not found."),
        "accents and separators": "Réservé\u2028ligne\u2029fin",
        "quotes": 'a "b" \\ c',
    },
    "serializer containers": ReturnDict(
        {"errors": ReturnList([{"field": ["Unknown field."]}], serializer=None)}, serializer=None
    ),
    "numbers": [0, -1, 2.5, 0.1, 1e-3, 2**63 - 1, True, None],
    "past 64 bits": {"big": 2**70},
    "keys that are not strings": {1: "one", None: "none"},
    "empty": {},
}


@pytest.mark.parametrize("data", ANSWERS.values(), ids=ANSWERS.keys())
@pytest.mark.parametrize("accepted", [None, "application/json", "application/json; indent=4"])
def test_answers_are_the_bytes_drf_writes(data, accepted):
    # when
    fast = FastJSONRenderer().render(data, accepted, {})
    # then
    assert fast == JSONRenderer().render(data, accepted, {})


def test_nothing_is_written_for_no_data():
    assert FastJSONRenderer().render(None) == b""
