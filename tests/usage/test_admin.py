"""The usage admin: status and usage bars on the accounts list, usage and extensions on the
account page, and the read-only lists of events, counters, extensions, repairs and purges."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.contrib.admin.models import LogEntry
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone
from django.utils.formats import date_format

from accounts.metrics import METRICS, MetricSpec
from accounts.models import Account, Plan
from notifications.models import Notification
from tests.accounts.test_admin import page_data
from tests.factories import AccountFactory, LimitFactory, RecipientFactory
from tests.usage.factories import event_record
from usage.models import CounterRepair, EventPurge, Extension, UsageEvent
from usage.selectors import current_period

pytestmark = pytest.mark.django_db

ACCOUNTS_URL = reverse("admin:accounts_account_changelist")
EVENTS_URL = reverse("admin:usage_usageevent_changelist")


def change_url(account: Account) -> str:
    return reverse("admin:accounts_account_change", args=[account.pk])


def used(account: Account, quantity, metric: str = "text_tokens") -> None:
    """Record usage in the account's current period."""
    event_record(account, timezone.now() - timedelta(seconds=1), quantity, metric)


def limited(name: str, warning: int | None = 800, blocked: int | None = 1000, **kwargs) -> Account:
    """An account with thresholds on text tokens (and the recipient a warning requires)."""
    account = AccountFactory(name=name, **kwargs)
    LimitFactory(account=account, metric="text_tokens", warning=warning, blocked=blocked)
    if warning is not None:
        RecipientFactory(account=account, level="warning")
    return account


def row_html(response, account: Account) -> str:
    """The HTML of the account's row in the list."""
    html = response.text
    start = html.index(f'href="{change_url(account)}"')
    return html[start : html.index("</tr>", start)]


def listed_names(response) -> list[str]:
    return [account.name for account in response.context["cl"].result_list]


@pytest.fixture
def manager_admin_client(client, manager):
    manager.is_staff = True  # the admin lets staff in only
    manager.save(update_fields=["is_staff"])
    client.force_login(manager)
    return client


# --- Accounts list ---


def test_list_shows_the_status_and_a_usage_bar_per_metric(admin_client):
    # given
    warned = limited("Warned")
    used(warned, 850)
    used(warned, "12.5", metric="audio_transcribed_seconds")
    blocked = limited("Blocked")
    used(blocked, 1000)
    calm = limited("Calm", warning=None)
    used(calm, 10)
    free = AccountFactory(name="Free", plan=Plan.PRO)

    # when
    response = admin_client.get(ACCOUNTS_URL)

    # then
    assert response.status_code == 200
    for header in ("Status", "Audio transcribed", "Audio analyzed", "Text tokens"):
        assert f">{header}</" in response.text
    warned_row = row_html(response, warned)
    assert 'class="usage-badge usage-badge-warning" title="Text tokens: Warning">Warning' in (
        warned_row
    )
    assert '<div class="usage-bar usage-warning"' in warned_row
    assert 'style="width: 85.0%"' in warned_row
    assert 'class="usage-bar-marker" style="left: 80.0%"' in warned_row
    assert '<div class="usage-bar-text">850 / 1,000 tokens</div>' in warned_row
    assert "12.5 s / unlimited" in warned_row
    assert "Text tokens: 850 tokens used of 1,000 tokens." in warned_row  # the tooltip
    blocked_row = row_html(response, blocked)
    assert "usage-badge-blocked" in blocked_row
    assert 'style="width: 100.0%"' in blocked_row
    assert "1,000 / 1,000 tokens" in blocked_row
    calm_row = row_html(response, calm)
    assert "usage-badge-ok" in calm_row
    assert "usage-bar-marker" not in calm_row  # no warning threshold to mark
    assert "10 / 1,000 tokens" in calm_row
    free_row = row_html(response, free)
    assert "usage-badge-ok" in free_row
    assert free_row.count(" / unlimited") == len(METRICS)
    assert "0 tokens / unlimited" in free_row
    assert "0 s / unlimited" in free_row


def test_a_bar_with_only_a_warning_threshold_goes_up_to_it(admin_client):
    account = limited("Acme", warning=200, blocked=None)
    used(account, 50)
    row = row_html(admin_client.get(ACCOUNTS_URL), account)
    assert "50 / 200" in row
    assert 'style="width: 25.0%"' in row


def test_an_extension_raises_the_bar_of_its_metric(admin_client):
    account = limited("Acme")
    used(account, 1200)
    Extension.objects.create(
        account=account,
        metric="text_tokens",
        period=current_period(account).first_day,
        amount=1000,
        reason="Launch",
    )
    row = row_html(admin_client.get(ACCOUNTS_URL), account)
    assert "1,200 / 2,000" in row
    assert "usage-badge-warning" in row
    assert 'style="left: 40.0%"' in row


def test_usage_of_the_previous_period_is_not_shown(admin_client):
    account = limited("Acme")
    last_month = current_period(account).previous.start + timedelta(days=2)
    event_record(account, last_month, 1000)
    row = row_html(admin_client.get(ACCOUNTS_URL), account)
    assert "usage-badge-ok" in row
    assert "0 / 1,000" in row


def test_a_fourth_metric_gets_its_column_without_admin_change(admin_client, monkeypatch):
    monkeypatch.setitem(
        METRICS, "video_seconds", MetricSpec("video_seconds", "Video", "seconds", 3)
    )
    account = AccountFactory()
    response = admin_client.get(ACCOUNTS_URL)
    assert 'class="column-usage_video_seconds"' in response.text
    assert row_html(response, account).count(" / unlimited") == 4


@pytest.mark.parametrize(
    "query", [{}, {"status": "warning"}, {"status": "ok"}, {"status": "blocked", "_facets": "1"}]
)
def test_the_list_costs_the_same_queries_for_1_and_30_accounts(admin_client, query):
    def queries_for_list() -> int:
        admin_client.get(ACCOUNTS_URL, query)  # warms the session and content types
        with CaptureQueriesContext(connection) as captured:
            response = admin_client.get(ACCOUNTS_URL, query)
        assert response.status_code == 200
        return len(captured)

    # given
    def account_with_usage(i: int) -> None:
        account = limited(f"Customer {i:02d}", timezone=["Europe/Paris", "America/New_York"][i % 2])
        used(account, 900)
        used(account, "1.5", metric="audio_analyzed_seconds")

    account_with_usage(0)
    # when
    one = queries_for_list()
    for i in range(1, 30):
        account_with_usage(i)
    thirty = queries_for_list()
    # then
    assert one == thirty
    if query.get("status") == "warning":
        assert listed_names(admin_client.get(ACCOUNTS_URL, query))[:2] == [
            "Customer 00",
            "Customer 01",
        ]


def test_status_filter_lists_the_accounts_of_each_status(admin_client):
    # given
    AccountFactory(name="No limits")
    below = limited("Below")
    used(below, 799)
    warned = limited("Warned")
    used(warned, 800)
    blocked = limited("Blocked")
    used(blocked, 1000)
    extended = limited("Extended")
    used(extended, 1000)
    Extension.objects.create(
        account=extended,
        metric="text_tokens",
        period=current_period(extended).first_day,
        amount=1,
        reason="Launch",
    )
    # Blocked on seconds, below the warning on tokens: the worst status counts.
    mixed = limited("Mixed")
    LimitFactory(account=mixed, metric="audio_analyzed_seconds", warning=None, blocked=60)
    used(mixed, "60.000", metric="audio_analyzed_seconds")
    # Far away: in Tokyo, the usage is in the account's current period too.
    tokyo = limited("Tokyo", timezone="Asia/Tokyo")
    used(tokyo, 900)

    # when
    by_status = {
        status: listed_names(admin_client.get(ACCOUNTS_URL, {"status": status}))
        for status in ("ok", "warning", "blocked")
    }

    # then
    assert by_status == {
        "ok": ["Below", "No limits"],
        "warning": ["Extended", "Tokyo", "Warned"],
        "blocked": ["Blocked", "Mixed"],
    }
    page = admin_client.get(ACCOUNTS_URL)
    for label in ("By usage status", "OK", "Warning", "Blocked"):
        assert label in page.text


def test_status_filter_counts_accounts_when_asked(admin_client):
    used(limited("Warned"), 800)
    used(limited("Blocked"), 1000)
    AccountFactory(name="No limits")
    response = admin_client.get(ACCOUNTS_URL, {"_facets": "1"})
    assert response.status_code == 200
    for choice in ("OK (1)", "Warning (1)", "Blocked (1)"):
        assert choice in response.text


def test_list_and_account_page_render_in_french(admin_client):
    account = limited("Acme")
    used(account, 850)
    for url in (ACCOUNTS_URL, change_url(account)):
        response = admin_client.get(url, HTTP_ACCEPT_LANGUAGE="fr")
        assert response.status_code == 200
        assert response.headers["Content-Language"] == "fr"
        assert "usage-badge-warning" in response.text


# --- Account page ---


def test_account_page_shows_the_current_usage_and_links_to_events(admin_client):
    # given
    account = limited("Acme", timezone="Europe/Paris")
    used(account, 850)
    used(account, "3600.5", metric="audio_transcribed_seconds")
    period = current_period(account)

    # when
    response = admin_client.get(change_url(account))

    # then
    assert response.status_code == 200
    section = response.context["current_usage"]
    month = date_format(period.first_day, "YEAR_MONTH_FORMAT")
    assert section["period"] == month
    assert section["zone"] == "Europe/Paris"
    assert [
        (r.label, r.used, r.warning, r.blocked, r.extension, r.effective_blocked, r.remaining)
        for r in section["rows"]
    ] == [
        (
            "Audio transcribed",
            "3,600.5 seconds (1 h)",
            "unlimited",
            "unlimited",
            "0 seconds",
            "unlimited",
            "—",
        ),
        ("Audio analyzed", "0 seconds", "unlimited", "unlimited", "0 seconds", "unlimited", "—"),
        (
            "Text tokens",
            "850 tokens",
            "800 tokens",
            "1,000 tokens",
            "0 tokens",
            "1,000 tokens",
            "150 tokens",
        ),
    ]
    html = response.text
    assert "Current period usage" in html
    assert f"Period {month}: from " in html
    assert "(Europe/Paris time)" in html
    assert '<div class="usage-bar-text">850 / 1,000 tokens</div>' in html
    assert "3,600.5 s / unlimited<br>" in html
    assert '<span class="usage-duration">1 h</span>' in html
    assert f'href="{EVENTS_URL}?account__id__exact={account.pk}"' in html
    assert "View usage events" in html
    counters_url = reverse("admin:usage_usagecounter_changelist")
    assert f'href="{counters_url}?account__id__exact={account.pk}"' in html
    # The limits history section is still there.
    assert "Change history of limits and recipients" in html


def test_account_page_shows_the_period_bounds_in_the_account_time_zone(admin_client):
    # Tokyo's midnight on the 1st is 15:00 the day before in UTC, the server's time zone.
    account = AccountFactory(timezone="Asia/Tokyo")
    period = current_period(account)
    section = admin_client.get(change_url(account)).context["current_usage"]
    for bound, moment in ((section["start"], period.start), (section["end"], period.end)):
        assert re.fullmatch(rf"\S+ 1, {moment.year}, midnight", bound), bound


def test_manager_sees_the_usage_section_and_lists(manager_admin_client):
    account = limited("Acme")
    used(account, 850)
    response = manager_admin_client.get(change_url(account))
    assert response.status_code == 200
    assert "Current period usage" in response.text
    assert f"{EVENTS_URL}?account__id__exact={account.pk}" in response.text
    assert "usage-badge-warning" in row_html(manager_admin_client.get(ACCOUNTS_URL), account)
    for model in ("usageevent", "usagecounter", "extension"):
        url = reverse(f"admin:usage_{model}_changelist")
        assert manager_admin_client.get(url).status_code == 200, model


# --- Extensions on the account page ---


def line_choices(page) -> dict[str, str]:
    """The lines a new extension row offers, by their words: words -> posted value."""
    formsets = [i.formset for i in page.context["inline_admin_formsets"]]
    formset = next(f for f in formsets if f.model is Extension)
    return {str(words): value for value, words in formset.empty_form.fields["line"].choices}


def add_extension(data: dict[str, str], page, line: str, amount, reason: str) -> None:
    """Fill a new row of the extensions inline, as "Add another extension" does, choosing
    the line by its words as shown on ``page``."""
    index = int(data["extensions-TOTAL_FORMS"])
    data["extensions-TOTAL_FORMS"] = str(index + 1)
    data[f"extensions-{index}-line"] = line_choices(page)[line]
    data[f"extensions-{index}-amount"] = str(amount)
    data[f"extensions-{index}-reason"] = reason


def extension_errors(response) -> list:
    formsets = [i.formset for i in response.context["inline_admin_formsets"]]
    formset = next(f for f in formsets if f.model is Extension)
    return [dict(errors) for errors in formset.errors if errors]


def test_granting_an_extension_on_the_account_page_raises_the_threshold(admin_client, admin_user):
    # given
    account = limited("Acme")
    used(account, 1200)  # past the blocked threshold: notified at 1,000
    Extension.objects.create(
        account=account,
        metric="text_tokens",
        period=current_period(account).previous.first_day,
        amount=7,
        reason="Old",
    )
    page = admin_client.get(change_url(account))
    data = page_data(page)
    add_extension(data, page, "Text tokens, Calendar month", 100, "  Launch week ")

    # when
    response = admin_client.post(change_url(account), data)

    # then
    assert response.status_code == 302
    extension = Extension.objects.get(reason="Launch week")
    assert (extension.metric, extension.amount, extension.period, extension.granted_by) == (
        "text_tokens",
        100,
        current_period(account).first_day,
        admin_user,
    )
    page = admin_client.get(change_url(account))
    tokens = page.context["current_usage"]["rows"][-1]
    assert (tokens.extension, tokens.effective_blocked, tokens.remaining) == (
        "100 tokens",
        "1,100 tokens",
        "0 tokens",
    )
    # Still past the raised threshold: notified again, at the new threshold.
    blocked = Notification.objects.filter(account=account, level="blocked")
    assert sorted(blocked.values_list("threshold", flat=True)) == [1000, 1100]
    # Granted extensions are listed read-only, with their period.
    inline = page.text[page.text.index('id="extensions-group"') :]
    inline = inline[: inline.index('id="extensions-empty"')]  # the template of a new row
    periods = re.findall(r'class="field-period_display">\s*<p>([^<]*)</p>', inline)
    current, previous = current_period(account), current_period(account).previous
    month = date_format(current.first_day, "YEAR_MONTH_FORMAT")
    assert periods == [month, date_format(previous.first_day, "YEAR_MONTH_FORMAT")]
    assert 'name="extensions-0-amount"' not in inline
    # The admin's log says what was added.
    entry = LogEntry.objects.get(object_id=str(account.pk))
    assert entry.get_change_message() == (f"Added extension “Text tokens: +100 tokens ({month})”.")


@pytest.mark.parametrize(
    ("plan", "amount", "reason", "errors"),
    [
        (Plan.ENTERPRISE, 0, "Launch", [{"amount": ["Ensure this value is greater than 0."]}]),
        (Plan.ENTERPRISE, -3, "Launch", [{"amount": ["Ensure this value is greater than 0."]}]),
        (Plan.ENTERPRISE, "1.5", "Launch", [{"amount": ["Enter a whole number."]}]),
        (Plan.ENTERPRISE, 10, " ", [{"reason": ["This field is required."]}]),
        (
            Plan.PRO,
            10,
            "Launch",
            [{"__all__": ["Extensions can only be granted to an Enterprise account."]}],
        ),
    ],
)
def test_an_invalid_extension_is_shown_on_its_row_and_saves_nothing(
    admin_client, plan, amount, reason, errors
):
    # given
    account = limited("Acme", plan=plan)
    page = admin_client.get(change_url(account))
    data = page_data(page)
    data["name"] = "Renamed"
    add_extension(data, page, "Text tokens, Calendar month", amount, reason)

    # when
    response = admin_client.post(change_url(account), data)

    # then
    assert response.status_code == 200
    assert extension_errors(response) == errors
    assert not Extension.objects.exists()
    account.refresh_from_db()
    assert account.name == "Acme"


def test_manager_grants_an_extension(manager_admin_client, manager):
    account = limited("Acme")
    page = manager_admin_client.get(change_url(account))
    data = page_data(page)
    add_extension(data, page, "Text tokens, Calendar month", 500, "Launch")
    response = manager_admin_client.post(change_url(account), data)
    assert response.status_code == 302
    assert Extension.objects.get().granted_by == manager


def test_no_extension_on_the_new_account_page(admin_client):
    response = admin_client.get(reverse("admin:accounts_account_add"))
    assert response.status_code == 200
    assert "extensions-TOTAL_FORMS" not in response.text
    assert "current_usage" not in response.context


# --- Usage lists ---


def test_event_list_shows_quantities_and_filters_by_account(admin_client):
    # given
    acme = AccountFactory(name="Acme", external_id="crm-acme")
    globex = AccountFactory(name="Globex")
    event_record(acme, timezone.now(), 1234, event_id="tok-1")
    event_record(acme, timezone.now(), "12.5", "audio_analyzed_seconds", event_id="sec-1")
    event_record(globex, timezone.now(), 5, event_id="tok-2")

    # when
    listed = admin_client.get(EVENTS_URL)
    filtered = admin_client.get(EVENTS_URL, {"account__id__exact": str(acme.pk)})
    by_metric = admin_client.get(EVENTS_URL, {"metric__exact": "audio_analyzed_seconds"})
    searched = admin_client.get(EVENTS_URL, {"q": "tok-2"})
    unknown = admin_client.get(EVENTS_URL, {"account__id__exact": "not-a-uuid"})

    # then
    assert listed.status_code == 200
    assert [e.event_id for e in listed.context["cl"].result_list] == ["tok-2", "sec-1", "tok-1"]
    assert '<td class="field-quantity_display">1,234 tokens</td>' in listed.text
    assert '<td class="field-quantity_display">12.5 seconds</td>' in listed.text
    assert ".500" not in listed.text
    assert [e.event_id for e in filtered.context["cl"].result_list] == ["sec-1", "tok-1"]
    assert "Acme (crm-acme)" in filtered.text  # the filter says which account
    assert [e.event_id for e in by_metric.context["cl"].result_list] == ["sec-1"]
    assert [e.event_id for e in searched.context["cl"].result_list] == ["tok-2"]
    assert list(unknown.context["cl"].result_list) == []


def test_event_list_does_not_count_the_whole_table(admin_client):
    event_record(AccountFactory(), timezone.now(), 1)
    response = admin_client.get(EVENTS_URL)
    assert response.context["cl"].full_result_count is None


def test_events_are_read_only(admin_client):
    # given
    account = AccountFactory()
    event_record(account, timezone.now(), 1, event_id="evt-a")
    event = UsageEvent.objects.get()
    add_url = reverse("admin:usage_usageevent_add")
    change = reverse("admin:usage_usageevent_change", args=[event.pk])
    delete = reverse("admin:usage_usageevent_delete", args=[event.pk])

    # when
    listed = admin_client.get(EVENTS_URL)
    posted = admin_client.post(add_url, {"event_id": "forged", "account": str(account.pk)})
    viewed = admin_client.get(change)
    changed = admin_client.post(change, {"event_id": "changed"})

    # then
    assert listed.status_code == 200
    assert add_url not in listed.text
    assert posted.status_code == 403
    assert viewed.status_code == 200
    assert 'name="event_id"' not in viewed.text
    assert changed.status_code == 403
    assert admin_client.post(delete, {"post": "yes"}).status_code == 403
    assert UsageEvent.objects.get().event_id == "evt-a"


def test_the_other_usage_lists_render_read_only(admin_client):
    # given
    account = AccountFactory(name="Acme")
    event_record(account, timezone.now(), "2.5", "audio_transcribed_seconds")
    day = timezone.localdate()
    Extension.objects.create(
        account=account, metric="text_tokens", period=day.replace(day=1), amount=5, reason="x"
    )
    CounterRepair.objects.create(
        account=account,
        metric="audio_transcribed_seconds",
        day=day,
        found_milli=1000,
        expected_milli=2500,
        repaired_by="counters_rebuild",
    )
    EventPurge.objects.create(before=day, deleted=42)

    # when / then
    expected = {
        "usagecounter": '<td class="field-quantity_display">2.5 seconds</td>',
        "extension": (
            f'<td class="field-period_display">{date_format(day, "YEAR_MONTH_FORMAT")}</td>'
            '<td class="field-amount_display">5 tokens</td>'
        ),
        "counterrepair": (
            '<td class="field-found_display">1 second</td>'
            '<td class="field-expected_display">2.5 seconds</td>'
        ),
        "eventpurge": '<td class="field-deleted">42</td>',
    }
    for model, text in expected.items():
        response = admin_client.get(reverse(f"admin:usage_{model}_changelist"))
        assert response.status_code == 200, model
        assert text in response.text, model
        assert reverse(f"admin:usage_{model}_add") not in response.text, model
    filtered = admin_client.get(
        reverse("admin:usage_usagecounter_changelist"), {"account__id__exact": str(account.pk)}
    )
    assert len(filtered.context["cl"].result_list) == 1


def test_ops_tables_are_for_superusers_not_account_managers(manager):
    for permission in ("usage.view_eventpurge", "usage.view_counterrepair"):
        assert not manager.has_perm(permission), permission
