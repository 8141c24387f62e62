"""How a stored quantity (thousandths) is written for the API and for people."""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.utils.translation import override

from usage.quantities import (
    amount_text,
    duration_text,
    quantity_number,
    quantity_text,
    threshold_amount_text,
)

TOKENS = "text_tokens"
SECONDS = "audio_transcribed_seconds"
NBSP = "\xa0"  # Django groups French digits with a no-break space


@pytest.mark.parametrize(
    ("value_milli", "metric", "expected"),
    [
        (1_234_000, TOKENS, 1234),
        (3_600_500, SECONDS, Decimal("3600.5")),
        (12_000, SECONDS, Decimal("12")),
        (1, SECONDS, Decimal("0.001")),
        (None, SECONDS, None),
    ],
)
def test_the_api_number_is_an_integer_for_tokens_and_exact_for_seconds(
    value_milli, metric, expected
):
    number = quantity_number(value_milli, metric)
    assert number == expected
    assert type(number) is type(expected)
    assert str(number) == str(expected)  # no exponent, no trailing zeros


@pytest.mark.parametrize(
    ("value_milli", "metric", "all_places", "english", "french"),
    [
        (1_234_000, TOKENS, False, "1,234", f"1{NBSP}234"),
        (1_234_000, TOKENS, True, "1,234", f"1{NBSP}234"),
        (3_600_500, SECONDS, False, "3,600.5", f"3{NBSP}600,5"),
        (3_600_500, SECONDS, True, "3,600.500", f"3{NBSP}600,500"),
        (12_000, SECONDS, False, "12", "12"),
        (1, SECONDS, False, "0.001", "0,001"),
    ],
)
def test_the_text_for_people_is_grouped_and_localized(
    value_milli, metric, all_places, english, french
):
    with override("en"):
        assert quantity_text(value_milli, metric, all_places=all_places) == english
    with override("fr"):
        assert quantity_text(value_milli, metric, all_places=all_places) == french


# --- With the unit, seconds also as hours and minutes (the admin, every title) ---


@pytest.mark.parametrize(
    ("value_milli", "metric", "english", "french"),
    [
        (
            2_160_000_000,
            SECONDS,
            "2,160,000 seconds (600 h)",
            f"2{NBSP}160{NBSP}000 secondes (600 h)",
        ),
        (2_160_000, SECONDS, "2,160 seconds (36 min)", f"2{NBSP}160 secondes (36 min)"),
        (
            60_000_000,
            SECONDS,
            "60,000 seconds (16 h 40 min)",
            f"60{NBSP}000 secondes (16 h 40 min)",
        ),
        (3_600_500, SECONDS, "3,600.5 seconds (1 h)", f"3{NBSP}600,5 secondes (1 h)"),
        (12_500, SECONDS, "12.5 seconds", "12,5 secondes"),
        (1_000, SECONDS, "1 second", "1 seconde"),
        (0, SECONDS, "0 seconds", "0 seconde"),
        (800_000_000, TOKENS, "800,000 tokens", f"800{NBSP}000 jetons"),
        (1_000, TOKENS, "1 token", "1 jeton"),
    ],
)
def test_amounts_carry_their_unit_and_never_pad_decimals(value_milli, metric, english, french):
    with override("en"):
        assert amount_text(value_milli, metric) == english
    with override("fr"):
        assert amount_text(value_milli, metric) == french
    # "60,000.000" read as sixty million in French: never written with padded decimals
    assert ",000." not in english and ",000" not in french.replace(f"{NBSP}000", "")


@pytest.mark.parametrize(
    ("value", "english", "french"),
    [
        (None, "unlimited", "illimité"),
        (36_000, "36,000 seconds (10 h)", f"36{NBSP}000 secondes (10 h)"),
    ],
)
def test_thresholds_carry_their_unit_or_say_unlimited(value, english, french):
    with override("en"):
        assert threshold_amount_text(value, SECONDS) == english
    with override("fr"):
        assert threshold_amount_text(value, SECONDS) == french


@pytest.mark.parametrize(
    ("value_milli", "text"),
    [
        (59_999, ""),
        (60_000, "1 min"),
        (3_600_000, "1 h"),
        (3_659_999, "1 h"),
        (3_660_000, "1 h 1 min"),
        (3_600_000_000, "1,000 h"),
    ],
)
def test_durations_round_down_to_the_minute(value_milli, text):
    with override("en"):
        assert duration_text(value_milli) == text
