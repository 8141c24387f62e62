"""The limits endpoint of the API (SPEC sections 3 and 5): read, replace, merge, refuse."""

from __future__ import annotations

import uuid
from datetime import datetime

import pytest

from accounts.models import Limit, Plan, Recipient
from tests.factories import AccountFactory, LimitFactory, RecipientFactory

pytestmark = pytest.mark.django_db

WARNING_RULE = "At least one warning recipient is required when a warning threshold is set."
BELOW_RULE = "The warning threshold must be lower than the blocked threshold."
NOT_AUTHENTICATED = {"detail": "Authentication credentials were not provided."}
NOT_ALLOWED = {"detail": "You do not have permission to perform this action."}
NOT_FOUND = {"detail": "Account not found."}
NOT_ENTERPRISE = {
    "detail": "Limits can only be defined for an Enterprise account.",
    "code": "not_enterprise",
}
UNLIMITED = {"warning": None, "blocked": None}
VALID_BODY = {"limits": {"text_tokens": {"blocked": 1000}}}


def limits_url(account_id) -> str:
    return f"/api/v1/accounts/{account_id}/limits/"


def send(client, method: str, account_id, body=None):
    """Call the limits endpoint; ``body`` is sent as JSON for PUT and PATCH."""
    if method == "get":
        return client.get(limits_url(account_id))
    return getattr(client, method)(limits_url(account_id), body, format="json")


def stored(account) -> tuple[list, list, datetime | None]:
    """The account's limit and recipient rows, and when its limits last changed."""
    account.refresh_from_db()
    return (
        list(Limit.objects.filter(account=account).values_list("metric", "warning", "blocked")),
        list(
            Recipient.objects.filter(account=account)
            .order_by("level", "email")
            .values_list("level", "email", "language")
        ),
        account.limits_updated_at,
    )


@pytest.fixture
def account():
    return AccountFactory()


@pytest.fixture
def limited_account(manager_client):
    """An account with limits on two metrics and one recipient per list, set via the API."""
    account = AccountFactory()
    response = manager_client.put(
        limits_url(account.id),
        {
            "limits": {
                "audio_transcribed_seconds": {"warning": 36000, "blocked": 72000},
                "text_tokens": {"warning": 800000, "blocked": 1000000},
            },
            "recipients": {
                "warning": [{"email": "pm@example.com", "language": "fr"}],
                "blocked": [{"email": "ops-alerts@example.com", "language": "en"}],
            },
        },
        format="json",
    )
    assert response.status_code == 200
    return account


# --- Who may do what ---


@pytest.mark.parametrize("method", ["get", "put", "patch"])
def test_limits_need_credentials(api_client, account, method):
    # when
    response = send(api_client, method, account.id, VALID_BODY)
    # then
    assert response.status_code == 401
    assert response.json() == NOT_AUTHENTICATED
    assert response["WWW-Authenticate"] == "Token"
    assert stored(account) == ([], [], None)


@pytest.mark.parametrize("client_name", ["nobody_client", "service_client"])
@pytest.mark.parametrize("method", ["get", "put", "patch"])
def test_limits_are_refused_to_users_who_are_not_account_managers(
    request, account, client_name, method
):
    # given
    client = request.getfixturevalue(client_name)
    # when
    response = send(client, method, account.id, VALID_BODY)
    # then
    assert response.status_code == 403
    assert response.json() == NOT_ALLOWED
    assert stored(account) == ([], [], None)


@pytest.mark.parametrize("method", ["get", "put", "patch"])
def test_account_managers_read_and_change_limits(manager_client, account, method):
    # when
    response = send(manager_client, method, account.id, VALID_BODY)
    # then
    assert response.status_code == 200


@pytest.mark.parametrize("method", ["get", "put", "patch"])
@pytest.mark.parametrize("account_id", [uuid.UUID(int=1), "not-a-uuid"])
def test_limits_of_an_unknown_account_answer_json_404(manager_client, method, account_id):
    # when
    response = send(manager_client, method, account_id, VALID_BODY)
    # then
    assert response.status_code == 404
    assert response["Content-Type"] == "application/json"
    assert response.json() == NOT_FOUND


@pytest.mark.parametrize("method", ["get", "put", "patch"])
def test_unknown_account_is_not_revealed_before_the_permission_check(service_client, method):
    # when
    response = send(service_client, method, uuid.UUID(int=1), VALID_BODY)
    # then
    assert response.status_code == 403
    assert response.json() == NOT_ALLOWED


@pytest.mark.parametrize("method", ["get", "put", "patch"])
def test_account_that_is_not_enterprise_answers_409(manager_client, method):
    # given
    account = AccountFactory(plan=Plan.PRO)
    # when
    response = send(manager_client, method, account.id, VALID_BODY)
    # then
    assert response.status_code == 409
    assert response.json() == NOT_ENTERPRISE
    assert stored(account) == ([], [], None)


# --- Reading ---


def test_every_metric_and_both_lists_are_listed_when_nothing_is_set(manager_client, account):
    # when
    response = manager_client.get(limits_url(account.id))
    # then
    assert response.status_code == 200
    assert response.json() == {
        "account": str(account.id),
        "limits": {
            "audio_transcribed_seconds": UNLIMITED,
            "audio_analyzed_seconds": UNLIMITED,
            "text_tokens": UNLIMITED,
        },
        "recipients": {"warning": [], "blocked": []},
        "scoped_limits": [],
        "updated_at": None,
    }


def test_limits_set_outside_the_api_are_read(manager_client, account):
    # given
    LimitFactory(account=account, metric="text_tokens", warning=10, blocked=20)
    RecipientFactory(account=account, level="warning", email="pm@example.com", language="fr")
    # when
    response = manager_client.get(limits_url(account.id))
    # then
    assert response.json() == {
        "account": str(account.id),
        "limits": {
            "audio_transcribed_seconds": UNLIMITED,
            "audio_analyzed_seconds": UNLIMITED,
            "text_tokens": {"warning": 10, "blocked": 20},
        },
        "recipients": {"warning": [{"email": "pm@example.com", "language": "fr"}], "blocked": []},
        "scoped_limits": [],
        "updated_at": None,
    }


def test_updated_at_is_set_by_a_change(manager_client, account):
    # when
    put = manager_client.put(limits_url(account.id), VALID_BODY, format="json")
    get = manager_client.get(limits_url(account.id))
    # then
    account.refresh_from_db()
    assert account.limits_updated_at is not None
    assert datetime.fromisoformat(put.json()["updated_at"]) == account.limits_updated_at
    assert get.json()["updated_at"] == put.json()["updated_at"]


# --- Replacing (PUT) ---


def test_put_stores_and_answers_the_whole_document(manager_client, account):
    # when
    response = manager_client.put(
        limits_url(account.id),
        {
            "limits": {
                "audio_transcribed_seconds": {"warning": 36000, "blocked": 72000},
                "audio_analyzed_seconds": {"warning": None, "blocked": None},
                "text_tokens": {"warning": 800000, "blocked": 1000000},
            },
            "recipients": {
                "warning": [{"email": "pm@example.com", "language": "fr"}],
                "blocked": [{"email": "ops-alerts@example.com", "language": "en"}],
            },
        },
        format="json",
    )
    # then
    assert response.status_code == 200
    body = response.json()
    assert body == {
        "account": str(account.id),
        "limits": {
            "audio_transcribed_seconds": {"warning": 36000, "blocked": 72000},
            "audio_analyzed_seconds": UNLIMITED,
            "text_tokens": {"warning": 800000, "blocked": 1000000},
        },
        "recipients": {
            "warning": [{"email": "pm@example.com", "language": "fr"}],
            "blocked": [{"email": "ops-alerts@example.com", "language": "en"}],
        },
        "scoped_limits": [],
        "updated_at": body["updated_at"],
    }
    limits, recipients, updated_at = stored(account)
    assert sorted(limits) == [
        ("audio_transcribed_seconds", 36000, 72000),
        ("text_tokens", 800000, 1000000),
    ]
    assert recipients == [
        ("blocked", "ops-alerts@example.com", "en"),
        ("warning", "pm@example.com", "fr"),
    ]
    assert datetime.fromisoformat(body["updated_at"]) == updated_at


def test_put_makes_metrics_left_out_unlimited_and_lists_left_out_empty(
    manager_client, limited_account
):
    # when
    response = manager_client.put(
        limits_url(limited_account.id),
        {"limits": {"text_tokens": {"blocked": 5000}}},
        format="json",
    )
    # then
    assert response.status_code == 200
    assert response.json()["limits"] == {
        "audio_transcribed_seconds": UNLIMITED,
        "audio_analyzed_seconds": UNLIMITED,
        "text_tokens": {"warning": None, "blocked": 5000},
    }
    assert response.json()["recipients"] == {"warning": [], "blocked": []}
    limits, recipients, _ = stored(limited_account)
    assert sorted(limits) == [
        ("audio_transcribed_seconds", None, None),
        ("text_tokens", None, 5000),
    ]
    assert recipients == []


def test_put_of_an_empty_object_clears_everything(manager_client, limited_account):
    # when
    response = manager_client.put(limits_url(limited_account.id), {}, format="json")
    # then
    assert response.status_code == 200
    assert response.json()["limits"] == {
        "audio_transcribed_seconds": UNLIMITED,
        "audio_analyzed_seconds": UNLIMITED,
        "text_tokens": UNLIMITED,
    }
    assert response.json()["recipients"] == {"warning": [], "blocked": []}


@pytest.mark.parametrize("method", ["put", "patch"])
def test_an_empty_body_is_refused_and_clears_nothing(manager_client, limited_account, method):
    # given
    rows_before = stored(limited_account)
    # when: no body at all, as an accidental request would send
    response = getattr(manager_client, method)(
        limits_url(limited_account.id), content_type="application/json"
    )
    # then
    assert response.status_code == 400
    assert response.json() == {"non_field_errors": ["A JSON body is required."]}
    assert stored(limited_account) == rows_before


def test_put_of_the_get_answer_is_accepted_unchanged(manager_client, limited_account):
    # given
    before = manager_client.get(limits_url(limited_account.id)).json()
    rows_before = stored(limited_account)
    history_before = (Limit.history.count(), Recipient.history.count())
    # when
    response = manager_client.put(limits_url(limited_account.id), before, format="json")
    # then
    assert response.status_code == 200
    assert response.json() == before
    assert stored(limited_account) == rows_before
    assert (Limit.history.count(), Recipient.history.count()) == history_before


def test_recipient_language_defaults_to_the_account_language(manager_client):
    # given
    account = AccountFactory(language="fr")
    # when
    response = manager_client.put(
        limits_url(account.id),
        {"recipients": {"blocked": [{"email": "ops@example.com"}]}},
        format="json",
    )
    # then
    assert response.status_code == 200
    assert response.json()["recipients"] == {
        "warning": [],
        "blocked": [{"email": "ops@example.com", "language": "fr"}],
    }


def test_same_address_may_be_on_both_lists(manager_client, account):
    # given
    address = {"email": "pm@example.com", "language": "en"}
    # when
    response = manager_client.put(
        limits_url(account.id),
        {"recipients": {"warning": [address], "blocked": [address]}},
        format="json",
    )
    # then
    assert response.status_code == 200
    assert stored(account)[1] == [
        ("blocked", "pm@example.com", "en"),
        ("warning", "pm@example.com", "en"),
    ]


def test_blocked_threshold_without_recipients_is_accepted(manager_client, account):
    # when
    response = manager_client.put(
        limits_url(account.id), {"limits": {"text_tokens": {"blocked": 0}}}, format="json"
    )
    # then
    assert response.status_code == 200
    assert stored(account)[:2] == ([("text_tokens", None, 0)], [])


def test_change_is_recorded_in_history_with_its_author(manager_client, manager, account):
    # when
    manager_client.put(
        limits_url(account.id),
        {
            "limits": {"text_tokens": {"warning": 10, "blocked": 20}},
            "recipients": {"warning": [{"email": "pm@example.com", "language": "en"}]},
        },
        format="json",
    )
    # then
    limit_change = Limit.history.get()
    assert (limit_change.history_type, limit_change.history_user, limit_change.warning) == (
        "+",
        manager,
        10,
    )
    assert limit_change.history_change_reason == "api"
    recipient_change = Recipient.history.get()
    assert (recipient_change.history_type, recipient_change.history_user) == ("+", manager)


# --- Merging (PATCH) ---


def test_patch_changes_only_what_it_names(manager_client, limited_account):
    # when
    response = manager_client.patch(
        limits_url(limited_account.id),
        {
            "limits": {
                "text_tokens": {"warning": None},
                "audio_analyzed_seconds": {"blocked": 5000},
            },
            "recipients": {"blocked": [{"email": "cto@example.com", "language": "fr"}]},
        },
        format="json",
    )
    # then
    assert response.status_code == 200
    body = response.json()
    assert body == {
        "account": str(limited_account.id),
        "limits": {
            "audio_transcribed_seconds": {"warning": 36000, "blocked": 72000},
            "audio_analyzed_seconds": {"warning": None, "blocked": 5000},
            "text_tokens": {"warning": None, "blocked": 1000000},
        },
        "recipients": {
            "warning": [{"email": "pm@example.com", "language": "fr"}],
            "blocked": [{"email": "cto@example.com", "language": "fr"}],
        },
        "scoped_limits": [],
        "updated_at": body["updated_at"],
    }
    limits, recipients, _ = stored(limited_account)
    assert sorted(limits) == [
        ("audio_analyzed_seconds", None, 5000),
        ("audio_transcribed_seconds", 36000, 72000),
        ("text_tokens", None, 1000000),
    ]
    assert recipients == [
        ("blocked", "cto@example.com", "fr"),
        ("warning", "pm@example.com", "fr"),
    ]


def test_patch_with_null_for_a_metric_clears_both_thresholds(manager_client, limited_account):
    # when
    response = manager_client.patch(
        limits_url(limited_account.id),
        {"limits": {"audio_transcribed_seconds": None}},
        format="json",
    )
    # then
    assert response.status_code == 200
    assert response.json()["limits"]["audio_transcribed_seconds"] == UNLIMITED
    assert response.json()["limits"]["text_tokens"] == {"warning": 800000, "blocked": 1000000}
    assert ("audio_transcribed_seconds", None, None) in stored(limited_account)[0]


def test_patch_of_an_empty_object_changes_nothing(manager_client, limited_account):
    # given
    before = manager_client.get(limits_url(limited_account.id)).json()
    rows_before = stored(limited_account)
    # when
    response = manager_client.patch(limits_url(limited_account.id), {}, format="json")
    # then
    assert response.status_code == 200
    assert response.json() == before
    assert stored(limited_account) == rows_before


def test_patched_warning_is_checked_against_the_stored_blocked_threshold(
    manager_client, limited_account
):
    # given
    rows_before = stored(limited_account)
    # when
    response = manager_client.patch(
        limits_url(limited_account.id),
        {"limits": {"text_tokens": {"warning": 1000000}}},
        format="json",
    )
    # then
    assert response.status_code == 400
    assert response.json() == {"limits": {"text_tokens": {"warning": [BELOW_RULE]}}}
    assert stored(limited_account) == rows_before


def test_emptying_the_warning_list_while_a_warning_threshold_is_set_is_refused(
    manager_client, limited_account
):
    # given
    rows_before = stored(limited_account)
    # when
    response = manager_client.patch(
        limits_url(limited_account.id), {"recipients": {"warning": []}}, format="json"
    )
    # then
    assert response.status_code == 400
    assert response.json() == {"recipients": {"warning": [WARNING_RULE]}}
    assert stored(limited_account) == rows_before


# --- Refusals: the rules of SPEC section 3, through PUT and PATCH alike ---

UNKNOWN_METRIC = (
    "Unknown metric. Expected one of: "
    "audio_transcribed_seconds, audio_analyzed_seconds, text_tokens."
)
A_WARNING_RECIPIENT = {"warning": [{"email": "pm@example.com", "language": "en"}]}

REFUSALS = {
    "warning threshold without a warning recipient": (
        {"limits": {"audio_analyzed_seconds": {"warning": 10}}},
        {"recipients": {"warning": [WARNING_RULE]}},
    ),
    "warning equal to blocked": (
        {
            "limits": {"text_tokens": {"warning": 500, "blocked": 500}},
            "recipients": A_WARNING_RECIPIENT,
        },
        {"limits": {"text_tokens": {"warning": [BELOW_RULE]}}},
    ),
    "warning above blocked": (
        {
            "limits": {"text_tokens": {"warning": 501, "blocked": 500}},
            "recipients": A_WARNING_RECIPIENT,
        },
        {"limits": {"text_tokens": {"warning": [BELOW_RULE]}}},
    ),
    "negative threshold": (
        {"limits": {"text_tokens": {"blocked": -1}}},
        {
            "limits": {
                "text_tokens": {"blocked": ["Ensure this value is greater than or equal to 0."]}
            }
        },
    ),
    "decimal threshold": (
        {"limits": {"text_tokens": {"blocked": 1.5}}},
        {"limits": {"text_tokens": {"blocked": ["A valid integer is required."]}}},
    ),
    "threshold as a string": (
        {"limits": {"text_tokens": {"blocked": "1000"}}},
        {"limits": {"text_tokens": {"blocked": ["A valid integer is required."]}}},
    ),
    "threshold as a boolean": (
        {"limits": {"text_tokens": {"blocked": True}}},
        {"limits": {"text_tokens": {"blocked": ["A valid integer is required."]}}},
    ),
    "threshold too large": (
        {"limits": {"text_tokens": {"blocked": 10**16}}},
        {
            "limits": {
                "text_tokens": {
                    "blocked": ["Ensure this value is less than or equal to 1000000000000000."]
                }
            }
        },
    ),
    "unknown metric": (
        {"limits": {"video_seconds": {"blocked": 10}}},
        {"limits": {"video_seconds": [UNKNOWN_METRIC]}},
    ),
    "unknown threshold": (
        {"limits": {"text_tokens": {"soft": 10}}},
        {"limits": {"text_tokens": {"soft": ["Unknown field."]}}},
    ),
    "limits that are not an object": (
        {"limits": [10, 20]},
        {"limits": {"non_field_errors": ["Expected an object keyed by metric code."]}},
    ),
    "invalid e-mail address": (
        {"recipients": {"blocked": [{"email": "not-an-address", "language": "en"}]}},
        {"recipients": {"blocked": {"0": {"email": ["Enter a valid email address."]}}}},
    ),
    "invalid language": (
        {"recipients": {"blocked": [{"email": "ops@example.com", "language": "de"}]}},
        {
            "recipients": {
                "blocked": {
                    "0": {"language": ["“de” is not a valid choice. Expected one of: en, fr."]}
                }
            }
        },
    ),
    "duplicate address in a list, whatever its case": (
        {
            "recipients": {
                "blocked": [
                    {"email": "ops@example.com", "language": "en"},
                    {"email": "OPS@example.com", "language": "fr"},
                ]
            }
        },
        {"recipients": {"blocked": {"1": {"email": ["This address is already in the list."]}}}},
    ),
    "unknown recipient level": (
        {"recipients": {"urgent": []}},
        {"recipients": {"urgent": ["Unknown level. Expected one of: warning, blocked."]}},
    ),
    "too many recipients": (
        {
            "recipients": {
                "blocked": [{"email": f"ops{n}@example.com", "language": "en"} for n in range(51)]
            }
        },
        {"recipients": {"blocked": ["Ensure this list has at most 50 recipients."]}},
    ),
    "unknown top-level field": (
        {"limit": {}},
        {"limit": ["Unknown field."]},
    ),
    "body that is a JSON list": (
        [{"limits": {}}],
        {"non_field_errors": ["Expected an object with “limits” and “recipients”."]},
    ),
}


@pytest.fixture
def blocked_only_account(manager_client):
    """A blocked threshold and a blocked recipient, no warning: PUT and PATCH refuse alike."""
    account = AccountFactory()
    response = manager_client.put(
        limits_url(account.id),
        {
            "limits": {"text_tokens": {"blocked": 1000}},
            "recipients": {"blocked": [{"email": "ops@example.com", "language": "en"}]},
        },
        format="json",
    )
    assert response.status_code == 200
    return account


@pytest.mark.parametrize("method", ["put", "patch"])
@pytest.mark.parametrize(("body", "errors"), REFUSALS.values(), ids=REFUSALS.keys())
def test_document_breaking_a_rule_is_refused_whole(
    manager_client, blocked_only_account, method, body, errors
):
    # given
    rows_before = stored(blocked_only_account)
    history_before = (Limit.history.count(), Recipient.history.count())
    # when
    response = send(manager_client, method, blocked_only_account.id, body)
    # then
    assert response.status_code == 400
    assert response.json() == errors
    assert stored(blocked_only_account) == rows_before
    assert (Limit.history.count(), Recipient.history.count()) == history_before


def test_every_broken_rule_is_reported_at_once(manager_client, account):
    # when
    response = manager_client.put(
        limits_url(account.id),
        {
            "limits": {
                "text_tokens": {"warning": 10, "blocked": -5},
                "audio_analyzed_seconds": {"warning": 30, "blocked": 20},
            },
            "recipients": {"blocked": [{"email": "nope"}]},
        },
        format="json",
    )
    # then
    assert response.status_code == 400
    assert response.json() == {
        "limits": {
            "text_tokens": {"blocked": ["Ensure this value is greater than or equal to 0."]},
            "audio_analyzed_seconds": {"warning": [BELOW_RULE]},
        },
        "recipients": {
            "blocked": {"0": {"email": ["Enter a valid email address."]}},
            "warning": [WARNING_RULE],
        },
    }
    assert stored(account) == ([], [], None)


# --- Bodies that are not JSON objects ---


@pytest.mark.parametrize("method", ["put", "patch"])
def test_malformed_json_is_refused_with_400(manager_client, blocked_only_account, method):
    # given
    rows_before = stored(blocked_only_account)
    # when
    response = getattr(manager_client, method)(
        limits_url(blocked_only_account.id), '{"limits": ', content_type="application/json"
    )
    # then
    assert response.status_code == 400
    assert response.json() == {
        "detail": "JSON parse error - Expecting value: line 1 column 12 (char 11)"
    }
    assert stored(blocked_only_account) == rows_before


@pytest.mark.parametrize("method", ["put", "patch"])
def test_body_that_is_not_json_is_refused_with_415(manager_client, blocked_only_account, method):
    # given
    rows_before = stored(blocked_only_account)
    # when
    response = getattr(manager_client, method)(
        limits_url(blocked_only_account.id), "limits=none", content_type="text/plain"
    )
    # then
    assert response.status_code == 415
    assert response.json() == {"detail": 'Unsupported media type "text/plain" in request.'}
    assert stored(blocked_only_account) == rows_before
