"""POST /api/v1/usage/events/: idempotent recording, whole-batch validation (SPEC section 5)."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from decimal import Decimal

import pytest
from django.db import connection
from django.utils import timezone

from accounts.models import Account, Plan
from backoffice.services import scoped_limit_set
from tests.factories import AccountFactory, LimitFactory
from tests.usage.factories import event_body as event
from tests.usage.factories import keys_counted
from usage.models import UsageCounter, UsageEvent

pytestmark = pytest.mark.django_db

URL = "/api/v1/usage/events/"


def used(account, metric="text_tokens"):
    return sum(
        UsageCounter.objects.filter(account=account, metric=metric).values_list(
            "quantity_milli", flat=True
        )
    )


def test_one_event_is_recorded_and_answered_with_current_usage(service_client):
    # given
    account = AccountFactory()
    LimitFactory(account=account, metric="text_tokens", warning=None, blocked=1000)
    # when
    response = service_client.post(
        URL,
        event(account, quantity=1530, source="llm-gateway", metadata={"model": "large"}),
        format="json",
    )
    # then
    assert response.status_code == 201
    assert response.json() == {
        "accepted": 1,
        "duplicates": 0,
        "usage": [
            {
                "account": str(account.pk),
                "metric": "text_tokens",
                "used": 1530,
                "status": "blocked",
                "remaining": 0,
                "is_within_budget": False,
            }
        ],
    }
    stored = UsageEvent.objects.get()
    assert (stored.event_id, stored.quantity, stored.source, stored.metadata) == (
        "e-1",
        Decimal(1530),
        "llm-gateway",
        {"model": "large"},
    )
    assert used(account) == 1_530_000


def test_a_retry_is_a_duplicate_and_answers_200(service_client):
    account = AccountFactory()
    service_client.post(URL, event(account, quantity=10), format="json")
    response = service_client.post(URL, event(account, quantity=99), format="json")
    assert response.status_code == 200
    assert response.json()["accepted"] == 0
    assert response.json()["duplicates"] == 1
    assert response.json()["usage"][0]["used"] == 10
    assert used(account) == 10_000


def test_batch_counts_duplicates_within_and_across_requests_once(service_client):
    account = AccountFactory()
    other = AccountFactory()
    service_client.post(URL, event(account, "a", quantity=1), format="json")
    batch = [
        event(account, "a", quantity=5),  # already recorded
        event(account, "b", quantity=2),
        event(account, "b", quantity=7),  # a second copy in the same batch: the first wins
        event(other, "a", quantity=3),  # same event id, other account: distinct
        event(account, "s", metric="audio_transcribed_seconds", quantity=1.5),
    ]
    response = service_client.post(URL, {"events": batch}, format="json")
    assert response.status_code == 201
    body = response.json()
    assert (body["accepted"], body["duplicates"]) == (3, 2)
    assert sorted((u["account"], u["metric"], u["used"]) for u in body["usage"]) == sorted(
        [
            (str(account.pk), "text_tokens", 3),
            (str(account.pk), "audio_transcribed_seconds", 1.5),
            (str(other.pk), "text_tokens", 3),
        ]
    )
    assert used(account) == 3_000
    assert used(account, "audio_transcribed_seconds") == 1_500


def test_seconds_keep_three_decimals_exactly(service_client):
    account = AccountFactory()
    batch = [
        event(account, f"s{i}", metric="audio_analyzed_seconds", quantity=0.1) for i in range(10)
    ]
    response = service_client.post(URL, {"events": batch}, format="json")
    assert response.json()["usage"][0]["used"] == 1
    assert used(account, "audio_analyzed_seconds") == 1_000


@pytest.mark.parametrize(
    ("changes", "errors"),
    [
        ({"quantity": 0}, {"quantity": ["Ensure this value is greater than 0."]}),
        ({"quantity": -5}, {"quantity": ["Ensure this value is greater than 0."]}),
        (
            {"quantity": 1.5},
            {"quantity": ["Ensure this value is a whole number: this metric takes no decimals."]},
        ),
        (
            {"metric": "audio_analyzed_seconds", "quantity": 1.2345},
            {"quantity": ["Ensure that there are no more than 3 decimal places."]},
        ),
        (
            {"quantity": 10**12 + 1},
            {"quantity": ["Ensure this value is less than or equal to 1000000000000."]},
        ),
        ({"quantity": "lots"}, {"quantity": ["Expected a JSON number."]}),
        ({"quantity": True}, {"quantity": ["Expected a JSON number."]}),
        (
            {"metric": "video_seconds"},
            {
                "metric": [
                    "“video_seconds” is not a valid metric. Expected one of: "
                    "audio_transcribed_seconds, audio_analyzed_seconds, text_tokens."
                ]
            },
        ),
        ({"event_id": ""}, {"event_id": ["This field may not be blank."]}),
        (
            {"event_id": "x" * 129},
            {"event_id": ["Ensure this field has no more than 128 characters."]},
        ),
        ({"account": "not-a-uuid"}, {"account": ["Must be a valid UUID."]}),
        (
            {"occurred_at": "yesterday"},
            {"occurred_at": ["Datetime has wrong format. Use ISO 8601 with a UTC offset."]},
        ),
        (
            {"occurred_at": "2026-11-23T10:15:00"},
            {"occurred_at": ["Datetime has no UTC offset. Use ISO 8601 with a UTC offset."]},
        ),
        ({"metadata": ["a"]}, {"metadata": ["Expected an object."]}),
    ],
)
def test_an_invalid_event_is_refused_with_its_message(service_client, changes, errors):
    account = AccountFactory()
    response = service_client.post(URL, {**event(account), **changes}, format="json")
    assert response.status_code == 400
    assert response.json() == errors
    assert not UsageEvent.objects.exists()


@pytest.mark.parametrize("missing", ["event_id", "account", "metric", "quantity"])
def test_a_missing_field_is_refused(service_client, missing):
    account = AccountFactory()
    body = event(account)
    del body[missing]
    response = service_client.post(URL, body, format="json")
    assert response.status_code == 400
    assert response.json() == {missing: ["This field is required."]}


def test_more_than_five_minutes_in_the_future_is_refused(service_client):
    account = AccountFactory()
    soon = (timezone.now() + timedelta(minutes=4)).isoformat()
    later = (timezone.now() + timedelta(minutes=6)).isoformat()
    assert (
        service_client.post(
            URL, event(account, "soon", occurred_at=soon), format="json"
        ).status_code
        == 201
    )
    response = service_client.post(URL, event(account, "later", occurred_at=later), format="json")
    assert response.status_code == 400
    assert response.json() == {
        "occurred_at": ["Ensure this moment is not more than 5 minutes in the future."]
    }


@pytest.mark.parametrize("plan_or_active", [{"is_active": False}, None])
def test_unknown_or_inactive_account_refuses_the_whole_batch(service_client, plan_or_active):
    account = AccountFactory()
    if plan_or_active:
        target = AccountFactory(**plan_or_active)
        reference = str(target.pk)
    else:
        reference = "00000000-0000-4000-8000-000000000000"
    batch = [event(account, "ok"), {**event(account, "bad"), "account": reference}]
    response = service_client.post(URL, {"events": batch}, format="json")
    assert response.status_code == 400
    assert response.json() == {"events": {"1": {"account": ["Unknown or inactive account."]}}}
    assert not UsageEvent.objects.exists()
    assert not UsageCounter.objects.exists()


def test_usage_of_an_account_that_is_not_enterprise_is_still_recorded(service_client):
    account = AccountFactory(plan=Plan.PRO)
    response = service_client.post(URL, event(account), format="json")
    assert response.status_code == 201


def test_one_invalid_event_refuses_the_batch_keyed_by_index(service_client):
    account = AccountFactory()
    batch = [event(account, "a"), event(account, "b", quantity=0), event(account, "c", metric="x")]
    response = service_client.post(URL, {"events": batch}, format="json")
    assert response.status_code == 400
    assert response.json() == {
        "events": {
            "1": {"quantity": ["Ensure this value is greater than 0."]},
            "2": {
                "metric": [
                    "“x” is not a valid metric. Expected one of: "
                    "audio_transcribed_seconds, audio_analyzed_seconds, text_tokens."
                ]
            },
        }
    }
    assert not UsageEvent.objects.exists()


def test_a_batch_of_1001_is_refused(service_client):
    account = AccountFactory()
    batch = [event(account, f"e{i}") for i in range(1001)]
    response = service_client.post(URL, {"events": batch}, format="json")
    assert response.status_code == 400
    assert response.json() == {"events": ["Ensure this list has at most 1000 events."]}
    assert not UsageEvent.objects.exists()


def test_an_empty_batch_is_refused(service_client):
    response = service_client.post(URL, {"events": []}, format="json")
    assert response.status_code == 400
    assert response.json() == {"events": ["This list may not be empty."]}


def test_malformed_json_is_400_and_other_content_types_415(service_client):
    malformed = service_client.post(URL, "{not json", content_type="application/json")
    assert malformed.status_code == 400
    assert "JSON parse error" in malformed.json()["detail"]
    not_a_number = service_client.post(URL, '{"quantity": NaN}', content_type="application/json")
    assert not_a_number.status_code == 400
    form = service_client.post(URL, "quantity=1", content_type="application/x-www-form-urlencoded")
    assert form.status_code == 415


def test_only_usage_services_may_post_events(api_client, nobody_client, manager_client):
    account = AccountFactory()
    assert api_client.post(URL, event(account), format="json").status_code == 401
    assert nobody_client.post(URL, event(account), format="json").status_code == 403
    assert manager_client.post(URL, event(account), format="json").status_code == 403
    assert not UsageEvent.objects.exists()


@pytest.mark.parametrize("size", [1, 1000])
def test_a_batch_costs_the_same_queries_whatever_its_size(
    service_client, django_assert_num_queries, size
):
    # given: the token and permission lookups are warmed by a first request
    accounts = [AccountFactory() for _ in range(3)]
    for account in accounts:  # label keys counted, as the accounts' scoped limits would
        for metric in ("text_tokens", "audio_analyzed_seconds"):
            keys_counted(account, "vendor=acme", "model=m1;vendor=acme", metric=metric)
    service_client.post(URL, event(accounts[0], "warm-up"), format="json")
    batch = [
        event(
            accounts[i % 3],
            f"e{i}",
            metric=("text_tokens", "audio_analyzed_seconds")[i % 2],
            labels={"model": f"m{i % 7}", "vendor": "acme", "operation": f"o{i % 5}"},
        )
        for i in range(size)
    ]
    # when / then: token + permissions + accounts + insert + label sets and their count +
    # the counted label keys + day and hour counters (one statement on PostgreSQL, two on
    # SQLite) + usage read, plus the savepoint pair of the test's transaction, plus the
    # (account, metric) locks and the two SET CONSTRAINTS around the insert on
    # PostgreSQL: the same for 1 and for 1000 events
    with django_assert_num_queries(14 if connection.vendor == "postgresql" else 12):
        response = service_client.post(URL, {"events": batch}, format="json")
    assert response.status_code == 201
    # each event added to its metric's counters and to those of the keys its labels hold
    expected = {"", "vendor=acme"} | ({"model=m1;vendor=acme"} if size > 1 else set())
    assert set(UsageCounter.objects.values_list("labels", flat=True)) == expected


def test_metadata_numbers_are_stored_as_json_numbers(service_client):
    # given
    account = AccountFactory()
    metadata = {"temperature": 0.7, "tokens": 3, "model": "large", "nested": {"p": 0.25}}
    # when
    response = service_client.post(URL, event(account, metadata=metadata), format="json")
    # then
    assert response.status_code == 201
    assert UsageEvent.objects.get().metadata == metadata


@pytest.mark.parametrize("accounts_count", [1, 12])
def test_a_batch_costs_the_same_queries_whatever_its_accounts_scoped_limits(
    service_client, django_assert_num_queries, accounts_count
):
    # given: accounts with scoped limits of every kind (thresholds far away), labelled events
    accounts = [AccountFactory() for _ in range(accounts_count)]
    for account in accounts:
        for period, days, labels in (
            ("day", None, {"vendor": "acme"}),
            ("rolling", 7, {}),
            ("minute", None, {"model": "m1"}),
            ("hour", None, {"model": "m2", "vendor": "acme"}),
        ):
            scoped_limit_set(
                account=account,
                metric="text_tokens",
                period=period,
                window_days=days,
                labels=labels,
                blocked=10**9,
            )
    service_client.post(URL, event(accounts[0], "warm-up"), format="json")
    batch = [
        event(
            accounts[i % accounts_count],
            f"e{i}",
            labels={"model": f"m{i % 3}", "vendor": "acme"},
        )
        for i in range(1000)
    ]
    # when / then: as above, plus the scoped limits of the accounts and their figures (two
    # queries for every account): the same for 1 account and for 12
    with django_assert_num_queries(16 if connection.vendor == "postgresql" else 14):
        response = service_client.post(URL, {"events": batch}, format="json")
    assert response.status_code == 201
    assert response.json()["accepted"] == 1000


def test_a_batch_counts_in_the_time_zone_its_account_has_now(service_client):
    # given: a batch read the account in Paris, then its time zone became Tokyo's
    account = AccountFactory(timezone="Europe/Paris")
    first = service_client.post(
        URL,
        {"events": [event(account, "in-paris", metric="audio_analyzed_seconds")]},
        format="json",
    )
    assert first.status_code == 201
    Account.objects.filter(pk=account.pk).update(timezone="Asia/Tokyo")
    # 16:00 UTC yesterday: yesterday in Paris (17:00 or 18:00), today in Tokyo (01:00)
    yesterday = timezone.now().astimezone(UTC).date() - timedelta(days=1)
    instant = datetime.combine(yesterday, time(16), tzinfo=UTC)
    batch = [event(account, "in-tokyo", quantity=7, occurred_at=instant.isoformat())]
    # when
    response = service_client.post(URL, {"events": batch}, format="json")
    # then: counted on Tokyo's day, not on Paris's
    assert response.status_code == 201
    assert response.json()["accepted"] == 1
    days = dict(
        UsageCounter.objects.filter(account=account, metric="text_tokens", labels="").values_list(
            "day", "quantity_milli"
        )
    )
    assert days == {yesterday + timedelta(days=1): 7000}
