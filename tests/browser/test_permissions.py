"""Someone who may not change limits, in a browser: a read-only page, then the admin's 403."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Permission
from django.utils import translation
from playwright.sync_api import expect

from accounts.models import Limit
from tests.factories import AccountFactory, LimitFactory, UserFactory

pytestmark = [
    pytest.mark.browser,
    pytest.mark.django_db(transaction=True, serialized_rollback=True),
]

# (site header, page title, explanation), as a person reads them.
REFUSAL = {
    "en": (
        "Usage limits back-office",
        "Access denied",
        "You do not have the permission to see or change this page.",
    ),
    "fr": (
        "Back-office des limites d’usage",
        "Accès refusé",
        "Vous n’avez pas la permission de voir ou de modifier cette page.",
    ),
}


def test_user_without_manager_permissions_cannot_change_limits(open_page, screenshot, language):
    # given: staff who may see accounts and their limits, but are no account manager
    account = AccountFactory(name="Acme Speech")
    LimitFactory(account=account, metric="text_tokens", warning=100_000, blocked=200_000)
    viewer = UserFactory(username="support", is_staff=True)
    viewer.user_permissions.set(
        Permission.objects.filter(
            content_type__app_label="accounts", codename__in=["view_account", "view_limit"]
        )
    )
    page = open_page(viewer)

    # when: they open the account page
    page.goto(f"/admin/accounts/account/{account.pk}/change/")

    # then: limits are shown, not editable, and there is nothing to save
    expect(page.locator(".field-limits_summary")).to_contain_text("100")
    expect(page.locator("input[name^=limit_]")).to_have_count(0)
    expect(page.locator("input[name=_save]")).to_have_count(0)

    # when: a change is posted anyway (the page's own form, with a threshold added)
    with page.expect_navigation() as navigation:
        page.evaluate(
            """() => {
                const form = document.querySelector("#account_form");
                const input = document.createElement("input");
                input.name = "limit_text_tokens_warning";
                input.value = "1";
                form.appendChild(input);
                form.submit();
            }"""
        )

    # then: refused with the admin's own page, in the user's language, and nothing changed
    assert navigation.value.status == 403
    header, title, explanation = REFUSAL[language]
    expect(page.locator("#site-name")).to_have_text(header)
    expect(page.locator("#content h1")).to_have_text(title)
    expect(page.locator("#content-main")).to_contain_text(explanation)
    expect(page.locator("#nav-sidebar")).to_be_visible()
    expect(page.locator(".breadcrumbs a")).to_have_attribute("href", "/admin/")
    with translation.override(language):
        expect(page).to_have_title(f"{title} | {translation.gettext('Usage limits')}")
    screenshot(page, "refused")
    limit = Limit.objects.get()
    assert (limit.warning, limit.blocked) == (100_000, 200_000)
