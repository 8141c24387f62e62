"""Usage posted through the API, as seen on the accounts list in a browser."""

from __future__ import annotations

import json
import re

import pytest
from playwright.sync_api import Page, expect

from accounts.metrics import METRICS
from tests.browser.conftest import VIEWPORTS
from tests.factories import AccountFactory, LimitFactory, RecipientFactory
from tests.usage.factories import event_body

pytestmark = [
    pytest.mark.browser,
    pytest.mark.django_db(transaction=True, serialized_rollback=True),
]

# Per metric: (warning, blocked) thresholds and the usage posted; text tokens past warning.
USAGE = {
    "audio_transcribed_seconds": (30_000, 36_000, 1_200),
    "audio_analyzed_seconds": (60_000, 72_000, 30_000),
    "text_tokens": (120_000, 360_000, 150_000),
}
STATUS = {"en": ("Warning", "OK"), "fr": ("Avertissement", "OK")}
# What each bar reads, used / scale (the blocked threshold), in METRICS order.
# With their unit; seconds also in hours and minutes, on a second line.
FIGURES = {
    "en": [
        r"1,200 / 36,000 s\s*20 min / 10 h",
        r"30,000 / 72,000 s\s*8 h 20 min / 20 h",
        "150,000 / 360,000 tokens",
    ],
    "fr": [
        r"1\s200 / 36\s000 s\s*20 min / 10 h",
        r"30\s000 / 72\s000 s\s*8 h 20 min / 20 h",
        r"150\s000 / 360\s000 jetons",
    ],
}


def assert_bars_visible(page: Page, row) -> None:
    """Every metric's bar and figures lie within the viewport and the list's visible part."""
    viewport = page.viewport_size
    results = page.locator("#changelist .results").bounding_box()
    bars = row.locator(".usage-bar")
    expect(bars).to_have_count(len(METRICS))
    for index in range(len(METRICS)):
        for part in (".usage-bar-track", ".usage-bar-text"):
            box = bars.nth(index).locator(part).bounding_box()
            assert box is not None and box["width"] > 0 and box["height"] > 0, (index, part)
            right = box["x"] + box["width"]
            assert box["x"] >= results["x"] and right <= results["x"] + results["width"], (
                index,
                part,
                box,
                results,
            )
            assert right <= viewport["width"], (index, part, box, viewport)
        fill = bars.nth(index).locator(".usage-bar-fill").bounding_box()
        assert fill is not None and fill["width"] > 0, index
    # Nothing of the row is hidden behind a horizontal scroll of the list.
    assert page.locator("#changelist .results").evaluate("e => e.scrollWidth <= e.clientWidth")


@pytest.mark.parametrize("viewport", list(VIEWPORTS))
def test_usage_posted_through_the_api_shows_on_the_accounts_list(
    service_api, open_page, screenshot, language, viewport, admin_user
):
    # given: an Enterprise account with thresholds on every metric, and another one
    account = AccountFactory(name="Acme Speech")
    AccountFactory(name="Quiet Corp")
    for metric, (warning, blocked, _used) in USAGE.items():
        LimitFactory(account=account, metric=metric, warning=warning, blocked=blocked)
    RecipientFactory(account=account, level="warning")
    RecipientFactory(account=account, level="blocked")

    # when: a service posts usage, text tokens past their warning threshold
    events = [
        event_body(account, event_id=f"list-{metric}", metric=metric, quantity=used)
        for metric, (_warning, _blocked, used) in USAGE.items()
    ]
    response = service_api.post("/api/v1/usage/events/", data=json.dumps({"events": events}))
    assert response.status == 201, response.text()

    # then: the list shows the account's status and a visible bar per metric
    page = open_page(admin_user, viewport)
    page.goto("/admin/accounts/account/")
    expect(page.locator("#nav-sidebar")).to_be_visible()
    warning, ok = STATUS[language]
    row = page.locator("#result_list tbody tr", has_text="Acme Speech")
    expect(row.locator(".usage-badge-warning")).to_have_text(warning)
    expect(
        page.locator("#result_list tbody tr", has_text="Quiet Corp").locator(".usage-badge-ok")
    ).to_have_text(ok)
    screenshot(page, "list")
    expect(row.locator(".usage-bar-text")).to_have_text(
        [re.compile(f"^{figures}$") for figures in FIGURES[language]]
    )
    assert_bars_visible(page, row)

    # and: the status filter finds it, and only it
    page.locator("#changelist-filter").get_by_role("link", name=warning, exact=True).click()
    expect(page).to_have_url(re.compile(r"[?&]status=warning"))
    rows = page.locator("#result_list tbody tr")
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text("Acme Speech")
    screenshot(page, "filtered")
    assert_bars_visible(page, rows.first)
