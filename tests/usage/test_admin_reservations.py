"""Reservations in the admin (SPEC 12.1): per account, read-only, each with its state as the
API answers it (an active reservation past its expiry is expired before any task runs)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from tests.factories import AccountFactory
from usage.models import Reservation

pytestmark = pytest.mark.django_db

RESERVATIONS_URL = reverse("admin:usage_reservation_changelist")


@pytest.fixture
def manager_admin_client(client, manager):
    manager.is_staff = True
    manager.save(update_fields=["is_staff"])
    client.force_login(manager)
    return client


def reservation(account, reservation_id, *, status="active", expires_in=900, **fields):
    now = timezone.now()
    return Reservation.objects.create(
        account=account,
        reservation_id=reservation_id,
        metric="text_tokens",
        quantity_milli=1_500_000,
        labels={"model": "large"},
        status=status,
        created_at=now - timedelta(seconds=60),
        expires_at=now + timedelta(seconds=expires_in),
        **fields,
    )


def rows(response) -> list[tuple[str, str]]:
    admin = response.context["cl"].model_admin
    return [
        (obj.reservation_id, admin.state_display(obj)) for obj in response.context["cl"].result_list
    ]


@pytest.fixture
def reservations():
    acme, other = AccountFactory(name="Acme"), AccountFactory(name="Other")
    reservation(acme, "held")
    reservation(acme, "past-expiry", expires_in=-1)
    reservation(acme, "settled", status="settled", ended_at=timezone.now(), settled_by="evt-9")
    reservation(acme, "released", status="released", ended_at=timezone.now())
    reservation(other, "elsewhere")
    return acme


def test_the_list_of_one_account_shows_each_reservation_with_its_state(
    manager_admin_client, reservations
):
    # when
    response = manager_admin_client.get(RESERVATIONS_URL, {"account__id__exact": reservations.pk})
    # then
    assert response.status_code == 200
    assert rows(response) == [
        ("released", "released"),
        ("settled", "settled"),
        ("past-expiry", "expired"),
        ("held", "active"),
    ]
    assert '<td class="field-quantity_display">1,500 tokens</td>' in response.text
    assert "Model: large" in response.text


@pytest.mark.parametrize(
    ("state", "expected"),
    [("active", ["held"]), ("expired", ["past-expiry"]), ("settled", ["settled"])],
)
def test_the_state_filter_follows_the_expiry(manager_admin_client, reservations, state, expected):
    response = manager_admin_client.get(
        RESERVATIONS_URL, {"account__id__exact": reservations.pk, "state": state}
    )
    assert [reservation_id for reservation_id, _state in rows(response)] == expected


def test_a_reservation_page_is_read_only(manager_admin_client, reservations):
    # given
    held = Reservation.objects.get(reservation_id="settled")
    url = reverse("admin:usage_reservation_change", args=[held.pk])
    # when
    response = manager_admin_client.get(url)
    # then
    assert response.status_code == 200
    assert "evt-9" in response.text
    assert 'name="_save"' not in response.text
    assert manager_admin_client.post(url, {}).status_code == 403


def test_the_account_page_links_to_its_reservations(manager_admin_client, reservations):
    response = manager_admin_client.get(
        reverse("admin:accounts_account_change", args=[reservations.pk])
    )
    assert f"{RESERVATIONS_URL}?account__id__exact={reservations.pk}" in response.text
    assert "View reservations" in response.text
