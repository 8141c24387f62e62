"""Reservations through the API (SPEC 12.1): held, answered again, refused, settled,
released and expired, and counted by ``check`` and ``capacities``.

The clock is fixed at an instant named in each test (Paris local time), so that every
window and every expiry is known.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import time_machine

from tests.factories import AccountFactory
from usage.models import Reservation, UsageEvent
from usage.tasks import expire_reservations

pytestmark = pytest.mark.django_db

# Wednesday 2 December 2026, 15:30 in Paris (UTC+01:00).
NOW = datetime(2026, 12, 2, 14, 30, tzinfo=UTC)
LATER = NOW + timedelta(seconds=900)

LIMITS = {
    "limits": {"text_tokens": {"warning": None, "blocked": 1000}},
    "scoped_limits": [
        {"metric": "text_tokens", "period": "day", "window_days": None,
         "labels": {"model": "large"}, "warning": None, "blocked": 300},
    ],
}  # fmt: skip


@pytest.fixture
def clock():
    with time_machine.travel(NOW, tick=False) as traveller:
        yield traveller


@pytest.fixture
def account(clock, manager_client, service_client):
    account = AccountFactory(timezone="Europe/Paris")
    response = manager_client.put(f"/api/v1/accounts/{account.pk}/limits/", LIMITS, format="json")
    assert response.status_code == 200, response.json()
    post_event(service_client, account, "used-large", 200, labels={"model": "large"})
    return account


def post_event(client, account, event_id, quantity, **fields):
    response = client.post(
        "/api/v1/usage/events/",
        {
            "event_id": event_id,
            "account": str(account.pk),
            "metric": "text_tokens",
            "quantity": quantity,
            **fields,
        },
        format="json",
    )
    assert response.status_code == 201, response.json()
    return response


def reserve(client, account, reservation_id="job-42", quantity=50, **fields):
    return client.post(
        f"/api/v1/accounts/{account.pk}/usage/reservations/",
        {"reservation_id": reservation_id, "metric": "text_tokens", "quantity": quantity, **fields},
        format="json",
    )


def monthly_line(used=200, reserved=0, remaining=800, status="ok"):
    return {
        "period": "month",
        "window_days": None,
        "labels": {},
        "used": used,
        "reserved": reserved,
        "remaining": remaining,
        "status": status,
    }


def day_line(used=200, reserved=0, remaining=100, status="ok"):
    return {
        "period": "day",
        "window_days": None,
        "labels": {"model": "large"},
        "used": used,
        "reserved": reserved,
        "remaining": remaining,
        "status": status,
    }


def held(reservation_id="job-42", quantity=50, labels=None, status="active", lines=None, **more):
    return {
        "reservation_id": reservation_id,
        "status": status,
        "metric": "text_tokens",
        "quantity": quantity,
        "labels": labels or {},
        "created_at": "2026-12-02T15:30:00+01:00",
        "expires_at": "2026-12-02T15:45:00+01:00",
        "ended_at": None,
        "lines": lines,
        **more,
    }


def capacities_reserved(client, account):
    items = client.get(f"/api/v1/accounts/{account.pk}/capacities/").json()["items"]
    return [(item["metric"], item["labels"], item["reserved"], item["remaining"]) for item in items]


def test_a_reservation_is_held_on_every_line_its_labels_apply_to(account, service_client):
    # when
    response = reserve(service_client, account, quantity=60, labels={"model": "large"})
    # then
    assert response.status_code == 201
    assert response.json() == held(
        quantity=60,
        labels={"model": "large"},
        lines=[monthly_line(reserved=60, remaining=740), day_line(reserved=60, remaining=40)],
    )
    assert capacities_reserved(service_client, account) == [
        ("audio_transcribed_seconds", {}, 0, None),
        ("audio_analyzed_seconds", {}, 0, None),
        ("text_tokens", {}, 60, 740),
        ("text_tokens", {"model": "large"}, 60, 40),
    ]


def test_a_reservation_without_labels_holds_nothing_on_a_labelled_line(account, service_client):
    # when
    response = reserve(service_client, account, quantity=500)
    # then
    assert response.status_code == 201
    assert response.json() == held(quantity=500, lines=[monthly_line(reserved=500, remaining=300)])
    assert capacities_reserved(service_client, account)[2:] == [
        ("text_tokens", {}, 500, 300),
        ("text_tokens", {"model": "large"}, 0, 100),
    ]


def test_the_check_deducts_what_reservations_hold(account, service_client):
    # given: 60 of the day line's 100 left are held
    assert (
        reserve(service_client, account, quantity=60, labels={"model": "large"}).status_code == 201
    )
    # when
    response = service_client.post(
        f"/api/v1/accounts/{account.pk}/usage/check/",
        {"metric": "text_tokens", "quantity": 41, "labels": {"model": "large"}},
        format="json",
    )
    # then: used is unchanged, remaining and allowed count the reservation
    assert response.status_code == 200
    assert response.json() == {
        "allowed": False,
        "metric": "text_tokens",
        "used": 200,
        "remaining": 40,
        "status": "ok",
        "lines": [
            {"period": "month", "window_days": None, "labels": {}, "used": 200,
             "remaining": 740, "status": "ok", "allowed": True},
            {"period": "day", "window_days": None, "labels": {"model": "large"}, "used": 200,
             "remaining": 40, "status": "ok", "allowed": False},
        ],
    }  # fmt: skip


def test_a_reservation_that_does_not_fit_is_refused_and_holds_nothing(account, service_client):
    # given
    assert (
        reserve(
            service_client, account, "first", quantity=60, labels={"model": "large"}
        ).status_code
        == 201
    )
    # when: 41 more on the day line, where 40 are left
    response = reserve(service_client, account, "second", quantity=41, labels={"model": "large"})
    # then
    assert response.status_code == 409
    assert response.json() == {
        "code": "insufficient_capacity",
        "detail": "Not enough capacity left on a line to hold this reservation.",
        "lines": [
            {**monthly_line(reserved=60, remaining=740), "allowed": True},
            {**day_line(reserved=60, remaining=40), "allowed": False},
        ],
    }
    assert list(Reservation.objects.values_list("reservation_id", flat=True)) == ["first"]
    # and exactly what is left still fits
    assert (
        reserve(
            service_client, account, "third", quantity=40, labels={"model": "large"}
        ).status_code
        == 201
    )


def test_lines_without_a_blocked_threshold_always_have_room(clock, service_client):
    # given: an account without limits
    account = AccountFactory()
    # when
    response = reserve(service_client, account, quantity=10**12)
    # then
    assert response.status_code == 201
    assert response.json()["lines"] == [
        {"period": "month", "window_days": None, "labels": {}, "used": 0,
         "reserved": 10**12, "remaining": None, "status": "ok"}
    ]  # fmt: skip


def test_the_same_request_again_answers_the_same_reservation(account, service_client):
    # given
    first = reserve(
        service_client, account, quantity=60, labels={"model": "large"}, ttl_seconds=900
    )
    # when: a retry (the ttl left out is the same default)
    response = reserve(service_client, account, quantity=60, labels={"model": "large"})
    # then: 200, the same reservation, held once
    assert response.status_code == 200
    assert response.json() == first.json()
    assert Reservation.objects.count() == 1


@pytest.mark.parametrize(
    "changed",
    [{"quantity": 61}, {"labels": {"model": "small"}}, {"metric": "audio_analyzed_seconds"}],
)
def test_the_same_id_for_another_request_is_refused(account, service_client, changed):
    # given
    assert (
        reserve(service_client, account, quantity=60, labels={"model": "large"}).status_code == 201
    )
    # when
    response = reserve(
        service_client, account, **{"quantity": 60, "labels": {"model": "large"}, **changed}
    )
    # then
    assert response.status_code == 409
    assert response.json() == {
        "code": "reservation_id_reused",
        "detail": "This reservation id is already used by a reservation of another metric, "
        "quantity or labels.",
    }
    assert Reservation.objects.count() == 1


def test_a_usage_event_settles_the_reservation_it_names(account, service_client):
    # given
    assert (
        reserve(service_client, account, quantity=60, labels={"model": "large"}).status_code == 201
    )
    # when: the usage, less than was reserved
    post_event(
        service_client,
        account,
        "job-42-usage",
        45,
        labels={"model": "large"},
        reservation_id="job-42",
    )
    # then: the usage counts, the reservation holds nothing any more
    response = service_client.get(f"/api/v1/accounts/{account.pk}/usage/reservations/job-42/")
    assert response.status_code == 200
    assert response.json() == held(
        quantity=60,
        labels={"model": "large"},
        status="settled",
        ended_at="2026-12-02T15:30:00+01:00",
        lines=[monthly_line(used=245, remaining=755), day_line(used=245, remaining=55)],
    )
    reservation = Reservation.objects.get()
    assert (reservation.status, reservation.settled_by) == ("settled", "job-42-usage")


def test_an_event_naming_no_active_reservation_is_recorded_all_the_same(account, service_client):
    # given: a released reservation
    assert reserve(service_client, account, "released", quantity=10).status_code == 201
    service_client.delete(f"/api/v1/accounts/{account.pk}/usage/reservations/released/")
    # when
    batch = [
        {"event_id": "a", "account": str(account.pk), "metric": "text_tokens", "quantity": 5,
         "reservation_id": "unknown"},
        {"event_id": "b", "account": str(account.pk), "metric": "text_tokens", "quantity": 7,
         "reservation_id": "released"},
    ]  # fmt: skip
    response = service_client.post("/api/v1/usage/events/", {"events": batch}, format="json")
    # then
    assert response.status_code == 201
    assert response.json()["accepted"] == 2
    assert UsageEvent.objects.filter(event_id__in=["a", "b"]).count() == 2
    assert Reservation.objects.get().status == "released"


def test_a_duplicate_event_settles_nothing(account, service_client):
    # given: an event recorded without a reservation, and a reservation
    post_event(service_client, account, "evt-1", 5)
    assert reserve(service_client, account, quantity=10).status_code == 201
    # when: a later copy of that event names the reservation
    response = service_client.post(
        "/api/v1/usage/events/",
        {"event_id": "evt-1", "account": str(account.pk), "metric": "text_tokens",
         "quantity": 5, "reservation_id": "job-42"},
        format="json",
    )  # fmt: skip
    # then: the first copy won; the reservation is still held
    assert response.status_code == 200
    assert Reservation.objects.get().status == "active"


def test_a_released_reservation_holds_nothing_and_stays_released(account, service_client):
    # given
    assert reserve(service_client, account, quantity=60).status_code == 201
    url = f"/api/v1/accounts/{account.pk}/usage/reservations/job-42/"
    # when
    response = service_client.delete(url)
    # then
    assert response.status_code == 200
    expected = held(
        quantity=60, status="released", ended_at="2026-12-02T15:30:00+01:00", lines=[monthly_line()]
    )
    assert response.json() == expected
    # and releasing again, or settling it, changes nothing
    assert service_client.delete(url).json() == expected
    post_event(service_client, account, "late", 10, reservation_id="job-42")
    assert Reservation.objects.get().status == "released"


def test_releasing_a_settled_reservation_answers_it_unchanged(account, service_client):
    # given
    assert reserve(service_client, account, quantity=60).status_code == 201
    post_event(service_client, account, "usage", 60, reservation_id="job-42")
    # when
    response = service_client.delete(f"/api/v1/accounts/{account.pk}/usage/reservations/job-42/")
    # then
    assert response.status_code == 200
    assert response.json()["status"] == "settled"
    assert Reservation.objects.get().status == "settled"


def test_an_unknown_reservation_is_not_found(account, service_client):
    for method in ("get", "delete"):
        response = getattr(service_client, method)(
            f"/api/v1/accounts/{account.pk}/usage/reservations/nope/"
        )
        assert (response.status_code, response.json()) == (
            404,
            {"detail": "Reservation not found."},
        )


def test_an_expired_reservation_holds_nothing_before_any_task_runs(account, service_client, clock):
    # given: 60 held for 60 seconds
    assert (
        reserve(
            service_client, account, quantity=60, labels={"model": "large"}, ttl_seconds=60
        ).status_code
        == 201
    )
    # when: the expiry passes, no task having run
    clock.move_to(NOW + timedelta(seconds=60))
    # then
    response = service_client.get(f"/api/v1/accounts/{account.pk}/usage/reservations/job-42/")
    assert response.json() == held(
        quantity=60,
        labels={"model": "large"},
        status="expired",
        expires_at="2026-12-02T15:31:00+01:00",
        ended_at="2026-12-02T15:31:00+01:00",
        lines=[monthly_line(), day_line()],
    )
    assert capacities_reserved(service_client, account)[2:] == [
        ("text_tokens", {}, 0, 800),
        ("text_tokens", {"model": "large"}, 0, 100),
    ]
    assert (
        reserve(
            service_client, account, "next", quantity=100, labels={"model": "large"}
        ).status_code
        == 201
    )
    # and an event naming it is recorded, settling nothing
    post_event(service_client, account, "too-late", 10, reservation_id="job-42")
    assert Reservation.objects.get(reservation_id="job-42").status == "active"
    # and the tidying task writes what reads already said
    assert expire_reservations() == 1
    reservation = Reservation.objects.get(reservation_id="job-42")
    assert (reservation.status, reservation.ended_at) == ("expired", NOW + timedelta(seconds=60))
    assert expire_reservations() == 0


def test_a_reservation_one_second_before_its_expiry_still_holds(account, service_client, clock):
    assert reserve(service_client, account, quantity=60, ttl_seconds=60).status_code == 201
    clock.move_to(NOW + timedelta(seconds=59))
    assert capacities_reserved(service_client, account)[2] == ("text_tokens", {}, 60, 740)


@pytest.mark.parametrize(
    ("body", "errors"),
    [
        ({}, {"reservation_id": ["This field is required."], "metric": ["This field is required."],
              "quantity": ["This field is required."]}),
        ({"reservation_id": "", "metric": "text_tokens", "quantity": 1},
         {"reservation_id": ["This field may not be blank."]}),
        ({"reservation_id": "x" * 129, "metric": "text_tokens", "quantity": 1},
         {"reservation_id": ["Ensure this field has no more than 128 characters."]}),
        ({"reservation_id": "r", "metric": "text_tokens", "quantity": 0},
         {"quantity": ["Ensure this value is greater than 0."]}),
        ({"reservation_id": "r", "metric": "text_tokens", "quantity": 1.5},
         {"quantity": ["Ensure this value is a whole number: this metric takes no decimals."]}),
        ({"reservation_id": "r", "metric": "text_tokens", "quantity": 1, "ttl_seconds": 0},
         {"ttl_seconds": ["Ensure this value is between 1 and 86400."]}),
        ({"reservation_id": "r", "metric": "text_tokens", "quantity": 1, "ttl_seconds": 86401},
         {"ttl_seconds": ["Ensure this value is between 1 and 86400."]}),
        ({"reservation_id": "r", "metric": "text_tokens", "quantity": 1, "ttl_seconds": "60"},
         {"ttl_seconds": ["A valid integer is required."]}),
        ({"reservation_id": "r", "metric": "text_tokens", "quantity": 1, "ttl_seconds": 1.5},
         {"ttl_seconds": ["A valid integer is required."]}),
        ({"reservation_id": "r", "metric": "text_tokens", "quantity": 1, "labels": {"colour": "red"}},
         {"labels": {"colour": ["“colour” is not a known label. Expected one of: technology, "
                                "vendor, operation, model."]}}),
        ({"reservation_id": "r", "metric": "text_tokens", "quantity": 1, "account": "x"},
         {"account": ["Unknown field."]}),
        ([], {"non_field_errors": ["Expected an object."]}),
    ],
)  # fmt: skip
def test_a_bad_reservation_is_refused_with_400_and_holds_nothing(
    account, service_client, body, errors
):
    # when
    response = service_client.post(
        f"/api/v1/accounts/{account.pk}/usage/reservations/", body, format="json"
    )
    # then
    assert (response.status_code, response.json()) == (400, errors)
    assert not Reservation.objects.exists()


def test_an_event_with_a_bad_reservation_id_is_refused(account, service_client):
    response = service_client.post(
        "/api/v1/usage/events/",
        {"event_id": "e", "account": str(account.pk), "metric": "text_tokens", "quantity": 1,
         "reservation_id": 42},
        format="json",
    )  # fmt: skip
    assert (response.status_code, response.json()) == (
        400,
        {"reservation_id": ["Not a valid string."]},
    )
