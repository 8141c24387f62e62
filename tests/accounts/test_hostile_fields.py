"""Hostile values in the fields of the limits document: a 400 keyed by the field, always a
JSON object, never a 500, nothing stored; the admin, the API and ``set_limits`` agree."""

from __future__ import annotations

from io import StringIO

import pytest
from django.core.exceptions import ValidationError
from django.core.management import call_command
from django.core.management.base import CommandError

from accounts.metrics import METRICS
from accounts.models import Account, Limit, Recipient, validate_recipient_email
from tests.accounts.test_admin import page_errors, post_account_page
from tests.factories import AccountFactory

pytestmark = pytest.mark.django_db

MSG_INVALID_EMAIL = "Enter a valid email address."
# 64 characters before the @ (the most RFC 5321 allows), labels of 63 (the most DNS allows).
ADDRESS_255 = "a" * 64 + "@" + "b" * 63 + "." + "c" * 63 + "." + "d" * 58 + ".com"
ADDRESS_254 = "a" * 64 + "@" + "b" * 63 + "." + "c" * 63 + "." + "d" * 57 + ".com"
MSG_TOO_LONG = "Ensure this value has at most 254 characters (it has 255)."


def limits_url(account: Account) -> str:
    return f"/api/v1/accounts/{account.pk}/limits/"


def nothing_stored() -> bool:
    return not Limit.objects.exists() and not Recipient.objects.exists()


def warning_document(recipient: dict) -> dict:
    return {
        "limits": {"text_tokens": {"warning": 10, "blocked": 20}},
        "recipients": {"warning": [recipient]},
    }


# --- Recipient addresses: at most 254 characters, a domain with a dot -------------------

BAD_ADDRESSES = [
    (ADDRESS_255, MSG_TOO_LONG),
    ("a@localhost", MSG_INVALID_EMAIL),
    ("ops@intranet", MSG_INVALID_EMAIL),
    ("a@[IPv6:::1]", MSG_INVALID_EMAIL),
    ("a@[::1]", MSG_INVALID_EMAIL),
    ("a" * 300 + "@example.com", "Ensure this value has at most 254 characters (it has 312)."),
]


def test_the_addresses_of_the_tests_have_the_lengths_they_say():
    assert (len(ADDRESS_255), len(ADDRESS_254)) == (255, 254)


@pytest.mark.parametrize(("email", "message"), BAD_ADDRESSES)
@pytest.mark.parametrize("method", ["put", "patch"])
def test_the_api_refuses_a_recipient_address_too_long_or_without_a_dotted_domain(
    manager_client, method, email, message
):
    # given
    account = AccountFactory()
    # when
    response = getattr(manager_client, method)(
        limits_url(account), warning_document({"email": email, "language": "en"}), format="json"
    )
    # then
    assert response.status_code == 400
    assert response.json() == {"recipients": {"warning": {"0": {"email": [message]}}}}
    assert nothing_stored()


def test_the_api_takes_an_address_of_254_characters(manager_client):
    account = AccountFactory()
    response = manager_client.put(
        limits_url(account), warning_document({"email": ADDRESS_254}), format="json"
    )
    assert response.status_code == 200, response.content
    assert Recipient.objects.get().email == ADDRESS_254


@pytest.mark.parametrize(("email", "message"), BAD_ADDRESSES)
def test_set_limits_refuses_the_same_addresses_in_one_line(email, message):
    AccountFactory(external_id="crm-1")
    with pytest.raises(CommandError) as refused:
        call_command(
            "set_limits",
            "crm-1",
            "--warning-recipient",
            f"{email}:fr",
            stdout=StringIO(),
            stderr=StringIO(),
        )
    assert str(refused.value) == f"recipients.warning.0.email: {message}"
    assert nothing_stored()


@pytest.mark.parametrize(("email", "message"), BAD_ADDRESSES)
def test_the_admin_refuses_the_same_addresses_on_the_row(admin_client, email, message):
    account = AccountFactory()
    response = post_account_page(
        admin_client,
        account,
        limit_text_tokens_warning=10,
        recipients=[("warning", email, "en")],
    )
    assert response.status_code == 200  # the page again, with its errors
    assert message in page_errors(response)["rows"][0]["email"]
    assert nothing_stored()


@pytest.mark.parametrize(("email", "message"), BAD_ADDRESSES)
def test_the_model_refuses_the_same_addresses(email, message):
    recipient = Recipient(account=AccountFactory(), level="warning", email=email, language="en")
    with pytest.raises(ValidationError) as refused:
        recipient.full_clean()
    assert message in refused.value.message_dict["email"]


@pytest.mark.parametrize(
    "email", ["pm@example.com", "ops-alerts@mail.example.co.uk", "a@[127.0.0.1]"]
)
def test_the_validator_takes_an_ordinary_address(email):
    validate_recipient_email(email)


def test_send_test_notification_refuses_an_address_without_a_dotted_domain():
    AccountFactory(external_id="crm-1")
    with pytest.raises(CommandError) as refused:
        call_command(
            "send_test_notification",
            "crm-1",
            "--level",
            "warning",
            "--language",
            "en",
            "--to",
            "a@localhost",
            stdout=StringIO(),
            stderr=StringIO(),
        )
    assert MSG_INVALID_EMAIL in str(refused.value)


# --- A recipient's language: left out is the account's, given empty is refused ----------


@pytest.mark.parametrize(
    ("language", "message"),
    [("", "This field may not be blank."), (None, "This field may not be null.")],
)
@pytest.mark.parametrize("method", ["put", "patch"])
def test_an_empty_or_null_language_is_refused(manager_client, method, language, message):
    account = AccountFactory(language="fr")
    response = getattr(manager_client, method)(
        limits_url(account),
        warning_document({"email": "pm@example.com", "language": language}),
        format="json",
    )
    assert response.status_code == 400
    assert response.json() == {"recipients": {"warning": {"0": {"language": [message]}}}}
    assert nothing_stored()


def test_a_language_left_out_is_the_accounts(manager_client):
    account = AccountFactory(language="fr")
    response = manager_client.put(
        limits_url(account), warning_document({"email": "pm@example.com"}), format="json"
    )
    assert response.status_code == 200, response.content
    assert response.json()["recipients"]["warning"] == [
        {"email": "pm@example.com", "language": "fr"}
    ]


def test_set_limits_refuses_an_empty_language():
    AccountFactory(external_id="crm-1")
    with pytest.raises(CommandError) as refused:
        call_command(
            "set_limits",
            "crm-1",
            "--warning-recipient",
            "pm@example.com:",
            stdout=StringIO(),
            stderr=StringIO(),
        )
    assert str(refused.value) == "recipients.warning.0.language: This field may not be blank."


# --- A refused limits document is a JSON object all the way down -----------------------

NOT_OBJECTS = ["x", 7, True, ["warning"], [{"email": "pm@example.com"}]]


@pytest.mark.parametrize("recipients", NOT_OBJECTS, ids=repr)
@pytest.mark.parametrize("with_warning", [False, True])
@pytest.mark.parametrize("method", ["put", "patch"])
def test_recipients_that_are_not_an_object_are_refused_with_an_object(
    manager_client, method, recipients, with_warning
):
    # given
    account = AccountFactory()
    body = {"recipients": recipients}
    if with_warning:
        body["limits"] = {"text_tokens": {"warning": 10}}
    # when
    response = getattr(manager_client, method)(limits_url(account), body, format="json")
    # then
    assert response.status_code == 400
    assert response.json() == {
        "recipients": {
            "non_field_errors": ["Expected an object with “warning” and “blocked” lists."]
        }
    }
    assert nothing_stored()


@pytest.mark.parametrize("limits", NOT_OBJECTS, ids=repr)
@pytest.mark.parametrize("method", ["put", "patch"])
def test_limits_that_are_not_an_object_are_refused_with_an_object(manager_client, method, limits):
    account = AccountFactory()
    response = getattr(manager_client, method)(
        limits_url(account), {"limits": limits}, format="json"
    )
    assert response.status_code == 400
    assert response.json() == {
        "limits": {"non_field_errors": ["Expected an object keyed by metric code."]}
    }
    assert nothing_stored()


def test_a_broken_blocked_list_still_reports_a_missing_warning_recipient(manager_client):
    account = AccountFactory()
    response = manager_client.put(
        limits_url(account),
        {"limits": {"text_tokens": {"warning": 10}}, "recipients": {"blocked": "x"}},
        format="json",
    )
    assert response.status_code == 400
    assert response.json() == {
        "recipients": {
            "blocked": ["Expected a list of recipients."],
            "warning": [
                "At least one warning recipient is required when a warning threshold is set."
            ],
        }
    }


# --- Unknown fields are refused; what a GET answered may be sent back -------------------


@pytest.mark.parametrize(
    ("body", "errors"),
    [
        ({"limits": {}, "note": "x"}, {"note": ["Unknown field."]}),
        (
            {"limits": {"text_tokens": {"blocked": 5, "hard": True}}},
            {"limits": {"text_tokens": {"hard": ["Unknown field."]}}},
        ),
        (
            {"recipients": {"blocked": [{"email": "ops@example.com", "name": "Ops"}]}},
            {"recipients": {"blocked": {"0": {"name": ["Unknown field."]}}}},
        ),
    ],
)
@pytest.mark.parametrize("method", ["put", "patch"])
def test_a_limits_document_with_an_unknown_field_is_refused(manager_client, method, body, errors):
    account = AccountFactory()
    response = getattr(manager_client, method)(limits_url(account), body, format="json")
    assert response.status_code == 400
    assert response.json() == errors
    assert nothing_stored()


@pytest.mark.parametrize("value", [None, "x", 7, {"a": 1}])
def test_account_and_updated_at_are_ignored_whatever_their_value(manager_client, value):
    account = AccountFactory()
    response = manager_client.put(
        limits_url(account),
        {"limits": {"text_tokens": {"blocked": 5}}, "account": value, "updated_at": value},
        format="json",
    )
    assert response.status_code == 200, response.content
    assert Limit.objects.get().blocked == 5


def test_null_limits_and_recipients_clear_them_as_the_schema_says(manager_client):
    # given
    account = AccountFactory()
    full = warning_document({"email": "pm@example.com"})
    full["recipients"]["blocked"] = [{"email": "ops@example.com"}]
    assert manager_client.put(limits_url(account), full, format="json").status_code == 200
    # when
    blocked_emptied = manager_client.patch(
        limits_url(account), {"recipients": {"blocked": None}}, format="json"
    )
    all_cleared = manager_client.put(
        limits_url(account), {"limits": None, "recipients": None}, format="json"
    )
    # then
    assert blocked_emptied.status_code == 200, blocked_emptied.content
    assert blocked_emptied.json()["recipients"] == {
        "warning": [{"email": "pm@example.com", "language": "en"}],
        "blocked": [],
    }
    assert all_cleared.status_code == 200, all_cleared.content
    assert all_cleared.json()["recipients"] == {"warning": [], "blocked": []}
    assert {
        (metric, thresholds["warning"], thresholds["blocked"])
        for metric, thresholds in all_cleared.json()["limits"].items()
    } == {(metric, None, None) for metric in METRICS}
    assert not Recipient.objects.exists()
