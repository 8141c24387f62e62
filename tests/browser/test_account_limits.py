"""An account manager sets limits on the account page, in a browser."""

from __future__ import annotations

import pytest
from django.utils import translation
from playwright.sync_api import expect

from accounts.models import Limit, Recipient
from accounts.services import MSG_WARNING_NEEDS_RECIPIENT
from config.dates import datetime_text
from tests.factories import AccountFactory

pytestmark = [
    pytest.mark.browser,
    pytest.mark.django_db(transaction=True, serialized_rollback=True),
]


def test_warning_threshold_needs_a_recipient_then_shows_in_the_history(
    open_page, screenshot, language, staff_manager
):
    # given
    account = AccountFactory(name="Acme Speech")
    with translation.override(language):
        rule = str(MSG_WARNING_NEEDS_RECIPIENT)
    page = open_page(staff_manager)
    page.goto(f"/admin/accounts/account/{account.pk}/change/")

    # when: a warning threshold without a warning recipient
    page.locator("#id_limit_text_tokens_warning").fill("100000")
    page.locator("input[name=_continue]").click()

    # then: the rule is at the top and next to the threshold, and nothing is saved
    expect(page.locator(".errornote")).to_be_visible()
    expect(page.locator("ul.errorlist.nonfield")).to_have_text(rule)
    threshold_row = page.locator(".field-limit_text_tokens_warning")
    expect(threshold_row.locator("ul.errorlist")).to_have_text(rule)
    expect(threshold_row.locator("#id_limit_text_tokens_warning")).to_have_value("100000")
    # right above the field, not somewhere else on the page
    message = threshold_row.locator("ul.errorlist").bounding_box()
    field = threshold_row.locator("#id_limit_text_tokens_warning").bounding_box()
    assert 0 <= field["y"] - (message["y"] + message["height"]) < 20, (message, field)
    screenshot(page, "refused")
    screenshot(page, "refused-window", full_page=False)
    assert not Limit.objects.exists()
    assert not Recipient.objects.exists()
    assert not Limit.history.exists()

    # when: a warning recipient is added
    row = page.locator("#recipients-group tr.form-row:not(.empty-form)").first
    row.locator("select[name$=-level]").select_option("warning")
    row.locator("input[name$=-email]").fill("pm@acme.example")
    page.locator("input[name=_continue]").click()

    # then: saved, and the account's history says who changed what, and when
    expect(page.locator(".messagelist .success")).to_be_visible()
    expect(page.locator(".errornote")).to_have_count(0)
    limit = Limit.objects.get(account=account, metric="text_tokens")
    assert (limit.warning, limit.blocked) == (100_000, None)
    assert list(Recipient.objects.values_list("level", "email")) == [("warning", "pm@acme.example")]
    record = Limit.history.get()
    assert record.history_user == staff_manager
    with translation.override(language):
        when = datetime_text(record.history_date, account.timezone)
    history = page.locator("#limits-history tbody tr")
    expect(history).to_have_count(2)  # the threshold and the recipient
    for change in (history.nth(0), history.nth(1)):
        expect(change.locator("td").nth(0)).to_have_text(when)
        expect(change.locator("td").nth(1)).to_have_text("manager")
    expect(page.locator("#limits-history")).to_contain_text("pm@acme.example")
    expect(page.locator("#limits-history")).to_contain_text("100")
    screenshot(page, "saved")
    page.locator("#limits-history").scroll_into_view_if_needed()
    screenshot(page, "history-window", full_page=False)
