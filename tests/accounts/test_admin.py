"""The account admin: list, account page with limits and recipients, rules, history, rights."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.admin.models import LogEntry
from django.forms import CheckboxInput
from django.urls import reverse
from knox.models import AuthToken

from accounts.metrics import METRICS, MetricSpec
from accounts.models import Account, Limit, Plan, Recipient
from tests.factories import AccountFactory, LimitFactory, RecipientFactory, UserFactory

pytestmark = pytest.mark.django_db

WARNING_RULE = "At least one warning recipient is required when a warning threshold is set."
ORDER_RULE = "The warning threshold must be lower than the blocked threshold."
ENTERPRISE_RULE = "Limits can only be defined for an Enterprise account."


def change_url(account: Account) -> str:
    return reverse("admin:accounts_account_change", args=[account.pk])


def page_data(response) -> dict[str, str]:
    """What a browser would post back for the account page as shown, untouched."""
    forms = [response.context["adminform"].form]
    for inline in response.context["inline_admin_formsets"]:
        forms.append(inline.formset.management_form)
        forms.extend(inline.formset.forms)
    data: dict[str, str] = {}
    for form in forms:
        for name, field in form.fields.items():
            value = form[name].value()
            if isinstance(field.widget, CheckboxInput):
                if value:
                    data[form.add_prefix(name)] = "on"
            else:
                data[form.add_prefix(name)] = "" if value is None else str(value)
    return data


def add_recipient(data: dict[str, str], level: str, email: str, language: str = "") -> None:
    """Fill a new row of the recipients inline, as "Add another recipient" does."""
    index = int(data["recipients-TOTAL_FORMS"])
    for i in range(index):
        if not data.get(f"recipients-{i}-id") and not data.get(f"recipients-{i}-email"):
            index = i  # an empty extra row is on the page already: use it
            break
    else:
        data["recipients-TOTAL_FORMS"] = str(index + 1)
    data[f"recipients-{index}-level"] = level
    data[f"recipients-{index}-email"] = email
    data[f"recipients-{index}-language"] = language


def post_account_page(client, account: Account, **changes: Any):
    """Open the account page, apply ``changes`` (field name -> value), post it back."""
    data = page_data(client.get(change_url(account)))
    recipients = changes.pop("recipients", [])
    data.update({name: "" if value is None else str(value) for name, value in changes.items()})
    for recipient in recipients:
        add_recipient(data, *recipient)
    return client.post(change_url(account), data)


def inline_formset(response, prefix: str):
    """The formset of the inline whose prefix is ``prefix`` (``recipients``...)."""
    return next(
        inline.formset
        for inline in response.context["inline_admin_formsets"]
        if inline.formset.prefix == prefix
    )


def page_errors(response) -> dict[str, Any]:
    """The errors the page shows: on the account form, above and in the recipients inline."""
    formset = inline_formset(response, "recipients")
    return {
        "form": dict(response.context["adminform"].form.errors),
        "recipients": list(formset.non_form_errors()),
        "rows": [dict(errors) for errors in formset.errors if errors],
    }


@pytest.fixture
def manager_admin_client(client, manager):
    manager.is_staff = True  # the admin lets staff in only
    manager.save(update_fields=["is_staff"])
    client.force_login(manager)
    return client


# --- List ---


def test_changelist_lists_accounts_with_search_and_plan_filter(admin_client):
    # given
    AccountFactory(name="Acme", external_id="crm-acme", plan=Plan.ENTERPRISE)
    AccountFactory(name="Globex", external_id="crm-globex", plan=Plan.PRO)
    url = reverse("admin:accounts_account_changelist")
    # when
    listed = admin_client.get(url)
    searched = admin_client.get(url, {"q": "globex"})
    searched_by_id = admin_client.get(url, {"q": "crm-acme"})
    filtered = admin_client.get(url, {"plan__exact": "pro"})
    # then
    assert listed.status_code == 200
    assert [a.name for a in listed.context["cl"].result_list] == ["Acme", "Globex"]
    headers = [str(h["text"]).lower() for h in listed.context["result_headers"]]
    assert headers[1:5] == ["name", "external id", "plan", "status"]
    assert headers[5:] == [str(spec.label).lower() for spec in METRICS.values()]
    assert [a.name for a in searched.context["cl"].result_list] == ["Globex"]
    assert [a.name for a in searched_by_id.context["cl"].result_list] == ["Acme"]
    assert [a.name for a in filtered.context["cl"].result_list] == ["Globex"]


# --- Account page ---


@pytest.mark.parametrize(
    ("language", "expected"), [("en", ["Save", "Change account"]), ("fr", ["Enregistrer"])]
)
def test_account_page_renders_in_english_and_french(admin_client, language, expected):
    account = AccountFactory(name="Acme")
    response = admin_client.get(change_url(account), HTTP_ACCEPT_LANGUAGE=language)
    assert response.status_code == 200
    assert response.headers["Content-Language"] == language
    for text in expected:
        assert text in response.text
    assert 'name="limit_text_tokens_warning"' in response.text
    assert 'name="recipients-TOTAL_FORMS"' in response.text


def test_there_are_two_threshold_fields_per_metric(admin_client):
    response = admin_client.get(change_url(AccountFactory()))
    form = response.context["adminform"].form
    limit_fields = [name for name in form.fields if name.startswith("limit_")]
    assert len(limit_fields) == 2 * len(METRICS)
    assert limit_fields == [
        f"limit_{metric}_{level}" for metric in METRICS for level in ("warning", "blocked")
    ]


def test_a_fourth_metric_appears_on_the_account_page_without_admin_change(
    admin_client, monkeypatch
):
    monkeypatch.setitem(
        METRICS, "video_seconds", MetricSpec("video_seconds", "Video", "seconds", 3)
    )
    response = admin_client.get(change_url(AccountFactory()))
    form = response.context["adminform"].form
    assert len([name for name in form.fields if name.startswith("limit_")]) == 8
    assert 'name="limit_video_seconds_warning"' in response.text
    assert 'name="limit_video_seconds_blocked"' in response.text


def test_account_page_shows_the_current_limits_and_recipients(admin_client):
    account = AccountFactory()
    LimitFactory(account=account, metric="text_tokens", warning=100, blocked=200)
    RecipientFactory(account=account, level="warning", email="pm@example.com", language="fr")
    response = admin_client.get(change_url(account))
    form = response.context["adminform"].form
    assert form["limit_text_tokens_warning"].value() == 100
    assert form["limit_text_tokens_blocked"].value() == 200
    assert form["limit_audio_analyzed_seconds_warning"].value() is None
    assert 'value="pm@example.com"' in response.text


def test_saving_limits_and_recipients_stores_them_with_who_changed_them(admin_client, admin_user):
    # given
    account = AccountFactory(language="en")
    # when
    response = post_account_page(
        admin_client,
        account,
        limit_text_tokens_warning=100,
        limit_text_tokens_blocked=200,
        limit_audio_transcribed_seconds_blocked=3600,
        recipients=[("warning", "pm@example.com", "fr"), ("blocked", "ops@example.com")],
    )
    # then
    assert response.status_code == 302, page_errors(response)
    assert sorted(Limit.objects.values_list("metric", "warning", "blocked")) == [
        ("audio_transcribed_seconds", None, 3600),
        ("text_tokens", 100, 200),
    ]
    assert sorted(Recipient.objects.values_list("level", "email", "language")) == [
        ("blocked", "ops@example.com", "en"),  # blank language: the account's
        ("warning", "pm@example.com", "fr"),
    ]
    for history in (Limit.history, Recipient.history):
        assert {(r.history_user, r.history_change_reason) for r in history.all()} == {
            (admin_user, "admin")
        }
    account.refresh_from_db()
    assert account.limits_updated_at is not None


def test_a_removed_recipient_row_is_deleted(admin_client):
    account = AccountFactory()
    LimitFactory(account=account, metric="text_tokens", warning=None, blocked=200)
    RecipientFactory(account=account, level="blocked", email="ops@example.com")
    response = post_account_page(admin_client, account, **{"recipients-0-DELETE": "on"})
    assert response.status_code == 302, page_errors(response)
    assert not Recipient.objects.exists()
    assert Limit.objects.get().blocked == 200
    latest = admin_client.get(change_url(account)).context["limits_history"]["changes"][0]
    assert (latest.what, latest.old, latest.new) == (
        "Blocked recipient",
        "ops@example.com (English)",
        "—",
    )


def test_warning_threshold_without_recipient_is_refused_and_saves_nothing(admin_client):
    # given
    account = AccountFactory(name="Acme")
    # when
    response = post_account_page(
        admin_client, account, name="Acme renamed", limit_text_tokens_warning=100
    )
    # then
    assert response.status_code == 200
    assert WARNING_RULE in response.text
    # next to the threshold that needs it, at the top, and above the list that lacks it
    assert page_errors(response) == {
        "form": {"limit_text_tokens_warning": [WARNING_RULE], "__all__": [WARNING_RULE]},
        "recipients": [WARNING_RULE],
        "rows": [],
    }
    assert not Limit.objects.exists()
    account.refresh_from_db()
    assert account.name == "Acme"


def test_removing_the_last_warning_recipient_of_a_warning_threshold_is_refused(admin_client):
    account = AccountFactory()
    LimitFactory(account=account, metric="text_tokens", warning=100, blocked=200)
    RecipientFactory(account=account, level="warning", email="pm@example.com")
    response = post_account_page(admin_client, account, **{"recipients-0-DELETE": "on"})
    assert response.status_code == 200
    assert page_errors(response) == {
        "form": {"limit_text_tokens_warning": [WARNING_RULE], "__all__": [WARNING_RULE]},
        "recipients": [WARNING_RULE],
        "rows": [],
    }
    assert Recipient.objects.filter(email="pm@example.com").exists()


@pytest.mark.parametrize(("warning", "blocked"), [(200, 200), (300, 200)])
def test_warning_not_below_blocked_is_shown_on_the_warning_field(admin_client, warning, blocked):
    account = AccountFactory(name="Acme")
    response = post_account_page(
        admin_client,
        account,
        name="Acme renamed",
        limit_text_tokens_warning=warning,
        limit_text_tokens_blocked=blocked,
        recipients=[("warning", "pm@example.com")],
    )
    assert response.status_code == 200
    assert ORDER_RULE in response.text
    assert page_errors(response) == {
        "form": {"limit_text_tokens_warning": [ORDER_RULE]},
        "recipients": [],
        "rows": [],
    }
    assert not Limit.objects.exists()
    assert not Recipient.objects.exists()
    account.refresh_from_db()
    assert account.name == "Acme"


def test_negative_threshold_is_refused_on_its_field(admin_client):
    account = AccountFactory()
    response = post_account_page(admin_client, account, limit_text_tokens_blocked=-1)
    assert response.status_code == 200
    assert page_errors(response)["form"] == {
        "limit_text_tokens_blocked": ["Ensure this value is greater than or equal to 0."]
    }


def test_duplicate_address_is_refused_on_its_row(admin_client):
    account = AccountFactory()
    response = post_account_page(
        admin_client,
        account,
        recipients=[("warning", "pm@example.com"), ("warning", "PM@example.com")],
    )
    assert response.status_code == 200
    assert page_errors(response) == {
        "form": {},
        "recipients": [],
        "rows": [{"email": ["This address is already in the list."]}],
    }
    assert not Recipient.objects.exists()


def test_invalid_address_is_shown_once_on_its_row(admin_client):
    account = AccountFactory()
    response = post_account_page(admin_client, account, recipients=[("blocked", "not-an-address")])
    assert response.status_code == 200
    assert page_errors(response)["rows"] == [{"email": ["Enter a valid email address."]}]


def test_limits_on_a_non_enterprise_account_are_refused(admin_client):
    account = AccountFactory(plan=Plan.PRO)
    response = post_account_page(
        admin_client, account, limit_text_tokens_blocked=200, name="Renamed"
    )
    assert response.status_code == 200
    assert ENTERPRISE_RULE in response.text
    assert page_errors(response)["form"] == {"__all__": [ENTERPRISE_RULE]}
    assert not Limit.objects.exists()
    account.refresh_from_db()
    assert account.name != "Renamed"


def test_recipients_on_a_non_enterprise_account_are_refused(admin_client):
    account = AccountFactory(plan=Plan.PRO)
    response = post_account_page(admin_client, account, recipients=[("blocked", "a@example.com")])
    assert response.status_code == 200
    assert page_errors(response)["form"] == {"__all__": [ENTERPRISE_RULE]}
    assert not Recipient.objects.exists()


def test_non_enterprise_account_without_limits_is_saved(admin_client):
    account = AccountFactory(plan=Plan.PRO, name="Before")
    response = post_account_page(admin_client, account, name="After")
    assert response.status_code == 302, page_errors(response)
    account.refresh_from_db()
    assert account.name == "After"


def test_a_new_account_is_created_with_its_limits(admin_client, admin_user):
    # given
    url = reverse("admin:accounts_account_add")
    data = page_data(admin_client.get(url))
    data.update(
        name="Initech",
        external_id="crm-initech",
        timezone="Europe/Paris",
        language="fr",
        limit_text_tokens_warning="100",
    )
    add_recipient(data, "warning", "pm@example.com")
    # when
    response = admin_client.post(url, data)
    # then
    assert response.status_code == 302, page_errors(response)
    account = Account.objects.get(external_id="crm-initech")
    assert account.limits.get().warning == 100
    assert account.recipients.get().language == "fr"
    assert Limit.history.get().history_user == admin_user


def test_a_new_account_is_not_created_when_its_limits_are_refused(admin_client):
    url = reverse("admin:accounts_account_add")
    data = page_data(admin_client.get(url))
    data.update(name="Initech", external_id="crm-initech", limit_text_tokens_warning="100")
    response = admin_client.post(url, data)
    assert response.status_code == 200
    assert WARNING_RULE in response.text
    assert not Account.objects.exists()


# --- Account managers ---


def test_manager_edits_limits_but_not_the_account_fields(manager_admin_client, manager):
    # given
    account = AccountFactory(name="Acme")
    page = manager_admin_client.get(change_url(account))
    assert page.status_code == 200
    assert "name" not in page.context["adminform"].form.fields
    assert "limit_text_tokens_warning" in page.context["adminform"].form.fields
    assert '<div class="readonly">Acme</div>' in page.text
    # when
    data = page_data(page)
    data.update(name="Hacked", limit_text_tokens_warning="100")
    add_recipient(data, "warning", "pm@example.com")
    response = manager_admin_client.post(change_url(account), data)
    # then
    assert response.status_code == 302, page_errors(response)
    account.refresh_from_db()
    assert account.name == "Acme"
    assert Limit.objects.get().warning == 100
    assert Limit.history.get().history_user == manager
    assert not account.history.filter(history_type="~").exists()


def test_manager_cannot_add_or_delete_accounts(manager_admin_client):
    account = AccountFactory()
    assert manager_admin_client.get(reverse("admin:accounts_account_add")).status_code == 403
    delete = reverse("admin:accounts_account_delete", args=[account.pk])
    assert manager_admin_client.get(delete).status_code == 403


def test_manager_sees_past_versions_of_an_account_but_cannot_revert_to_one(
    manager_admin_client, admin_client
):
    # given: the CRM name changed once; the first version is the one a revert would restore
    account = AccountFactory(name="Acme", plan=Plan.ENTERPRISE)
    account.name = "Acme Corporation"
    account.save()
    version = account.history.earliest("history_date")
    url = reverse("admin:accounts_account_simple_history", args=[account.pk, version.history_id])
    form = admin_client.get(url).context["adminform"].form
    data = {name: "" if value is None else value for name, value in form.initial.items()}
    data["is_active"] = "on"
    # when
    page = manager_admin_client.get(url)
    response = manager_admin_client.post(url, data)
    # then
    assert page.status_code == 200
    assert page.context["revert_disabled"] is True
    assert "Revert" not in page.context["title"]
    assert response.status_code == 403
    account.refresh_from_db()
    assert account.name == "Acme Corporation"
    assert account.history.count() == 2
    assert not LogEntry.objects.exists()


def test_user_who_may_only_view_sees_limits_read_only(client):
    # given
    from django.contrib.auth.models import Permission

    viewer = UserFactory(is_staff=True)
    viewer.user_permissions.add(
        *Permission.objects.filter(codename__in=["view_account", "view_limit", "view_recipient"])
    )
    client.force_login(viewer)
    account = AccountFactory()
    LimitFactory(account=account, metric="text_tokens", warning=100, blocked=200)
    RecipientFactory(account=account, level="warning", email="pm@example.com")
    # when
    response = client.get(change_url(account))
    # then
    assert response.status_code == 200
    assert "limit_text_tokens_warning" not in response.context["adminform"].form.fields
    assert "<td>Text tokens</td><td>100 tokens</td><td>200 tokens</td>" in response.text
    assert "pm@example.com" in response.text
    assert client.post(change_url(account), {}).status_code == 403


# --- Change history ---


def test_change_history_shows_old_and_new_values_newest_first(admin_client):
    # given
    account = AccountFactory()
    post_account_page(
        admin_client,
        account,
        limit_text_tokens_warning=100,
        limit_text_tokens_blocked=200,
        recipients=[("warning", "pm@example.com", "en")],
    )
    # when
    post_account_page(admin_client, account, limit_text_tokens_warning=150)
    response = admin_client.get(change_url(account))
    # then
    changes = [
        (c.who, c.what, c.old, c.new, c.reason)
        for c in response.context["limits_history"]["changes"]
    ]
    assert changes == [
        ("admin", "Text tokens: warning threshold", "100 tokens", "150 tokens", "admin"),
        ("admin", "Warning recipient", "—", "pm@example.com (English)", "admin"),
        ("admin", "Text tokens: warning threshold", "unlimited", "100 tokens", "admin"),
        ("admin", "Text tokens: blocked threshold", "unlimited", "200 tokens", "admin"),
    ]
    assert "Change history of limits and recipients" in response.text
    assert "100 tokens → 150 tokens" in response.text


def test_change_history_is_bounded(admin_client):
    from usage.selectors import limits_history_list

    account = AccountFactory()
    limit = LimitFactory(account=account, metric="text_tokens", warning=None, blocked=1)
    for blocked in range(2, 8):
        limit.blocked = blocked
        limit.save()
    changes = limits_history_list(account=account, limit=3)
    assert [(c.old, c.new) for c in changes] == [
        ("6 tokens", "7 tokens"),
        ("5 tokens", "6 tokens"),
        ("4 tokens", "5 tokens"),
    ]


def test_account_history_page_works(admin_client):
    account = AccountFactory()
    url = reverse("admin:accounts_account_history", args=[account.pk])
    assert admin_client.get(url).status_code == 200


# --- API tokens (knox's own admin) ---


def test_tokens_are_listed_and_revoked_in_the_admin(admin_client):
    # given
    token, _key = AuthToken.objects.create(user=UserFactory(username="svc"), expiry=None)
    # when
    listed = admin_client.get(reverse("admin:knox_authtoken_changelist"))
    revoked = admin_client.post(
        reverse("admin:knox_authtoken_delete", args=[token.pk]), {"post": "yes"}
    )
    # then
    assert listed.status_code == 200
    assert "svc" in listed.text
    assert revoked.status_code == 302
    assert not AuthToken.objects.exists()
