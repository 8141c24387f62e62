"""A failed delivery is resent from the delivery list, in a browser."""

from __future__ import annotations

import pytest
from django.core import mail
from django.utils import translation
from playwright.sync_api import expect

from notifications.models import Delivery
from tests.notifications.factories import DeliveryFactory

RESEND = {"en": "Resend failed deliveries", "fr": "Renvoyer les envois en échec"}

pytestmark = [
    pytest.mark.browser,
    pytest.mark.django_db(transaction=True, serialized_rollback=True),
]


def test_failed_delivery_is_resent_and_its_new_status_shows(
    open_page,
    screenshot,
    language,
    staff_manager,
):
    # given: a delivery that failed during a provider outage, and one that was sent
    failed = DeliveryFactory(
        email="pm@acme.example",
        status=Delivery.Status.FAILED,
        attempts=8,
        esp_message_id="",
        sent_at=None,
        last_error="SMTPServerDisconnected: Connection unexpectedly closed",
    )
    DeliveryFactory(email="ops@acme.example")
    with translation.override(language):
        failed_label = str(Delivery.Status.FAILED.label)
        sent_label = str(Delivery.Status.SENT.label)
    page = open_page(staff_manager)
    page.goto("/admin/notifications/delivery/")
    row = page.locator("#result_list tbody tr", has_text="pm@acme.example")
    expect(row.locator("td.field-status_display")).to_have_text(failed_label)
    screenshot(page, "failed")
    # every column within the list at 1440 px, the error and the dates included
    expect(row.locator("td.field-last_error_display")).to_have_text(failed.last_error)
    assert page.evaluate(
        "() => { const r = document.querySelector('#changelist .results');"
        " return r.scrollWidth <= r.clientWidth; }"
    )

    # when: the manager resends it from the list
    row.locator("input.action-select").check()
    page.locator("select[name=action]").select_option(label=RESEND[language])
    page.locator("button[name=index]").click()

    # then: the list shows it sent, and it was sent once
    expect(page.locator(".messagelist .success")).to_be_visible()
    row = page.locator("#result_list tbody tr", has_text="pm@acme.example")
    expect(row.locator("td.field-status_display")).to_have_text(sent_label)
    screenshot(page, "resent")
    failed.refresh_from_db()
    assert failed.status == Delivery.Status.SENT
    assert [message.to for message in mail.outbox] == [["pm@acme.example"]]
