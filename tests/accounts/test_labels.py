"""Labels: what an event or a line may carry, their canonical key, and which lines apply."""

from __future__ import annotations

import pytest
from django.utils.translation import override
from hypothesis import given, settings
from hypothesis import strategies as st

from accounts import labels as labels_module
from accounts.labels import (
    LABEL_KEYS,
    labels_from_key,
    labels_from_options,
    labels_key,
    labels_match,
    labels_parse,
    labels_text,
)


def messages(errors):
    """Errors with their lazy messages as text, as DRF renders them."""
    if isinstance(errors, dict):
        return {key: [str(m) for m in value] for key, value in errors.items()}
    return [str(m) for m in errors]


@pytest.mark.parametrize(
    "raw",
    [
        {"model": "large"},
        {"technology": "llm", "vendor": "acme", "operation": "chat", "model": "gpt-4.1:2025/06_x"},
        {"vendor": "a" * 64},
    ],
)
def test_valid_labels_are_kept_as_given(raw):
    assert labels_parse(raw) == (raw, None)


@pytest.mark.parametrize("raw", [None, {}])
def test_no_labels_is_the_empty_set(raw):
    assert labels_parse(raw) == ({}, None)


@pytest.mark.parametrize(
    ("raw", "errors"),
    [
        (
            {"colour": "red"},
            {
                "colour": [
                    "“colour” is not a known label. Expected one of: "
                    "technology, vendor, operation, model."
                ]
            },
        ),
        ({"vendor": ""}, {"vendor": ["The label “vendor” may not be blank."]}),
        ({"vendor": 3}, {"vendor": ["The label “vendor” takes a string."]}),
        ({"vendor": None}, {"vendor": ["The label “vendor” takes a string."]}),
        (
            {"model": "a" * 65},
            {"model": ["Ensure the label “model” has no more than 64 characters."]},
        ),
        (
            {"model": "large model"},
            {
                "model": [
                    "The label “model” may only contain letters A-Z and a-z, digits and _ . : / -."
                ]
            },
        ),
        (
            {"model": "modèle"},
            {
                "model": [
                    "The label “model” may only contain letters A-Z and a-z, digits and _ . : / -."
                ]
            },
        ),
        (
            {"model": "large;vendor=x"},
            {
                "model": [
                    "The label “model” may only contain letters A-Z and a-z, digits and _ . : / -."
                ]
            },
        ),
        (
            {"operation": "ok", "vendor": "a b", "Model": "x"},
            {
                "vendor": [
                    "The label “vendor” may only contain letters A-Z and a-z, digits and _ . : / -."
                ],
                "Model": [
                    "“Model” is not a known label. Expected one of: "
                    "technology, vendor, operation, model."
                ],
            },
        ),
        (["model", "large"], ["Expected an object of labels, e.g. {“model”: “large”}."]),
        ("model=large", ["Expected an object of labels, e.g. {“model”: “large”}."]),
    ],
)
def test_bad_labels_are_refused_with_messages_naming_the_label(raw, errors):
    # when
    parsed, found = labels_parse(raw)

    # then
    assert parsed == {}
    assert messages(found) == errors


def test_a_trailing_newline_is_not_a_valid_value():
    _, errors = labels_parse({"model": "large\n"})
    assert list(errors) == ["model"]


def test_at_most_four_labels(monkeypatch):
    # Four keys exist, so only a shorter limit can show the rule.
    monkeypatch.setattr(labels_module, "MAX_LABELS", 2)
    _, errors = labels_parse({"model": "a", "vendor": "b", "operation": "c"})
    assert messages(errors) == ["Ensure there are no more than 2 labels."]
    assert labels_parse({"model": "a", "vendor": "b"}) == ({"model": "a", "vendor": "b"}, None)


def test_messages_are_translated():
    with override("fr"):
        _, errors = labels_parse({"vendor": "", "colour": "red"})
        assert messages(errors) == {
            "vendor": ["L’étiquette « vendor » ne peut pas être vide."],
            "colour": [
                "« colour » n’est pas une étiquette connue. Valeurs acceptées : "
                "technology, vendor, operation, model."
            ],
        }
        assert labels_text({"vendor": "acme", "model": "large"}) == (
            "Modèle : large, Fournisseur : acme"
        )
    assert labels_text({"vendor": "acme", "model": "large"}) == "Model: large, Vendor: acme"


def test_the_key_of_a_label_set_is_sorted_and_independent_of_order():
    assert labels_key({}) == ""
    assert labels_key({"vendor": "acme", "model": "large"}) == "model=large;vendor=acme"
    assert labels_key({"model": "large", "vendor": "acme"}) == "model=large;vendor=acme"
    assert labels_from_key("model=large;vendor=acme") == {"model": "large", "vendor": "acme"}
    assert labels_from_key("") == {}


@pytest.mark.parametrize(
    "key",
    ["model", "model=", "colour=red", "vendor=acme;model=large", "model=a;model=b", "model=a;"],
)
def test_only_canonical_keys_read_back(key):
    with pytest.raises(ValueError):
        labels_from_key(key)


VALUES = st.text(alphabet="ABCXYZabcxyz0189_.:/-", min_size=1, max_size=64)
LABEL_SETS = st.dictionaries(st.sampled_from(list(LABEL_KEYS)), VALUES, max_size=4)


@settings(max_examples=300)
@given(first=LABEL_SETS, second=LABEL_SETS)
def test_two_label_sets_share_a_key_exactly_when_they_are_equal(first, second):
    assert labels_parse(first) == (first, None)
    assert labels_from_key(labels_key(first)) == first
    assert (labels_key(first) == labels_key(second)) == (first == second)


@settings(max_examples=300)
@given(line=LABEL_SETS, event=LABEL_SETS)
def test_a_line_applies_when_the_event_has_all_its_pairs(line, event):
    expected = set(line.items()) <= set(event.items())
    assert labels_match(line=line, event=event) is expected
    assert labels_match(line={}, event=event)
    assert labels_match(line=line, event=event | line)


@pytest.mark.parametrize(
    ("line", "event", "applies"),
    [
        ({}, {}, True),
        ({}, {"model": "large"}, True),
        ({"model": "large"}, {"model": "large", "vendor": "acme"}, True),
        ({"model": "large"}, {"model": "Large"}, False),
        ({"model": "large"}, {}, False),
        ({"model": "large", "vendor": "acme"}, {"model": "large"}, False),
        ({"model": "large", "vendor": "acme"}, {"vendor": "acme", "model": "large"}, True),
    ],
)
def test_a_line_applies_to_events_whose_labels_contain_its_own(line, event, applies):
    assert labels_match(line=line, event=event) is applies


def test_label_options_read_as_key_value_pairs():
    assert labels_from_options([]) == ({}, None)
    assert labels_from_options(["model=large", "vendor=acme"]) == (
        {"model": "large", "vendor": "acme"},
        None,
    )


@pytest.mark.parametrize(
    ("options", "errors"),
    [
        (["model"], ["“model” is not a label: use KEY=VALUE, e.g. model=large."]),
        (["=large"], ["“=large” is not a label: use KEY=VALUE, e.g. model=large."]),
        (["model=a", "model=b"], {"model": ["The label “model” is given more than once."]}),
        (["model="], {"model": ["The label “model” may not be blank."]}),
        (
            ["model=a=b"],
            {
                "model": [
                    "The label “model” may only contain letters A-Z and a-z, digits and _ . : / -."
                ]
            },
        ),
        (
            ["size=xl"],
            {
                "size": [
                    "“size” is not a known label. Expected one of: "
                    "technology, vendor, operation, model."
                ]
            },
        ),
    ],
)
def test_bad_label_options_are_refused(options, errors):
    parsed, found = labels_from_options(options)
    assert parsed == {}
    assert messages(found) == errors
