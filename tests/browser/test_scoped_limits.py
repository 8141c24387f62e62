"""A scoped limit added on the account page, then its usage posted through the API."""

from __future__ import annotations

import json

import pytest
from playwright.sync_api import expect

from accounts.models import ScopedLimit
from tests.factories import AccountFactory, RecipientFactory
from tests.usage.factories import event_body

pytestmark = [
    pytest.mark.browser,
    pytest.mark.django_db(transaction=True, serialized_rollback=True),
]

LINE = {"en": "Text tokens, Day (Model: large)", "fr": "Jetons texte, Jour (Modèle : large)"}
# What the chart says of the line, with the usage written as the language writes it.
FIGURES = {
    "en": "Used: {used} tokens. Warning threshold: 40,000 tokens. "
    "Blocked threshold: 50,000 tokens.",
    "fr": "Consommé : {used} jetons. Seuil d’avertissement : 40\xa0000 jetons. "
    "Seuil de blocage : 50\xa0000 jetons.",
}
USED = {"en": "42,000", "fr": "42\xa0000"}
STATUS = {"en": ("OK", "Warning"), "fr": ("OK", "Avertissement")}


def test_a_scoped_limit_is_added_and_its_usage_shows(
    service_api, open_page, screenshot, language, staff_manager
):
    # given: an account with its recipients
    account = AccountFactory(name="Acme Speech", timezone="Europe/Paris")
    RecipientFactory(account=account, level="warning", email="pm@acme.example")
    RecipientFactory(account=account, level="blocked", email="ops@acme.example")
    page = open_page(staff_manager)
    page.goto(f"/admin/accounts/account/{account.pk}/change/")

    # when: a daily line on the large model is added in the scoped limits inline
    group = page.locator("#scoped_limits-group")
    group.locator(".add-row a").click()
    row = group.locator("tr.form-row.dynamic-scoped_limits").last
    row.locator("select[name$=-metric]").select_option("text_tokens")
    row.locator("select[name$=-period]").select_option("day")
    row.locator("input[name$=-label_model]").fill("large")
    row.locator("input[name$=-warning]").fill("40000")
    row.locator("input[name$=-blocked]").fill("50000")
    # the row fits the page at 1440 px: nothing to scroll sideways
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    screenshot(page, "added")
    group.scroll_into_view_if_needed()
    screenshot(page, "added-window", full_page=False)
    page.locator("input[name=_continue]").click()

    # then: saved, and its chart starts empty
    expect(page.locator(".messagelist .success")).to_be_visible()
    line = ScopedLimit.objects.get(account=account)
    assert (line.metric, line.period, line.labels, line.warning, line.blocked) == (
        "text_tokens",
        "day",
        {"model": "large"},
        40000,
        50000,
    )
    chart = page.locator("#usage-charts figure", has_text=LINE[language])
    expect(chart.locator(".usage-chart-figures")).to_have_text(FIGURES[language].format(used="0"))
    expect(chart.locator(".usage-badge-ok")).to_have_text(STATUS[language][0])

    # when: a service posts usage with that label, and usage of another model
    events = [
        event_body(account, event_id="large-1", quantity=42000, labels={"model": "large"}),
        event_body(account, event_id="small-1", quantity=9000, labels={"model": "small"}),
    ]
    response = service_api.post("/api/v1/usage/events/", data=json.dumps({"events": events}))
    assert response.status == 201, response.text()
    page.reload()

    # then: the line's usage shows, past its warning threshold, drawn against both
    chart = page.locator("#usage-charts figure", has_text=LINE[language])
    expect(chart.locator(".usage-chart-figures")).to_have_text(
        FIGURES[language].format(used=USED[language])
    )
    expect(chart.locator(".usage-badge-warning")).to_have_text(STATUS[language][1])
    expect(chart.locator("svg line.usage-chart-threshold")).to_have_count(2)
    expect(chart.locator("svg polyline.usage-chart-used")).to_have_count(1)
    screenshot(page, "usage")
    page.locator("#usage-charts").evaluate("e => e.scrollIntoView()")
    screenshot(page, "charts-window", full_page=False)
