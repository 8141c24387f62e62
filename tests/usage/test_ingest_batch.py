"""A batch's events are checked by a quick path for the usual shape and by the full checks
for anything else: for any event, both give the same event or the same errors."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from datetime import timezone as dt_timezone
from decimal import Decimal

from django.utils import timezone
from hypothesis import given, settings
from hypothesis import strategies as st

from usage.ingest import _parse_batch, _parse_event, parse_events

ACCOUNT = uuid.UUID("8f14e45f-ceea-467a-9575-6a3f2c9d0b1e")
OTHER = uuid.UUID("c9f0f895-fb98-4b91-99f5-1e4a2b6d7c3a")


def _now() -> datetime:
    return timezone.now().replace(microsecond=0)


texts = st.sampled_from(["", "e-1", "x" * 128, "x" * 129, "bench", "s" * 64, "s" * 65])
anything = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-3, max_value=3),
    st.just(10**12),
    st.just(10**12 + 1),
    st.just(1.5),
    st.sampled_from([Decimal("1.5"), Decimal("0.0005"), Decimal("1530.0"), Decimal("1.2500")]),
    st.sampled_from([Decimal("1E+13"), Decimal("1E-999"), Decimal("-2"), Decimal("0")]),
    texts,
    st.just([]),
    st.just({}),
)
accounts = st.sampled_from(
    [None, "", str(ACCOUNT), ACCOUNT.hex, str(ACCOUNT).upper(), str(OTHER), "not-a-uuid", 7]
)
metrics = st.sampled_from(["text_tokens", "audio_transcribed_seconds", "nope", "", None, 3])
quantities = st.one_of(
    st.integers(min_value=-2, max_value=10**12 + 2),
    st.decimals(min_value=-1, max_value=10**6, places=4, allow_nan=False),
    st.sampled_from([Decimal("1E+13"), Decimal("1E-999"), True, "7", 2.5, None]),
)
moments = st.one_of(
    st.none(),
    st.sampled_from(["yesterday", "2026-01-01T00:00:00", "1999-12-31T23:00:00+00:00", 5]),
    st.tuples(
        st.integers(min_value=-86400 * 40, max_value=600),
        st.sampled_from([0, 60, -300, 345, 23 * 60 + 59]),
    ),
)
label_sets = st.one_of(
    st.none(),
    st.just({}),
    st.dictionaries(
        st.sampled_from(["model", "vendor", "colour"]),
        st.one_of(st.sampled_from(["large", "acme", "", "a b", "x" * 65]), st.integers(0, 1)),
        max_size=3,
    ),
    st.just({"model": "a", "vendor": "b", "operation": "c", "technology": "d", "x": "e"}),
    st.just(["model"]),
)
metadata = st.one_of(
    st.none(),
    st.just({}),
    st.dictionaries(
        st.sampled_from(["model", "n", "deep"]),
        st.one_of(
            st.sampled_from(["large", "x" * 9000]),
            st.booleans(),
            st.integers(0, 1),
            st.just({"a": [1]}),
            st.just(Decimal("0.7")),
        ),
        max_size=3,
    ),
    st.just("text"),
)


valid = {
    "event_id": st.sampled_from(["e-1", "x" * 128]),
    "account": st.sampled_from([str(ACCOUNT), ACCOUNT.hex, str(ACCOUNT).upper()]),
    "metric": st.sampled_from(["text_tokens", "audio_transcribed_seconds"]),
    "quantity": st.one_of(
        st.integers(min_value=1, max_value=10**12),
        st.sampled_from([Decimal("1.5"), Decimal("2.000"), Decimal("1530.0"), Decimal("0.125")]),
    ),
    "occurred_at": st.one_of(
        st.none(),
        st.tuples(
            st.integers(min_value=-86400 * 40, max_value=300),
            st.sampled_from([0, 60, -300, 345, 23 * 60 + 59, -(23 * 60 + 59)]),
        ),
    ),
    "source": st.sampled_from([None, "", "bench", "s" * 64]),
    "metadata": st.sampled_from([None, {}, {"model": "large"}, {"n": 1, "ok": True}]),
    "labels": st.sampled_from([None, {}, {"model": "large"}, {"vendor": "acme", "model": "m"}]),
    "reservation_id": st.sampled_from([None, "r-1", "r" * 128]),
}
wild = {
    "event_id": st.one_of(texts, anything),
    "account": accounts,
    "metric": metrics,
    "quantity": quantities,
    "occurred_at": moments,
    "source": st.one_of(texts, anything),
    "metadata": metadata,
    "labels": label_sets,
    "reservation_id": st.one_of(st.none(), texts, anything),
    "extra": st.none(),
}


@st.composite
def raw_events(draw):
    """A valid event with zero to three fields changed to any value, some left out."""
    fields = {name: draw(strategy) for name, strategy in valid.items()}
    for name in draw(st.lists(st.sampled_from(sorted(wild)), max_size=3)):
        fields[name] = draw(wild[name])
    for name in draw(st.lists(st.sampled_from(sorted(fields)), max_size=2)):
        fields.pop(name, None)
    return fields


def _spelled(raw: dict, now: datetime) -> dict:
    moment = raw.get("occurred_at")
    if isinstance(moment, tuple):
        seconds, offset = moment
        zone = dt_timezone(timedelta(minutes=offset))
        local = (now + timedelta(seconds=seconds)).astimezone(zone)
        raw = {**raw, "occurred_at": local.isoformat()}
    return raw


@settings(max_examples=600, deadline=None)
@given(raw=raw_events(), bound=st.sampled_from([None, ACCOUNT]))
def test_the_quick_path_checks_an_event_as_the_full_checks_do(raw, bound):
    # given: any event, of the usual shape or not
    now = _now()
    raw = _spelled(raw, now)

    # when: checked alone in a batch, and by the full checks
    events, errors = _parse_batch([raw], now, bound)
    event, event_errors = _parse_event(raw, now, bound, {})

    # then: the same event, or the same errors
    if event_errors:
        assert events == [] and errors == {"0": event_errors}
    else:
        assert errors == {} and events == [event]


@settings(max_examples=100, deadline=None)
@given(raws=st.lists(raw_events(), min_size=1, max_size=12))
def test_a_batch_gives_what_its_events_give_one_by_one(raws):
    # given: a batch mixing events of the usual shape, others, and copies of label sets
    now = _now()
    raws = [_spelled(raw, now) for raw in raws]

    # when
    events, errors = _parse_batch(raws, now, None)

    # then: the errors of every invalid event by index, or every event in order
    expected = [_parse_event(raw, now, None, {}) for raw in raws]
    expected_errors = {str(i): found for i, (_e, found) in enumerate(expected) if found}
    assert errors == expected_errors
    if not expected_errors:
        assert events == [event for event, _found in expected]


def test_a_batch_of_the_usual_shape_keeps_exact_quantities_labels_and_metadata():
    # given: events as clients send them, decimals read exactly
    now = _now()
    payload = {
        "events": [
            {
                "event_id": "a",
                "account": str(ACCOUNT),
                "metric": "audio_transcribed_seconds",
                "quantity": Decimal("12.345"),
                "occurred_at": (now - timedelta(minutes=1)).isoformat(),
                "metadata": {"model": "large"},
                "labels": {"vendor": "acme", "model": "m1"},
            },
            {
                "event_id": "b",
                "account": str(ACCOUNT),
                "metric": "text_tokens",
                "quantity": Decimal("1530.0"),
                "metadata": {"model": "large"},
                "labels": {"vendor": "acme", "model": "m1"},
            },
        ]
    }

    # when
    events, is_batch = parse_events(payload, now)

    # then
    assert is_batch
    first, second = events
    assert first.quantity_milli == 12345 and second.quantity_milli == 1530000
    assert first.labels == second.labels == '{"model":"m1","vendor":"acme"}'
    assert first.labels_key == "model=m1;vendor=acme"
    assert first.metadata == second.metadata == '{"model":"large"}'
    assert first.occurred_at.tzinfo is UTC and second.occurred_at == now


def test_metadata_equal_in_python_but_not_in_json_is_written_as_sent():
    # given: objects Python finds equal ({"n": 1} == {"n": True}) in one batch
    now = _now()
    sent = [{"n": 1}, {"n": True}, {"n": "1"}, {"n": 1}, {"n": Decimal("0.5")}, {"n": True}]
    payload = {
        "events": [
            {"event_id": str(i), "account": str(ACCOUNT), "metric": "text_tokens", "quantity": 1}
            | {"metadata": metadata}
            for i, metadata in enumerate(sent)
        ]
    }

    # when
    events, _is_batch = parse_events(payload, now)

    # then: each as its own JSON
    assert [e.metadata for e in events] == [
        '{"n":1}',
        '{"n":true}',
        '{"n":"1"}',
        '{"n":1}',
        '{"n":0.5}',
        '{"n":true}',
    ]
