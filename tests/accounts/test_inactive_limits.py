"""Only Enterprise accounts are limited: the limits of an account on another plan are kept
but inactive (unlimited everywhere, nothing blocks or notifies) until it is back on Enterprise."""

from __future__ import annotations

import itertools
import json
from io import StringIO

import pytest
from django.contrib.auth.models import Permission
from django.core import mail
from django.core.management import call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from accounts.metrics import METRICS
from accounts.models import Account, Limit, Plan, Recipient
from accounts.selectors import limits_document_get
from accounts.services import AccountNotEnterprise
from backoffice.services import account_upsert, limits_patch, limits_replace, usage_events_record
from notifications.models import Delivery, Notification
from notifications.services import thresholds_evaluate
from tests.accounts.test_admin import ENTERPRISE_RULE, page_data, page_errors, post_account_page
from tests.factories import AccountFactory, UserFactory
from tests.notifications.factories import usage_already_counted
from tests.usage.factories import event_body
from usage.models import Extension
from usage.selectors import current_period

LIMITS = {
    "limits": {"text_tokens": {"warning": 800, "blocked": 1000}},
    "recipients": {
        "warning": [{"email": "pm@example.com", "language": "en"}],
        "blocked": [{"email": "ops@example.com", "language": "fr"}],
    },
}
_event_ids = itertools.count(1)
ACCOUNTS_URL = reverse("admin:accounts_account_changelist")
INACTIVE_NOTE = "These limits are inactive: only Enterprise accounts are limited."
INACTIVE_NOTE_FR = "Ces limites sont inactives : seuls les comptes Enterprise sont limités."


@pytest.fixture(autouse=True)
def _anymail_test_backend(settings) -> None:
    settings.EMAIL_BACKEND = "anymail.backends.test.EmailBackend"


def former_enterprise(name: str = "Acme", external_id: str = "crm-acme") -> Account:
    """An account given limits while on Enterprise, then moved to Pro by the CRM sync."""
    account = AccountFactory(name=name, external_id=external_id, plan=Plan.ENTERPRISE)
    limits_replace(account=account, data=LIMITS)
    account_upsert(external_id=external_id, name=name, plan=Plan.PRO)
    account.refresh_from_db()
    assert account.plan == Plan.PRO
    return account


def batch(account: Account, *quantities: int) -> dict:
    """A batch of text-token events occurring now (``occurred_at`` left to its default)."""
    events = [
        {
            "event_id": f"evt-{next(_event_ids)}",
            "account": str(account.pk),
            "metric": "text_tokens",
            "quantity": quantity,
        }
        for quantity in quantities
    ]
    return {"events": events}


def stored_limits(account: Account) -> dict:
    return limits_document_get(account=account).as_data()


def run(*args: str) -> list[str]:
    out = StringIO()
    call_command(*args, stdout=out, stderr=StringIO())
    return out.getvalue().splitlines()


# --- API ---


@pytest.mark.django_db
def test_an_account_that_left_enterprise_keeps_its_limits_but_reads_unlimited(
    service_client, manager_client
):
    # given
    account = former_enterprise()
    Extension.objects.create(
        account=account,
        metric="text_tokens",
        period=current_period(account).first_day,
        amount=50,
        reason="Granted while on Enterprise",
    )
    usage_events_record(payload=batch(account, 1200))
    # when
    usage = service_client.get(f"/api/v1/accounts/{account.pk}/usage/")
    limits = manager_client.get(f"/api/v1/accounts/{account.pk}/limits/")
    # then
    assert usage.status_code == 200
    body = usage.json()
    assert body["has_remaining_capacity"] is True
    assert body["metrics"][2] == {
        "metric": "text_tokens",
        "unit": "tokens",
        "used": 1200,
        "warning_threshold": None,
        "blocked_threshold": None,
        "extension": 50,
        "remaining": None,
        "status": "ok",
        "is_within_budget": True,
    }
    assert limits.status_code == 409
    assert limits.json() == {
        "detail": "Limits can only be defined for an Enterprise account.",
        "code": "not_enterprise",
    }
    kept = stored_limits(account)
    assert kept["limits"]["text_tokens"] == {"warning": 800, "blocked": 1000}
    assert kept["recipients"] == LIMITS["recipients"]


@pytest.mark.django_db
@pytest.mark.parametrize("quantity", [0, 500])
def test_the_pre_flight_check_allows_an_account_that_left_enterprise(service_client, quantity):
    # given: past the stored blocked threshold (1000)
    account = former_enterprise()
    usage_events_record(payload=batch(account, 1200))
    # when
    response = service_client.post(
        f"/api/v1/accounts/{account.pk}/usage/check/",
        {"metric": "text_tokens", "quantity": quantity},
        format="json",
    )
    # then
    assert response.status_code == 200
    assert response.json() == {
        "allowed": True,
        "metric": "text_tokens",
        "used": 1200,
        "remaining": None,
        "status": "ok",
        "lines": [
            {
                "period": "month",
                "window_days": None,
                "labels": {},
                "used": 1200,
                "remaining": None,
                "status": "ok",
                "allowed": True,
            }
        ],
    }


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_ingestion_past_the_stored_thresholds_of_an_account_that_left_enterprise_is_ok(
    service_client,
):
    # given
    account = former_enterprise()
    # when: one batch past the stored warning (800) and blocked (1000) thresholds
    response = service_client.post("/api/v1/usage/events/", batch(account, 600, 600), format="json")
    # then
    assert response.status_code == 201
    assert response.json() == {
        "accepted": 2,
        "duplicates": 0,
        "usage": [
            {
                "account": str(account.pk),
                "metric": "text_tokens",
                "used": 1200,
                "status": "ok",
                "remaining": None,
                "is_within_budget": True,
            }
        ],
    }
    assert not Notification.objects.exists()
    assert mail.outbox == []


@pytest.mark.django_db
@pytest.mark.parametrize("others", [0, 10], ids=["few accounts", "many accounts"])
def test_a_batch_answers_the_thresholds_of_enterprise_accounts_only(service_client, others):
    # given: an account that left Enterprise and one on it, with the same stored limits,
    # and other accounts (a batch answering 36 pairs reads the limits joined, one of 6 per pair)
    former = former_enterprise()
    current = AccountFactory(name="Current", external_id="crm-current", plan=Plan.ENTERPRISE)
    limits_replace(account=current, data=LIMITS)
    named = [former, current, *AccountFactory.create_batch(others, plan=Plan.ENTERPRISE)]
    events = [
        event_body(account, f"evt-{next(_event_ids)}", metric, 900)
        for account in named
        for metric in METRICS
    ]
    # when
    response = service_client.post("/api/v1/usage/events/", {"events": events}, format="json")
    # then
    assert response.status_code == 201, response.json()
    answered = {(row["account"], row["metric"]): row for row in response.json()["usage"]}
    assert len(answered) == len(named) * 3
    assert answered[(str(former.pk), "text_tokens")] == {
        "account": str(former.pk),
        "metric": "text_tokens",
        "used": 900,
        "status": "ok",
        "remaining": None,
        "is_within_budget": True,
    }
    assert answered[(str(current.pk), "text_tokens")] == {
        "account": str(current.pk),
        "metric": "text_tokens",
        "used": 900,
        "status": "warning",
        "remaining": 100,
        "is_within_budget": True,
    }
    assert answered[(str(current.pk), "audio_analyzed_seconds")]["remaining"] is None


@pytest.mark.django_db
def test_usage_report_shows_an_account_that_left_enterprise_unlimited():
    account = former_enterprise()
    usage_events_record(payload=batch(account, 1200))
    [line] = [
        row
        for row in json.loads("\n".join(run("usage_report", "crm-acme", "--format", "json")))
        if row["metric"] == "text_tokens"
    ]
    assert (line["used"], line["warning"], line["blocked"]) == (1200, None, None)
    assert (line["remaining"], line["status"]) == (None, "ok")


# --- Notifications ---


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_the_sweep_ignores_the_stored_limits_of_an_account_that_left_enterprise():
    # given: usage past both stored thresholds, never evaluated
    with CaptureQueriesContext(connection) as nothing_to_sweep:
        thresholds_evaluate()
    account = former_enterprise()
    usage_already_counted(account, 1200)
    # when
    with CaptureQueriesContext(connection) as sweep:
        swept = thresholds_evaluate()
    lines = run("evaluate_thresholds")
    lines_for_it = run("evaluate_thresholds", "--account", "crm-acme")
    # then
    assert swept == []
    assert len(sweep) == len(nothing_to_sweep)  # not even its usage is read
    assert lines == lines_for_it == ["0 notification(s) created."]
    assert not Notification.objects.exists()
    assert mail.outbox == []


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_inactive_limits_may_be_kept_or_cleared_never_set_and_notify_nothing():
    # given
    account = former_enterprise()
    usage_already_counted(account, 1200)
    # when: clearing the warning threshold keeps the blocked one, inactive
    limits_patch(account=account, data={"limits": {"text_tokens": {"warning": None}}})
    # then
    assert stored_limits(account)["limits"]["text_tokens"] == {"warning": None, "blocked": 1000}
    assert not Notification.objects.exists()
    assert mail.outbox == []
    # and raising a threshold, or adding a recipient, is setting limits: refused
    with pytest.raises(AccountNotEnterprise):
        limits_patch(account=account, data={"limits": {"text_tokens": {"blocked": 2000}}})
    with pytest.raises(AccountNotEnterprise):
        limits_patch(
            account=account,
            data={
                "recipients": {
                    "blocked": [*LIMITS["recipients"]["blocked"], {"email": "new@example.com"}]
                }
            },
        )
    assert stored_limits(account)["limits"]["text_tokens"] == {"warning": None, "blocked": 1000}
    assert Recipient.objects.filter(account=account).count() == 2


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_send_test_notification_of_an_account_that_left_enterprise_uses_sample_figures():
    former_enterprise()
    run(
        "send_test_notification",
        "crm-acme",
        "--level=warning",
        "--language=en",
        "--to=ops@example.com",
    )
    notification = Notification.objects.get()
    assert (notification.is_test, notification.threshold) == (True, 1_000_000)
    assert notification.used_milli == 800_000_000


# --- Back on Enterprise ---


def ledger(account: Account) -> list[tuple[str, int]]:
    return sorted(
        Notification.objects.filter(account=account, is_test=False).values_list(
            "level", "threshold"
        )
    )


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_back_on_enterprise_through_the_crm_sync_the_limits_apply_at_once(service_client):
    # given: usage past both stored thresholds while on Pro, notifying nobody
    account = former_enterprise()
    usage_events_record(payload=batch(account, 1200))
    assert ledger(account) == []
    # when
    account_upsert(external_id="crm-acme", name="Acme", plan=Plan.ENTERPRISE)
    # then: each threshold reached notifies at once, and once only
    assert ledger(account) == [("blocked", 1000), ("warning", 800)]
    account_upsert(external_id="crm-acme", name="Acme", plan=Plan.ENTERPRISE)
    assert thresholds_evaluate() == []
    assert ledger(account) == [("blocked", 1000), ("warning", 800)]
    assert sorted((m.to[0], m.extra_headers["X-Usage-Level"]) for m in mail.outbox) == [
        ("ops@example.com", "blocked"),
        ("pm@example.com", "warning"),
    ]
    # and the account is blocked again
    check = service_client.post(
        f"/api/v1/accounts/{account.pk}/usage/check/", {"metric": "text_tokens"}, format="json"
    )
    assert check.json() == {
        "allowed": False,
        "metric": "text_tokens",
        "used": 1200,
        "remaining": 0,
        "status": "blocked",
        "lines": [
            {
                "period": "month",
                "window_days": None,
                "labels": {},
                "used": 1200,
                "remaining": 0,
                "status": "blocked",
                "allowed": False,
            }
        ],
    }


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_a_plan_change_and_its_notifications_are_one_transaction(monkeypatch):
    account = former_enterprise()
    usage_already_counted(account, 900)

    def fail(**kwargs):
        raise RuntimeError("the database went away")

    monkeypatch.setattr("backoffice.services.thresholds_evaluate", fail)
    with pytest.raises(RuntimeError):
        account_upsert(external_id="crm-acme", name="Acme", plan=Plan.ENTERPRISE)
    account.refresh_from_db()
    assert account.plan == Plan.PRO


# --- Admin ---


@pytest.mark.django_db
def test_the_list_shows_an_account_that_left_enterprise_ok_and_unlimited(admin_client):
    # given
    account = former_enterprise()
    usage_events_record(payload=batch(account, 1200))
    # when
    response = admin_client.get(ACCOUNTS_URL)
    # then
    html = response.text
    start = html.index(f'href="{reverse("admin:accounts_account_change", args=[account.pk])}"')
    row = html[start : html.index("</tr>", start)]
    assert "usage-badge-ok" in row
    assert "usage-badge-blocked" not in row
    assert "1,200 tokens / unlimited" in row
    assert "usage-bar-fill" not in row


@pytest.mark.django_db
def test_the_status_filter_lists_an_account_that_left_enterprise_as_ok(admin_client):
    # given: both past their blocked threshold (1000)
    account = former_enterprise(name="Former")
    usage_events_record(payload=batch(account, 1200))
    enterprise = AccountFactory(name="Still enterprise")
    limits_replace(account=enterprise, data=LIMITS)
    usage_events_record(payload=batch(enterprise, 1200))
    # when
    by_status = {
        status: [
            a.name
            for a in admin_client.get(ACCOUNTS_URL, {"status": status}).context["cl"].result_list
        ]
        for status in ("ok", "warning", "blocked")
    }
    # then
    assert by_status == {"ok": ["Former"], "warning": [], "blocked": ["Still enterprise"]}


@pytest.mark.django_db
@pytest.mark.parametrize(("language", "note"), [("en", INACTIVE_NOTE), ("fr", INACTIVE_NOTE_FR)])
def test_the_account_page_says_the_limits_are_inactive(admin_client, language, note):
    account = former_enterprise()
    enterprise = AccountFactory()
    url = reverse("admin:accounts_account_change", args=[account.pk])
    response = admin_client.get(url, HTTP_ACCEPT_LANGUAGE=language)
    assert response.status_code == 200
    assert note in response.text
    # the stored thresholds are shown where they are edited
    assert page_data(response)["limit_text_tokens_blocked"] == "1000"
    other = admin_client.get(
        reverse("admin:accounts_account_change", args=[enterprise.pk]),
        HTTP_ACCEPT_LANGUAGE=language,
    )
    assert note not in other.text


@pytest.mark.django_db
def test_the_read_only_limits_say_they_are_inactive(client):
    # given: a user who may see limits but not change them
    viewer = UserFactory(username="viewer", is_staff=True)
    viewer.user_permissions.add(
        *Permission.objects.filter(codename__in=["view_account", "view_limit"])
    )
    client.force_login(viewer)
    account = former_enterprise()
    # when
    response = client.get(reverse("admin:accounts_account_change", args=[account.pk]))
    # then
    assert response.status_code == 200
    assert "limit_text_tokens_blocked" not in response.text
    assert INACTIVE_NOTE in response.text


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_leaving_enterprise_in_the_admin_keeps_the_limits_inactive(admin_client):
    # given: past both thresholds, already notified while on Enterprise
    account = AccountFactory(name="Acme", plan=Plan.ENTERPRISE)
    limits_replace(account=account, data=LIMITS)
    usage_events_record(payload=batch(account, 1200))
    notified = ledger(account)
    kept = stored_limits(account)
    # when
    left = post_account_page(admin_client, account, plan=Plan.PRO)
    renamed = post_account_page(admin_client, account, name="Acme Pro")
    changed = post_account_page(admin_client, account, limit_text_tokens_blocked=5000)
    cleared = post_account_page(admin_client, account, limit_text_tokens_warning=None)
    # then
    assert left.status_code == 302, page_errors(left)
    assert renamed.status_code == 302, page_errors(renamed)
    assert changed.status_code == 200
    assert page_errors(changed)["form"] == {"__all__": [ENTERPRISE_RULE]}
    assert cleared.status_code == 302, page_errors(cleared)
    account.refresh_from_db()
    assert (account.plan, account.name) == (Plan.PRO, "Acme Pro")
    assert stored_limits(account) == kept | {
        "limits": {**kept["limits"], "text_tokens": {"warning": None, "blocked": 1000}}
    }
    assert Limit.objects.filter(account=account).count() == 1
    assert ledger(account) == notified == [("blocked", 1000), ("warning", 800)]


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_back_on_enterprise_in_the_admin_the_limits_apply_at_once(admin_client):
    # given
    account = former_enterprise()
    usage_already_counted(account, 900)
    # when
    response = post_account_page(admin_client, account, plan=Plan.ENTERPRISE)
    again = post_account_page(admin_client, account, name="Acme Corp")
    # then
    assert response.status_code == 302, page_errors(response)
    assert again.status_code == 302, page_errors(again)
    assert ledger(account) == [("warning", 800)]
    assert [m.to for m in mail.outbox] == [["pm@example.com"]]
    assert Delivery.objects.get().status == Delivery.Status.SENT


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_back_on_enterprise_and_new_limits_at_once_notify_only_the_new_ones(admin_client):
    # given: past the stored blocked threshold (1000)
    account = former_enterprise()
    usage_events_record(payload=batch(account, 1200))
    # when: the new contract raises the cap on the same page
    response = post_account_page(
        admin_client,
        account,
        plan=Plan.ENTERPRISE,
        limit_text_tokens_warning=1100,
        limit_text_tokens_blocked=2000,
    )
    # then
    assert response.status_code == 302, page_errors(response)
    assert ledger(account) == [("warning", 1100)]


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_reverting_an_account_to_an_enterprise_version_applies_its_limits(admin_client):
    # given
    account = former_enterprise()
    usage_already_counted(account, 900)
    version = account.history.filter(plan=Plan.ENTERPRISE).earliest("history_date")
    url = reverse("admin:accounts_account_simple_history", args=[account.pk, version.history_id])
    form = admin_client.get(url).context["adminform"].form
    data = {name: "" if value is None else value for name, value in form.initial.items()}
    data["is_active"] = "on"
    # when
    response = admin_client.post(url, data)
    # then
    assert response.status_code == 302
    account.refresh_from_db()
    assert account.plan == Plan.ENTERPRISE
    assert ledger(account) == [("warning", 800)]
