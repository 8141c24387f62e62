"""Hostile values in the fields of the usage API: a 400 keyed by the field, never a 500,
nothing stored (SPEC section 5: "No request ever answers 500 for bad input")."""

from __future__ import annotations

import io
import json
import re
import threading
from datetime import datetime
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
from django.core.exceptions import ValidationError
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection
from drf_spectacular.generators import SchemaGenerator
from drf_spectacular.renderers import OpenApiJsonRenderer
from knox.models import AuthToken
from rest_framework.test import APIClient

from accounts.metrics import METRICS
from tests.factories import AccountFactory, LimitFactory
from tests.usage.factories import event_body as event
from usage.models import Extension, UsageCounter, UsageEvent
from usage.periods import period_from_code
from usage.services import extension_grant

pytestmark = pytest.mark.django_db

EVENTS = "/api/v1/usage/events/"


def post_raw(client, url, text):
    """POST a JSON text as it is, so that numbers keep their spelling (``1e3``, ``7.0``)."""
    return client.post(url, text, content_type="application/json")


def served_schema() -> dict:
    """The document ``/api/v1/schema/`` serves."""
    document = SchemaGenerator().get_schema(request=None, public=True)
    return json.loads(OpenApiJsonRenderer().render(document, renderer_context={}))


def nothing_stored():
    return not UsageEvent.objects.exists() and not UsageCounter.objects.exists()


# --- Quantities are JSON numbers ---------------------------------------------------------

NOT_NUMBERS = ["1e3", " 7 ", "1_000", "\u0663", "7", "", True, False, [7], {"value": 7}]


@pytest.mark.parametrize("quantity", NOT_NUMBERS, ids=repr)
def test_a_quantity_that_is_not_a_json_number_is_refused(service_client, quantity):
    # given
    account = AccountFactory()
    # when
    response = service_client.post(EVENTS, event(account, quantity=quantity), format="json")
    # then
    assert response.status_code == 400
    assert response.json() == {"quantity": ["Expected a JSON number."]}
    assert nothing_stored()


@pytest.mark.parametrize("quantity", ["2.5", "1e3", True], ids=repr)
def test_a_batch_with_a_quantity_that_is_not_a_number_is_refused_whole(service_client, quantity):
    account = AccountFactory()
    batch = [
        event(account, "a", metric="audio_analyzed_seconds", quantity=2.5),
        event(account, "b", metric="audio_analyzed_seconds", quantity=quantity),
    ]
    response = service_client.post(EVENTS, {"events": batch}, format="json")
    assert response.status_code == 400
    assert response.json() == {"events": {"1": {"quantity": ["Expected a JSON number."]}}}
    assert nothing_stored()


@pytest.mark.parametrize(
    ("spelling", "metric", "stored_milli"),
    [
        ("1e3", "text_tokens", 1_000_000),
        ("1530.0", "text_tokens", 1_530_000),
        ("1.25E1", "audio_analyzed_seconds", 12_500),
        ("0.001", "audio_transcribed_seconds", 1),
    ],
)
def test_every_spelling_of_a_json_number_is_taken_at_its_value(
    service_client, spelling, metric, stored_milli
):
    account = AccountFactory()
    text = (
        f'{{"event_id": "e-1", "account": "{account.pk}", "metric": "{metric}", '
        f'"quantity": {spelling}}}'
    )
    response = post_raw(service_client, EVENTS, text)
    assert response.status_code == 201, response.content
    assert UsageEvent.objects.get().quantity_milli == stored_milli


@pytest.mark.parametrize("quantity", NOT_NUMBERS, ids=repr)
def test_a_check_quantity_that_is_not_a_json_number_is_refused(service_client, quantity):
    account = AccountFactory()
    response = service_client.post(
        f"/api/v1/accounts/{account.pk}/usage/check/",
        {"metric": "text_tokens", "quantity": quantity},
        format="json",
    )
    assert response.status_code == 400
    assert response.json() == {"quantity": ["Expected a JSON number."]}


def test_a_check_takes_a_json_number_in_any_spelling(service_client):
    account = AccountFactory()
    response = post_raw(
        service_client,
        f"/api/v1/accounts/{account.pk}/usage/check/",
        json.dumps({"metric": "text_tokens"})[:-1] + ', "quantity": 1E2}',
    )
    assert response.status_code == 200, response.content
    assert response.json()["allowed"] is True


# --- occurred_at is in the year 2000 or later (as written) and at most 5 minutes ahead ----

MSG_TOO_EARLY = "Ensure this moment is in the year 2000 or later."


@pytest.mark.parametrize(
    ("occurred_at", "message"),
    [
        ("0001-01-01T00:00:00+14:00", MSG_TOO_EARLY),
        ("0001-01-01T00:00:00-14:00", MSG_TOO_EARLY),
        ("1999-12-31T23:59:59.999999Z", MSG_TOO_EARLY),
        ("1999-12-31T23:00:00-01:00", MSG_TOO_EARLY),
        (
            "9999-12-31T23:59:59-14:00",
            "Ensure this moment is not more than 5 minutes in the future.",
        ),
        (
            "9999-12-31T23:59:59+14:00",
            "Ensure this moment is not more than 5 minutes in the future.",
        ),
        (
            "\u0662\u0660\u0662\u0666-01-01T00:00:00+00:00",
            "Datetime has wrong format. Use ISO 8601 with a UTC offset.",
        ),
    ],
)
@pytest.mark.parametrize("timezone_name", ["Pacific/Kiritimati", "Pacific/Pago_Pago"])
def test_an_occurred_at_out_of_bounds_is_refused(
    service_client, occurred_at, message, timezone_name
):
    # given
    account = AccountFactory(timezone=timezone_name)
    # when
    single = service_client.post(EVENTS, event(account, occurred_at=occurred_at), format="json")
    batch = service_client.post(
        EVENTS,
        {"events": [event(account, "a"), event(account, "b", occurred_at=occurred_at)]},
        format="json",
    )
    # then
    assert single.status_code == 400
    assert single.json() == {"occurred_at": [message]}
    assert batch.status_code == 400
    assert batch.json() == {"events": {"1": {"occurred_at": [message]}}}
    assert nothing_stored()


@pytest.mark.parametrize("timezone_name", ["Pacific/Kiritimati", "Pacific/Pago_Pago", "UTC"])
@pytest.mark.parametrize(
    "occurred_at",
    ["2000-01-01T00:00:00+23:59", "2000-01-01T00:00:00Z", "2000-01-01T00:00:00-14:00"],
)
def test_the_first_moments_of_2000_are_recorded_on_their_local_day(
    service_client, timezone_name, occurred_at
):
    account = AccountFactory(timezone=timezone_name)
    response = service_client.post(EVENTS, event(account, occurred_at=occurred_at), format="json")
    assert response.status_code == 201, response.content
    moment = datetime.fromisoformat(occurred_at).astimezone(ZoneInfo(timezone_name))
    assert UsageCounter.objects.get().day == moment.date()


# --- ?period= and --period name a month from 2000-01 to 9999-11 ---------------------------

MSG_PERIOD = "Expected a month from 2000-01 to 9999-11, as YYYY-MM."
OUT_OF_RANGE_PERIODS = ["0000-01", "0001-01", "1999-12", "9999-12", "10000-01"]
MALFORMED_PERIODS = ["\u0662\u0660\u0662\u0666-11", "2026-11\n", " 2026-11", "2026-1", ""]


@pytest.mark.parametrize("period", [*OUT_OF_RANGE_PERIODS, *MALFORMED_PERIODS], ids=repr)
@pytest.mark.parametrize("timezone_name", ["Pacific/Kiritimati", "Pacific/Pago_Pago"])
def test_a_period_out_of_range_is_a_400_naming_the_bounds(service_client, period, timezone_name):
    account = AccountFactory(timezone=timezone_name)
    response = service_client.get(f"/api/v1/accounts/{account.pk}/usage/", {"period": period})
    assert response.status_code == 400
    assert response.json() == {"period": [MSG_PERIOD]}


@pytest.mark.parametrize(
    ("period", "start", "end"),
    [
        ("2000-01", "2000-01-01T00:00:00", "2000-02-01T00:00:00"),
        ("9999-11", "9999-11-01T00:00:00", "9999-12-01T00:00:00"),
    ],
)
@pytest.mark.parametrize(
    ("timezone_name", "offset"), [("Pacific/Kiritimati", "+14:00"), ("Pacific/Pago_Pago", "-11:00")]
)
def test_the_first_and_last_periods_are_read(
    service_client, period, start, end, timezone_name, offset
):
    account = AccountFactory(timezone=timezone_name)
    response = service_client.get(f"/api/v1/accounts/{account.pk}/usage/", {"period": period})
    assert response.status_code == 200, response.content
    assert response.json()["period"] == {
        "start": start + offset,
        "end": end + offset,
        "timezone": timezone_name,
    }
    assert {m["used"] for m in response.json()["metrics"]} == {0}


@pytest.mark.parametrize("command", ["usage_report", "rebuild_usage"])
@pytest.mark.parametrize("period", [*OUT_OF_RANGE_PERIODS, "\u0662\u0660\u0662\u0666-11"])
def test_commands_refuse_a_period_out_of_range_in_one_line(command, period):
    AccountFactory()
    with pytest.raises(CommandError) as refused:
        call_command(command, "--period", period, stdout=io.StringIO(), stderr=io.StringIO())
    assert str(refused.value) == (
        f"Invalid period “{period}”: expected a month from 2000-01 to 9999-11, as YYYY-MM."
    )
    assert refused.value.returncode == 1


@pytest.mark.parametrize("command", ["usage_report", "rebuild_usage"])
@pytest.mark.parametrize("period", ["2000-01", "9999-11"])
def test_commands_take_the_first_and_last_periods(command, period):
    AccountFactory(timezone="Pacific/Kiritimati")
    AccountFactory(timezone="Pacific/Pago_Pago")
    call_command(command, "--period", period, stdout=io.StringIO(), stderr=io.StringIO())


def test_the_schema_pattern_of_every_period_parameter_admits_exactly_the_valid_months():
    # given: every period parameter of the served schema
    patterns = [
        parameter["schema"]["pattern"]
        for item in served_schema()["paths"].values()
        for operation in item.values()
        for parameter in operation.get("parameters", [])
        if parameter["name"] == "period"
    ]
    assert patterns
    codes = [f"{year:04d}-{month:02d}" for year in range(10000) for month in range(14)]
    # when
    accepted = set()
    for code in codes:
        try:
            period_from_code(code, ZoneInfo("UTC"))
        except ValueError:
            continue
        accepted.add(code)
    # then: the pattern (ECMA 262, read here by Python's re) and the API agree on each code
    assert min(accepted) == "2000-01" and max(accepted) == "9999-11"
    for pattern in patterns:
        compiled = re.compile(pattern)
        assert {code for code in codes if compiled.search(code)} == accepted


# --- Unknown fields are refused, and the schema says so ----------------------------------


def test_an_event_with_an_unknown_field_is_refused(service_client):
    account = AccountFactory()
    response = service_client.post(
        EVENTS, event(account, tags={"model": "large"}, Quantity=5), format="json"
    )
    assert response.status_code == 400
    assert response.json() == {"tags": ["Unknown field."], "Quantity": ["Unknown field."]}
    assert nothing_stored()


def test_a_batch_with_an_unknown_field_is_refused(service_client):
    account = AccountFactory()
    response = service_client.post(
        EVENTS, {"events": [event(account)], "dry_run": True}, format="json"
    )
    assert response.status_code == 400
    assert response.json() == {"dry_run": ["Unknown field."]}
    assert nothing_stored()


def test_a_batch_with_an_unknown_field_in_one_event_is_refused_whole(service_client):
    account = AccountFactory()
    batch = [event(account, "a"), event(account, "b", units="tokens")]
    response = service_client.post(EVENTS, {"events": batch}, format="json")
    assert response.status_code == 400
    assert response.json() == {"events": {"1": {"units": ["Unknown field."]}}}
    assert nothing_stored()


def test_a_check_with_an_unknown_field_is_refused(service_client):
    account = AccountFactory()
    response = service_client.post(
        f"/api/v1/accounts/{account.pk}/usage/check/",
        {"metric": "text_tokens", "quantity": 5, "unit": "tokens"},
        format="json",
    )
    assert response.status_code == 400
    assert response.json() == {"unit": ["Unknown field."]}


def request_body_objects(document: dict):
    """Every object schema reachable from a request body, as (component or path, schema)."""
    components = document["components"]["schemas"]
    found: list[tuple[str, dict]] = []
    visited: set[str] = set()

    def walk(schema, where):
        if not isinstance(schema, dict):
            return
        if "$ref" in schema:
            name = schema["$ref"].rsplit("/", 1)[-1]
            if name not in visited:
                visited.add(name)
                walk(components[name], name)
            return
        if schema.get("type") == "object" or "properties" in schema:
            found.append((where, schema))
        for name, child in schema.get("properties", {}).items():
            walk(child, f"{where}.{name}")
        for key in ("allOf", "oneOf", "anyOf"):
            for child in schema.get(key, []):
                walk(child, where)
        walk(schema.get("items"), f"{where}[]")

    for path, item in document["paths"].items():
        for method, operation in item.items():
            for media in operation.get("requestBody", {}).get("content", {}).values():
                walk(media["schema"], f"{method.upper()} {path}")
    return found


def test_every_object_of_a_request_body_admits_no_other_property_but_metadata():
    objects = request_body_objects(served_schema())
    open_ones = {
        where for where, schema in objects if schema.get("additionalProperties") is not False
    }
    assert {where for where, _schema in objects} >= {
        "SecondsEventRequest",
        "TokensEventRequest",
        "EventBatchRequest",
        "SecondsCheckRequest",
        "TokensCheckRequest",
        "LimitsDocumentRequest",
        "PatchedLimitsDocumentRequest",
        "LimitsRequest",
        "ThresholdsRequest",
        "RecipientListsRequest",
        "RecipientRequest",
    }
    assert open_ones == {"SecondsEventRequest.metadata", "TokensEventRequest.metadata"}


def test_no_answer_of_the_schema_is_closed():
    document = served_schema()
    request_components = {where for where, _schema in request_body_objects(document)}
    closed = {
        name
        for name, schema in document["components"]["schemas"].items()
        if schema.get("additionalProperties") is False
    }
    assert closed <= request_components


# --- The schema of quantities is true: it admits exactly what the API takes --------------

SPELLINGS = [
    "1",
    "7.0",
    "1e3",
    "1530.0",
    "2.5",
    "0.001",
    "1.001",
    "0.0005",
    "1.0001",
    "12.3450",
    "0",
    "-1",
    "1000000000000",
    "999999999999.999",
    "1000000000000.001",
    "1e12",
    "1e13",
    '"7"',
    '"1e3"',
    "true",
    "null",
]


def request_validator(component: str):
    """A validator of ``component`` with numbers read exactly, as JSON Schema means them.

    Reading the schema and the bodies with ``Decimal`` keeps ``multipleOf: 0.001`` exact
    (floats would call ``1.001`` not a multiple of ``0.001``). OpenAPI 3.0 schemas are
    JSON Schema draft 4 in this respect (``exclusiveMinimum`` is a boolean).
    """
    import jsonschema
    from referencing import Registry, Resource
    from referencing.jsonschema import DRAFT4

    document = json.loads(json.dumps(served_schema()), parse_float=Decimal)
    registry = Registry().with_resource("urn:api", Resource(document, specification=DRAFT4))
    return jsonschema.Draft4Validator(
        {"$ref": f"urn:api#/components/schemas/{component}"}, registry=registry
    )


@pytest.mark.parametrize("metric", list(METRICS))
def test_the_schema_admits_exactly_the_event_quantities_the_api_takes(service_client, metric):
    # given
    account = AccountFactory()
    validator = request_validator("EventOrBatchRequest")
    verdicts = {}
    for index, spelling in enumerate(SPELLINGS):
        text = (
            f'{{"event_id": "e-{index}", "account": "{account.pk}", "metric": "{metric}", '
            f'"quantity": {spelling}}}'
        )
        # when
        response = post_raw(service_client, EVENTS, text)
        assert response.status_code in (201, 400), response.content
        body = json.loads(text, parse_float=Decimal)
        verdicts[spelling] = (response.status_code == 201, validator.is_valid(body))
    # then
    assert {s: api for s, (api, schema) in verdicts.items() if api != schema} == {}
    assert any(api for api, _schema in verdicts.values())


@pytest.mark.parametrize("metric", list(METRICS))
def test_the_schema_admits_exactly_the_check_quantities_the_api_takes(service_client, metric):
    account = AccountFactory()
    validator = request_validator("CheckRequestRequest")
    verdicts = {}
    for spelling in SPELLINGS:
        text = f'{{"metric": "{metric}", "quantity": {spelling}}}'
        response = post_raw(service_client, f"/api/v1/accounts/{account.pk}/usage/check/", text)
        assert response.status_code in (200, 400), response.content
        body = json.loads(text, parse_float=Decimal)
        if body["quantity"] is None:
            del body["quantity"]  # draft 4 knows no "nullable": null stands for left out
        verdicts[spelling] = (response.status_code == 200, validator.is_valid(body))
    assert {s: api for s, (api, schema) in verdicts.items() if api != schema} == {}


# --- No valid input overflows a counter: at most 10^14 units per account, metric and day --

TRILLION = 10**12  # the largest quantity of one event
DAILY_LIMIT = 10**14


def big_batch(account, prefix, count, occurred_at, metric="text_tokens"):
    return {
        "events": [
            event(
                account, f"{prefix}-{i}", metric=metric, quantity=TRILLION, occurred_at=occurred_at
            )
            for i in range(count)
        ]
    }


def daily_limit_message(account, day, metric="text_tokens", unit="tokens"):
    return (
        f"The usage of {metric} on {day} for account {account.pk} would pass "
        f"{DAILY_LIMIT} {unit}, the most an account may record per metric and day."
    )


def test_ten_batches_of_the_largest_events_are_refused_and_never_overflow(service_client):
    # given: the batches that overflowed a bigint counter on the tenth (10 x 1000 x 10^12)
    account = AccountFactory(timezone="UTC")
    occurred_at = "2026-01-15T12:00:00+00:00"
    # when
    answers = [
        service_client.post(EVENTS, big_batch(account, f"b{n}", 1000, occurred_at), format="json")
        for n in range(10)
    ]
    # then: each one is refused whole, naming the limit; nothing is stored
    for response in answers:
        assert response.status_code == 400
        assert response.json() == {"events": [daily_limit_message(account, "2026-01-15")]}
    assert nothing_stored()


def test_a_day_takes_usage_up_to_the_limit_and_refuses_what_would_pass_it(service_client):
    # given: a day filled exactly to the limit
    account = AccountFactory(timezone="Pacific/Kiritimati")
    day_moment = "2026-01-15T12:00:00+14:00"
    full = service_client.post(EVENTS, big_batch(account, "full", 100, day_moment), format="json")
    assert full.status_code == 201, full.content
    # when: one more token that day, then a batch touching that day and another
    one_more = service_client.post(
        EVENTS, event(account, "one-more", quantity=1, occurred_at=day_moment), format="json"
    )
    mixed = service_client.post(
        EVENTS,
        {
            "events": [
                event(account, "next-day", quantity=1, occurred_at="2026-01-16T12:00:00+14:00"),
                event(account, "same-day", quantity=1, occurred_at="2026-01-15T23:59:59+14:00"),
            ]
        },
        format="json",
    )
    next_day = service_client.post(
        EVENTS,
        event(account, "next-day", quantity=TRILLION, occurred_at="2026-01-16T00:00:00+14:00"),
        format="json",
    )
    other_metric = service_client.post(
        EVENTS,
        event(
            account,
            "seconds",
            metric="audio_analyzed_seconds",
            quantity=TRILLION,
            occurred_at=day_moment,
        ),
        format="json",
    )
    # then
    assert one_more.status_code == 400
    assert one_more.json() == {"quantity": [daily_limit_message(account, "2026-01-15")]}
    assert mixed.status_code == 400
    assert mixed.json() == {"events": [daily_limit_message(account, "2026-01-15")]}
    assert (next_day.status_code, other_metric.status_code) == (201, 201)
    counters = UsageCounter.objects.filter(account=account, metric="text_tokens")
    assert {c.day.isoformat(): c.quantity_milli for c in counters} == {
        "2026-01-15": DAILY_LIMIT * 1000,
        "2026-01-16": TRILLION * 1000,
    }
    assert UsageEvent.objects.filter(account=account).count() == 102


def test_a_month_at_the_limit_every_day_is_read_rebuilt_and_reported_exactly(service_client):
    # given: every day of January 2025 at the daily limit, for a month total of 3.1 x 10^15
    account = AccountFactory(timezone="UTC", external_id="crm-full")
    for day in range(1, 32):
        moment = f"2025-01-{day:02d}T12:00:00+00:00"
        response = service_client.post(
            EVENTS, big_batch(account, f"d{day}", 100, moment), format="json"
        )
        assert response.status_code == 201, response.content
    # when
    usage = service_client.get(f"/api/v1/accounts/{account.pk}/usage/", {"period": "2025-01"})
    rebuild = io.StringIO()
    call_command(
        "rebuild_usage", "--period", "2025-01", "--check", stdout=rebuild, stderr=io.StringIO()
    )
    report = io.StringIO()
    call_command(
        "usage_report", "crm-full", "--period", "2025-01", "--format", "json", stdout=report
    )
    # then
    month_total = 31 * DAILY_LIMIT
    assert usage.status_code == 200
    tokens = next(m for m in usage.json()["metrics"] if m["metric"] == "text_tokens")
    assert tokens["used"] == month_total
    assert rebuild.getvalue().splitlines()[-1] == "Counters checked: 62, drifted: 0."
    rows = json.loads(report.getvalue())
    assert next(r for r in rows if r["metric"] == "text_tokens")["used"] == month_total


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_racing_batches_never_pass_the_daily_limit_together(service_user):
    # given: four services each posting 40 x 10^12 tokens on the same day; two fit
    account = AccountFactory(timezone="UTC")
    _, key = AuthToken.objects.create(user=service_user, expiry=None)
    threads_count = 4
    start = threading.Barrier(threads_count)
    answers: list[int] = []
    failures: list[str] = []
    lock = threading.Lock()

    def post(number: int) -> None:
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Token {key}")
        try:
            start.wait()
            response = client.post(
                EVENTS,
                big_batch(account, f"t{number}", 40, "2026-01-15T12:00:00+00:00"),
                format="json",
            )
            with lock:
                answers.append(response.status_code)
        except Exception as exc:  # a deadlock or a 500 surfaces here
            with lock:
                failures.append(repr(exc))
        finally:
            connection.close()

    threads = [threading.Thread(target=post, args=(n,)) for n in range(threads_count)]
    # when
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    # then
    assert failures == []
    assert sorted(answers) == [201, 201, 400, 400]
    assert UsageEvent.objects.count() == 80
    assert UsageCounter.objects.get().quantity_milli == 80 * TRILLION * 1000


def test_extensions_of_a_period_total_at_most_the_largest_threshold(service_client):
    # given: a period already extended by 10^15 - 1
    account = AccountFactory()
    LimitFactory(account=account, metric="text_tokens", warning=None, blocked=10)
    extension_grant(
        account=account, metric="text_tokens", amount=10**15 - 1, reason="big", actor=None
    )
    # when / then: one more unit fits, a second is refused, nothing else is stored
    extension_grant(account=account, metric="text_tokens", amount=1, reason="one", actor=None)
    with pytest.raises(ValidationError) as refused:
        extension_grant(account=account, metric="text_tokens", amount=1, reason="two", actor=None)
    assert refused.value.message_dict == {
        "amount": [
            "Ensure the extensions of this line and period total at most "
            "1000000000000000 (1000000000000000 granted already)."
        ]
    }
    assert Extension.objects.count() == 2
    usage = service_client.get(f"/api/v1/accounts/{account.pk}/usage/").json()
    tokens = next(m for m in usage["metrics"] if m["metric"] == "text_tokens")
    assert (tokens["extension"], tokens["remaining"]) == (10**15, 10**15 + 10)


def test_refusals_speak_the_language_of_the_request(service_client):
    account = AccountFactory()
    period = service_client.get(
        f"/api/v1/accounts/{account.pk}/usage/", {"period": "9999-12"}, HTTP_ACCEPT_LANGUAGE="fr"
    )
    quantity = service_client.post(
        EVENTS, event(account, quantity="7"), format="json", HTTP_ACCEPT_LANGUAGE="fr"
    )
    assert period.json() == {
        "period": ["Un mois de 2000-01 à 9999-11 est attendu, au format AAAA-MM."]
    }
    assert quantity.json() == {"quantity": ["Un nombre JSON est attendu."]}


OCCURRED_AT_SPELLINGS = [
    "2026-01-01T00:00:00Z",
    "2000-01-01T00:00:00+23:59",
    "2000-01-01T00:03:00+04:03",
    "1999-12-31T23:59:59Z",
    "1999-12-31T23:00:00-01:00",
    "0001-01-01T00:00:00+14:00",
    "9999-12-31T23:59:59-14:00",
]


def test_the_schema_admits_exactly_the_occurred_at_the_api_takes(service_client):
    account = AccountFactory()
    validator = request_validator("EventOrBatchRequest")
    verdicts = {}
    for index, occurred_at in enumerate(OCCURRED_AT_SPELLINGS):
        body = event(account, f"e-{index}", occurred_at=occurred_at)
        response = service_client.post(EVENTS, body, format="json")
        assert response.status_code in (201, 400), response.content
        verdicts[occurred_at] = (response.status_code == 201, validator.is_valid(body))
    future = [s for s in OCCURRED_AT_SPELLINGS if s.startswith("9999")]
    # The API refuses the future, which no schema can say; everything else agrees.
    assert {s: api for s, (api, schema) in verdicts.items() if api != schema} == {
        s: False for s in future
    }


@pytest.mark.parametrize("offset", ["+16:00", "+23:59", "-23:59"])
def test_an_offset_that_postgresql_would_refuse_is_taken_at_its_instant(service_client, offset):
    account = AccountFactory(timezone="UTC")
    occurred_at = f"2026-01-15T12:00:00{offset}"
    response = service_client.post(EVENTS, event(account, occurred_at=occurred_at), format="json")
    assert response.status_code == 201, response.content
    assert UsageEvent.objects.get().occurred_at == datetime.fromisoformat(occurred_at)
