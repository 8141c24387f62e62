"""GET .../capacities/ and the pre-flight check across limit lines (SPEC 11.3 and 11.4).

Everything goes through the API as a client would: the limits document with scoped limits,
events with labels, then the answers, asserted whole. The clock is fixed at an instant
named in each test (Paris local time), so that every window is known.
"""

from __future__ import annotations

import io
import json
import re
from datetime import UTC, datetime, timedelta

import pytest
import time_machine
from django.core.management import call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext

from accounts.models import ScopedLimit
from tests.factories import AccountFactory
from usage.models import Extension

pytestmark = pytest.mark.django_db

# Wednesday 2 December 2026, 15:30 in Paris (UTC+01:00).
NOW = datetime(2026, 12, 2, 14, 30, tzinfo=UTC)

SCOPED = [
    {"metric": "text_tokens", "period": "day", "window_days": None,
     "labels": {"model": "large"}, "warning": 40000, "blocked": 50000},
    {"metric": "text_tokens", "period": "rolling", "window_days": 7,
     "labels": {}, "warning": None, "blocked": 100000},
    {"metric": "text_tokens", "period": "hour", "window_days": None,
     "labels": {"vendor": "acme"}, "warning": None, "blocked": 1000},
    {"metric": "audio_transcribed_seconds", "period": "week", "window_days": None,
     "labels": {}, "warning": None, "blocked": 3600},
]  # fmt: skip

# (event id, metric, quantity, labels, occurred_at in UTC)
EVENTS = [
    ("today-large", "text_tokens", 12000, {"model": "large"}, "2026-12-02T09:00:00Z"),
    ("this-hour", "text_tokens", 30000, {"model": "large", "vendor": "acme"}, "2026-12-02T14:10:00Z"),
    ("last-hour", "text_tokens", 100, {"vendor": "acme"}, "2026-12-02T13:59:59Z"),
    ("in-window", "text_tokens", 5000, {"model": "small"}, "2026-11-27T10:00:00Z"),
    ("before-window", "text_tokens", 7000, {}, "2026-11-25T22:59:59Z"),
    ("monday", "audio_transcribed_seconds", 120.5, {}, "2026-11-29T23:30:00Z"),
    ("last-week", "audio_transcribed_seconds", 60, {}, "2026-11-29T22:59:59Z"),
]  # fmt: skip


@pytest.fixture
def account(manager_client, service_client):
    return account_with_lines(manager_client, service_client)


def account_with_lines(manager_client, service_client):
    """A Paris account with ``SCOPED`` beside a monthly token limit, and ``EVENTS``."""
    account = AccountFactory(timezone="Europe/Paris")
    with time_machine.travel(NOW, tick=False):
        response = manager_client.put(
            f"/api/v1/accounts/{account.pk}/limits/",
            {
                "limits": {"text_tokens": {"warning": 800000, "blocked": 1000000}},
                "recipients": {"warning": [{"email": "pm@example.com", "language": "en"}]},
                "scoped_limits": SCOPED,
            },
            format="json",
        )
        assert response.status_code == 200, response.json()
        batch = [
            {
                "event_id": event_id,
                "account": str(account.pk),
                "metric": metric,
                "quantity": quantity,
                "labels": labels,
                "occurred_at": occurred_at,
            }
            for event_id, metric, quantity, labels, occurred_at in EVENTS
        ]
        response = service_client.post("/api/v1/usage/events/", {"events": batch}, format="json")
        assert response.status_code == 201, response.json()
    return account


def monthly(metric, unit, used=0, warning=None, blocked=None, remaining=None, status="ok",
            extension=0):  # fmt: skip
    return {
        "metric": metric,
        "unit": unit,
        "labels": {},
        "current_period": {
            "period": "month",
            "window_days": None,
            "start_time": "2026-12-01T00:00:00+01:00",
            "end_time": "2027-01-01T00:00:00+01:00",
        },
        "used": used,
        "warning_threshold": warning,
        "blocked_threshold": blocked,
        "extension": extension,
        "is_extended": extension > 0 and blocked is not None,
        "reserved": 0,
        "remaining": remaining,
        "status": status,
        "has_remaining_capacity": status != "blocked",
        "valid_until": "2027-01-01T00:00:00+01:00",
    }


def scoped(metric, unit, labels, period, window_days, start, end, used, warning, blocked,
           remaining, status, extension=0):  # fmt: skip
    return {
        "metric": metric,
        "unit": unit,
        "labels": labels,
        "current_period": {
            "period": period,
            "window_days": window_days,
            "start_time": start,
            "end_time": end,
        },
        "used": used,
        "warning_threshold": warning,
        "blocked_threshold": blocked,
        "extension": extension,
        "is_extended": extension > 0,
        "reserved": 0,
        "remaining": remaining,
        "status": status,
        "has_remaining_capacity": status != "blocked",
        "valid_until": end,
    }


def test_capacities_list_every_line_over_its_own_window(account, service_client):
    # when
    with time_machine.travel(NOW, tick=False):
        response = service_client.get(f"/api/v1/accounts/{account.pk}/capacities/")
    # then
    assert response.status_code == 200
    assert response.json() == {
        "account": str(account.pk),
        "has_remaining_capacity": False,
        "items": [
            monthly("audio_transcribed_seconds", "seconds"),
            monthly("audio_analyzed_seconds", "seconds"),
            monthly("text_tokens", "tokens", 42100, 800000, 1000000, 957900),
            scoped(
                "text_tokens", "tokens", {"model": "large"}, "day", None,
                "2026-12-02T00:00:00+01:00", "2026-12-03T00:00:00+01:00",
                42000, 40000, 50000, 8000, "warning",
            ),
            scoped(
                "text_tokens", "tokens", {}, "rolling", 7,
                "2026-11-26T00:00:00+01:00", "2026-12-03T00:00:00+01:00",
                47100, None, 100000, 52900, "ok",
            ),
            scoped(
                "text_tokens", "tokens", {"vendor": "acme"}, "hour", None,
                "2026-12-02T15:00:00+01:00", "2026-12-02T16:00:00+01:00",
                30000, None, 1000, 0, "blocked",
            ),
            scoped(
                "audio_transcribed_seconds", "seconds", {}, "week", None,
                "2026-11-30T00:00:00+01:00", "2026-12-07T00:00:00+01:00",
                120.5, None, 3600, 3479.5, "ok",
            ),
        ],
    }  # fmt: skip


def test_capacities_of_an_account_without_scoped_limits_are_its_three_monthly_lines(
    service_client,
):
    # given
    account = AccountFactory(timezone="Europe/Paris")
    # when
    with time_machine.travel(NOW, tick=False):
        response = service_client.get(f"/api/v1/accounts/{account.pk}/capacities/")
    # then
    assert response.status_code == 200
    assert response.json() == {
        "account": str(account.pk),
        "has_remaining_capacity": True,
        "items": [
            monthly("audio_transcribed_seconds", "seconds"),
            monthly("audio_analyzed_seconds", "seconds"),
            monthly("text_tokens", "tokens"),
        ],
    }


def test_capacities_move_with_the_clock_a_rolling_window_at_local_midnight(account, service_client):
    # when: the first instant of 3 December in Paris
    with time_machine.travel(datetime(2026, 12, 2, 23, 0, tzinfo=UTC), tick=False):
        items = service_client.get(f"/api/v1/accounts/{account.pk}/capacities/").json()["items"]
    # then: the window lost 26 November, the day and hour lines start afresh
    rolling, day, hour = items[4], items[3], items[5]
    assert rolling["current_period"]["start_time"] == "2026-11-27T00:00:00+01:00"
    assert rolling["used"] == 47100
    assert (day["used"], day["status"], hour["used"], hour["status"]) == (0, "ok", 0, "ok")
    # and a day later, the 27th leaves the window with its 5000 small-model tokens
    with time_machine.travel(datetime(2026, 12, 3, 23, 0, tzinfo=UTC), tick=False):
        items = service_client.get(f"/api/v1/accounts/{account.pk}/capacities/").json()["items"]
    assert (items[4]["current_period"]["start_time"], items[4]["used"]) == (
        "2026-11-28T00:00:00+01:00",
        42100,
    )


def check(client, account, body):
    with time_machine.travel(NOW, tick=False):
        return client.post(f"/api/v1/accounts/{account.pk}/usage/check/", body, format="json")


def test_check_with_labels_weighs_every_line_that_applies(account, service_client):
    # when
    response = check(
        service_client,
        account,
        {"metric": "text_tokens", "quantity": 5000, "labels": {"model": "large"}},
    )
    # then: the hourly line is scoped to vendor=acme, which the check does not carry
    assert response.status_code == 200
    assert response.json() == {
        "allowed": True,
        "metric": "text_tokens",
        "used": 42100,
        "remaining": 8000,
        "status": "warning",
        "lines": [
            {"period": "month", "window_days": None, "labels": {}, "used": 42100,
             "remaining": 957900, "status": "ok", "allowed": True},
            {"period": "day", "window_days": None, "labels": {"model": "large"}, "used": 42000,
             "remaining": 8000, "status": "warning", "allowed": True},
            {"period": "rolling", "window_days": 7, "labels": {}, "used": 47100,
             "remaining": 52900, "status": "ok", "allowed": True},
        ],
    }  # fmt: skip


def test_check_is_refused_when_one_applying_line_would_pass_its_cap(account, service_client):
    # when: 8001 more large-model tokens pass the daily line's 50000 by one
    response = check(
        service_client,
        account,
        {"metric": "text_tokens", "quantity": 8001, "labels": {"model": "large"}},
    )
    # then
    body = response.json()
    assert response.status_code == 200
    assert body["allowed"] is False
    assert [line["allowed"] for line in body["lines"]] == [True, False, True]
    # and exactly what is left still fits
    exact = check(
        service_client,
        account,
        {"metric": "text_tokens", "quantity": 8000, "labels": {"model": "large"}},
    )
    assert exact.json()["allowed"] is True


def test_check_of_zero_is_refused_when_an_applying_line_is_blocked(account, service_client):
    # when
    response = check(
        service_client,
        account,
        {"metric": "text_tokens", "quantity": 0, "labels": {"vendor": "acme", "model": "x"}},
    )
    # then
    assert response.status_code == 200
    assert response.json() == {
        "allowed": False,
        "metric": "text_tokens",
        "used": 42100,
        "remaining": 0,
        "status": "blocked",
        "lines": [
            {"period": "month", "window_days": None, "labels": {}, "used": 42100,
             "remaining": 957900, "status": "ok", "allowed": True},
            {"period": "rolling", "window_days": 7, "labels": {}, "used": 47100,
             "remaining": 52900, "status": "ok", "allowed": True},
            {"period": "hour", "window_days": None, "labels": {"vendor": "acme"},
             "used": 30000, "remaining": 0, "status": "blocked", "allowed": False},
        ],
    }  # fmt: skip


def test_check_without_labels_weighs_only_the_lines_without_labels(account, service_client):
    # when
    response = check(service_client, account, {"metric": "text_tokens", "quantity": 1})
    # then
    body = response.json()
    assert response.status_code == 200
    assert (body["allowed"], body["status"], body["remaining"]) == (True, "ok", 52900)
    assert [(line["period"], line["labels"]) for line in body["lines"]] == [
        ("month", {}),
        ("rolling", {}),
    ]


def test_check_refuses_bad_labels_with_their_path_and_changes_nothing(account, service_client):
    # when
    response = check(
        service_client,
        account,
        {"metric": "text_tokens", "quantity": 1, "labels": {"vendor": "a b", "colour": "red"}},
    )
    # then
    assert response.status_code == 400
    assert set(response.json()["labels"]) == {"vendor", "colour"}


def test_capacities_answer_403_to_a_token_bound_to_another_account(account, api_client):
    # given
    from accounts.services import service_token_create

    other = AccountFactory()
    token = service_token_create(name="bound", account=other)
    api_client.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
    # when
    response = api_client.get(f"/api/v1/accounts/{account.pk}/capacities/")
    own = api_client.get(f"/api/v1/accounts/{other.pk}/capacities/")
    # then
    assert response.status_code == 403
    assert response.json() == {"detail": "This token is bound to another account."}
    assert own.status_code == 200


def test_the_usage_report_lists_the_scoped_lines_after_the_monthly_ones(account):
    # when
    out = io.StringIO()
    with time_machine.travel(NOW, tick=False):
        call_command("usage_report", str(account.pk), "--format", "json", stdout=out)
        table = io.StringIO()
        call_command("usage_report", str(account.pk), stdout=table)
    # then
    rows = json.loads(out.getvalue())
    assert [
        (row["period_kind"], row["window_days"], row["labels"], row["period"], row["used"],
         row["remaining"], row["status"])
        for row in rows
    ] == [
        ("month", None, "", "2026-12", 0, None, "ok"),
        ("month", None, "", "2026-12", 0, None, "ok"),
        ("month", None, "", "2026-12", 42100, 957900, "ok"),
        ("day", None, "model=large", "2026-12-02T00:00:00+01:00", 42000, 8000, "warning"),
        ("rolling", 7, "", "2026-11-26T00:00:00+01:00", 47100, 52900, "ok"),
        ("hour", None, "vendor=acme", "2026-12-02T15:00:00+01:00", 30000, 0, "blocked"),
        ("week", None, "", "2026-11-30T00:00:00+01:00", 120.5, 3479.5, "ok"),
    ]  # fmt: skip
    lines = [re.split(r"\s{2,}", line) for line in table.getvalue().splitlines()]
    assert [line[2] for line in lines] == [
        "line", "month", "month", "month", "day[model=large]", "rolling/7", "hour[vendor=acme]",
        "week",
    ]  # fmt: skip


def test_the_usage_report_of_a_past_month_lists_the_monthly_lines_only(account):
    # when
    out = io.StringIO()
    with time_machine.travel(NOW, tick=False):
        call_command(
            "usage_report", str(account.pk), "--period", "2026-11", "--format", "json", stdout=out
        )
    # then: November's 5000 + 7000 tokens and 180.5 seconds
    rows = json.loads(out.getvalue())
    assert [(row["period_kind"], row["metric"], row["used"]) for row in rows] == [
        ("month", "audio_transcribed_seconds", 180.5),
        ("month", "audio_analyzed_seconds", 0),
        ("month", "text_tokens", 12000),
    ]


def test_capacities_cost_the_same_queries_whatever_the_lines_and_events(
    account, manager_client, service_client
):
    # given: extensions on every line of the account, of this period and of the one before
    for scoped_limit in ScopedLimit.objects.filter(account=account):
        for start in (NOW, NOW - timedelta(days=1)):
            Extension.objects.create(
                account=account,
                metric=scoped_limit.metric,
                scoped_limit=scoped_limit,
                period=start.date(),
                period_start=start,
                amount=5,
                reason="Load",
            )
    # and one more account with one scoped limit, no usage and no extension
    bare = AccountFactory(timezone="Europe/Paris")
    url = "/api/v1/accounts/{}/capacities/"
    with time_machine.travel(NOW, tick=False):
        patched = manager_client.patch(
            f"/api/v1/accounts/{bare.pk}/limits/", {"scoped_limits": SCOPED[3:]}, format="json"
        )
        assert patched.status_code == 200, patched.json()
        service_client.get(url.format(bare.pk))  # warms the token's cache where there is one
        service_client.get(url.format(account.pk))  # the lines this process read (one statement)
        with CaptureQueriesContext(connection) as bare_queries:
            service_client.get(url.format(bare.pk))
        with CaptureQueriesContext(connection) as full_queries:
            response = service_client.get(url.format(account.pk))
    # then: three lines more, seven events more, eight extensions more, not one query more
    assert response.status_code == 200
    assert len(response.json()["items"]) == 7
    assert len(full_queries) == len(bare_queries)


def test_capacities_and_the_check_read_the_monthly_limits_once(account, service_client):
    # given: an account with a monthly limit and scoped limits, a token already verified
    url = f"/api/v1/accounts/{account.pk}/"
    check = {"metric": "text_tokens", "quantity": 1, "labels": {"model": "large"}}
    with time_machine.travel(NOW, tick=False):
        service_client.get(url + "capacities/")  # warms the token's cache where there is one
        # when
        with CaptureQueriesContext(connection) as capacities_queries:
            capacities = service_client.get(url + "capacities/")
        with CaptureQueriesContext(connection) as check_queries:
            checked = service_client.post(url + "usage/check/", check, format="json")
    # then: the monthly thresholds come with the usage statement, not from a query of their own
    assert (capacities.status_code, checked.status_code) == (200, 200)
    assert capacities.json()["items"][2]["blocked_threshold"] == 1000000
    for queries in (capacities_queries, check_queries):
        reading_limits = [q["sql"] for q in queries if '"accounts_limit"' in q["sql"]]
        reading_limits += [q["sql"] for q in queries if "accounts_limit l" in q["sql"]]
        assert len(reading_limits) == 1, reading_limits
