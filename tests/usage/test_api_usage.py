"""GET /api/v1/accounts/{id}/usage/ and POST .../usage/check/ (SPEC sections 4 and 5)."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from accounts.models import Account
from backoffice.services import usage_events_record
from tests.factories import AccountFactory, LimitFactory
from usage.models import Extension
from usage.periods import period_containing

pytestmark = pytest.mark.django_db


def record(account, event_id, quantity, metric="text_tokens", occurred_at=None):
    usage_events_record(
        payload={
            "event_id": event_id,
            "account": str(account.pk),
            "metric": metric,
            "quantity": quantity,
            **({"occurred_at": occurred_at.isoformat()} if occurred_at else {}),
        }
    )


def usage_url(account: Account) -> str:
    return f"/api/v1/accounts/{account.pk}/usage/"


def check_url(account: Account) -> str:
    return f"/api/v1/accounts/{account.pk}/usage/check/"


def test_usage_lists_every_metric_with_thresholds_status_and_period(service_client):
    # given
    account = AccountFactory(timezone="Europe/Paris")
    LimitFactory(account=account, metric="text_tokens", warning=800, blocked=1000)
    LimitFactory(account=account, metric="audio_analyzed_seconds", warning=None, blocked=60)
    record(account, "t1", 850)
    record(account, "s1", Decimal("60.5"), metric="audio_analyzed_seconds")
    period = period_containing(timezone.now(), account.zone)
    # when
    response = service_client.get(usage_url(account))
    # then
    assert response.status_code == 200
    assert response.json() == {
        "account": str(account.pk),
        "period": {
            "start": period.start.isoformat(),
            "end": period.end.isoformat(),
            "timezone": "Europe/Paris",
        },
        "has_remaining_capacity": False,
        "metrics": [
            {
                "metric": "audio_transcribed_seconds",
                "unit": "seconds",
                "used": 0,
                "warning_threshold": None,
                "blocked_threshold": None,
                "extension": 0,
                "remaining": None,
                "status": "ok",
                "is_within_budget": True,
            },
            {
                "metric": "audio_analyzed_seconds",
                "unit": "seconds",
                "used": 60.5,
                "warning_threshold": None,
                "blocked_threshold": 60,
                "extension": 0,
                "remaining": 0,
                "status": "blocked",
                "is_within_budget": False,
            },
            {
                "metric": "text_tokens",
                "unit": "tokens",
                "used": 850,
                "warning_threshold": 800,
                "blocked_threshold": 1000,
                "extension": 0,
                "remaining": 150,
                "status": "warning",
                "is_within_budget": True,
            },
        ],
    }


def test_an_exact_hit_of_a_threshold_counts_as_reached(service_client):
    account = AccountFactory()
    LimitFactory(account=account, metric="text_tokens", warning=10, blocked=20)
    record(account, "a", 10)
    metrics = service_client.get(usage_url(account)).json()["metrics"]
    assert metrics[2]["status"] == "warning"
    record(account, "b", 10)
    metrics = service_client.get(usage_url(account)).json()["metrics"]
    assert (metrics[2]["status"], metrics[2]["remaining"]) == ("blocked", 0)


def test_an_extension_raises_the_blocked_threshold_for_its_period_only(service_client):
    account = AccountFactory()
    LimitFactory(account=account, metric="text_tokens", warning=None, blocked=100)
    period = period_containing(timezone.now(), account.zone)
    Extension.objects.create(
        account=account, metric="text_tokens", period=period.first_day, amount=50, reason="deal"
    )
    Extension.objects.create(
        account=account,
        metric="text_tokens",
        period=period.previous.first_day,
        amount=1000,
        reason="old",
    )
    record(account, "a", 120)
    metric = service_client.get(usage_url(account)).json()["metrics"][2]
    assert (metric["extension"], metric["remaining"], metric["status"]) == (50, 30, "ok")
    past = service_client.get(usage_url(account), {"period": period.previous.code}).json()
    assert past["metrics"][2]["extension"] == 1000


def test_a_past_period_is_read_with_its_late_events(service_client):
    account = AccountFactory(timezone="UTC")
    current = period_containing(timezone.now(), account.zone)
    late = current.start - timedelta(days=3)
    record(account, "late", 42, occurred_at=late)
    record(account, "now", 1)
    past = service_client.get(usage_url(account), {"period": current.previous.code}).json()
    now = service_client.get(usage_url(account)).json()
    assert past["metrics"][2]["used"] == 42
    assert past["period"]["start"] == current.previous.start.isoformat()
    assert now["metrics"][2]["used"] == 1


@pytest.mark.parametrize("bad", ["2026-13", "november", "2026-1"])
def test_a_bad_period_is_a_400(service_client, bad):
    account = AccountFactory()
    response = service_client.get(usage_url(account), {"period": bad})
    assert response.status_code == 400
    assert response.json() == {"period": ["Expected a month from 2000-01 to 9999-11, as YYYY-MM."]}


@pytest.mark.parametrize(
    ("used", "quantity", "allowed", "status"),
    [
        (90, 10, True, "warning"),  # lands exactly on the cap: allowed
        (90, 11, False, "warning"),
        (100, 0, False, "blocked"),
        (99, 0, True, "warning"),
        (0, None, True, "ok"),
    ],
)
def test_preflight_answers_whether_more_may_be_processed(
    service_client, used, quantity, allowed, status
):
    account = AccountFactory()
    LimitFactory(account=account, metric="text_tokens", warning=50, blocked=100)
    if used:
        record(account, "u", used)
    body = {"metric": "text_tokens", **({"quantity": quantity} if quantity is not None else {})}
    response = service_client.post(check_url(account), body, format="json")
    assert response.status_code == 200
    assert response.json() == {
        "allowed": allowed,
        "metric": "text_tokens",
        "used": used,
        "remaining": 100 - used,
        "status": status,
        "lines": [
            {
                "period": "month",
                "window_days": None,
                "labels": {},
                "used": used,
                "remaining": 100 - used,
                "status": status,
                "allowed": allowed,
            }
        ],
    }


def test_preflight_on_an_unlimited_metric_is_always_allowed(service_client):
    account = AccountFactory()
    response = service_client.post(
        check_url(account), {"metric": "audio_transcribed_seconds", "quantity": 1e9}, format="json"
    )
    assert response.json() == {
        "allowed": True,
        "metric": "audio_transcribed_seconds",
        "used": 0,
        "remaining": None,
        "status": "ok",
        "lines": [
            {
                "period": "month",
                "window_days": None,
                "labels": {},
                "used": 0,
                "remaining": None,
                "status": "ok",
                "allowed": True,
            }
        ],
    }


@pytest.mark.parametrize(
    ("body", "errors"),
    [
        ({}, {"metric": ["This field is required."]}),
        (
            {"metric": "text_tokens", "quantity": -1},
            {"quantity": ["Ensure this value is greater than or equal to 0."]},
        ),
        (
            {"metric": "text_tokens", "quantity": 0.5},
            {"quantity": ["Ensure this value is a whole number: this metric takes no decimals."]},
        ),
        ([], {"non_field_errors": ["Expected an object."]}),
    ],
)
def test_preflight_refuses_bad_input(service_client, body, errors):
    account = AccountFactory()
    response = service_client.post(check_url(account), body, format="json")
    assert response.status_code == 400
    assert response.json() == errors


@pytest.mark.parametrize(
    ("client", "usage_status", "check_status"),
    [
        ("api_client", 401, 401),
        ("nobody_client", 403, 403),
        ("manager_client", 200, 403),
        ("service_client", 200, 200),
    ],
)
def test_who_may_read_usage_and_ask_preflight(request, client, usage_status, check_status):
    account = AccountFactory()
    http = request.getfixturevalue(client)
    assert http.get(usage_url(account)).status_code == usage_status
    body = {"metric": "text_tokens"}
    assert http.post(check_url(account), body, format="json").status_code == check_status


@pytest.mark.parametrize("reference", ["00000000-0000-4000-8000-000000000000", "not-a-uuid"])
def test_unknown_account_is_a_json_404(service_client, reference):
    response = service_client.get(f"/api/v1/accounts/{reference}/usage/")
    assert response.status_code == 404
    assert response.json() == {"detail": "Account not found."}
    check = service_client.post(
        f"/api/v1/accounts/{reference}/usage/check/", {"metric": "text_tokens"}, format="json"
    )
    assert check.status_code == 404


def test_reading_usage_costs_the_same_queries_at_any_volume(
    service_client, django_assert_num_queries
):
    account = AccountFactory()
    LimitFactory(account=account)
    service_client.get(usage_url(account))
    # token + permissions + the account with its usage (counters, extensions and limits),
    # in one statement once this process knows the account's time zone
    with django_assert_num_queries(3):
        service_client.get(usage_url(account))
    # 500 events spread evenly over the part of the current period already past, so they
    # lie in the period and never in the future, on its first minute as on its last day.
    now = timezone.now()
    start = period_containing(now, account.zone).start
    usage_events_record(
        payload={
            "events": [
                {
                    "event_id": f"e{i}",
                    "account": str(account.pk),
                    "metric": "text_tokens",
                    "quantity": 1,
                    "occurred_at": (start + (now - start) * i / 500).isoformat(),
                }
                for i in range(500)
            ]
        }
    )
    with django_assert_num_queries(3):
        response = service_client.get(usage_url(account))
    assert response.json()["metrics"][2]["used"] == 500
