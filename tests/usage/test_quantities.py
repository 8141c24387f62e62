"""How a stored quantity (thousandths) is written for the API and for people."""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.utils.translation import override

from usage.quantities import quantity_number, quantity_text

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
