"""Tokens bound to one account (SPEC section 11.6).

``create_service_token NAME --account ACCOUNT`` makes a token that may only post usage
for, read and check its account: other accounts' endpoints answer 403, an event for
another account is a 400 naming ``account``, the accounts list shows its account alone,
and its events may leave ``account`` out. Unbound tokens keep reaching every account.
"""

from __future__ import annotations

import re
import uuid
from io import StringIO
from types import SimpleNamespace

import pytest
from django.contrib.auth.models import Group
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection
from django.db.models import ProtectedError
from django.test.utils import CaptureQueriesContext
from django.urls import URLPattern, URLResolver, get_resolver
from knox.models import AuthToken
from rest_framework.test import APIClient

from accounts.models import Account, Limit, TokenAccount
from accounts.roles import ACCOUNT_MANAGERS, USAGE_SERVICES
from accounts.services import service_token_create
from config.authentication import TokenAuthentication, token_account_id
from tests.accounts.test_commands import manage
from tests.factories import AccountFactory, LimitFactory, UserFactory
from usage.models import UsageCounter, UsageEvent

pytestmark = pytest.mark.django_db

EVENTS = "/api/v1/usage/events/"
OTHER_ACCOUNT = {"detail": "This token is bound to another account."}
ACCOUNT_ID = re.compile(r"<(?:\w+:)?id>")  # how account routes name the account
NOT_ITS_ACCOUNT = ["This token may only record usage for its own account."]


def client_for(key: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    return client


@pytest.fixture
def acme() -> Account:
    return AccountFactory(external_id="crm-acme", name="Acme")


@pytest.fixture
def globex() -> Account:
    return AccountFactory(external_id="crm-globex", name="Globex")


@pytest.fixture
def bound_client(acme) -> APIClient:
    """A service token bound to Acme, as ``create_service_token --account`` makes it."""
    return client_for(service_token_create(name="acme-gateway", account=acme).key)


def bound_token_of(user, account: Account) -> APIClient:
    token, key = AuthToken.objects.create(user=user, expiry=None)
    TokenAccount.objects.create(token=token, account=account)
    return client_for(key)


def event(event_id: str = "e-1", quantity: int = 10, **extra) -> dict:
    return {"event_id": event_id, "metric": "text_tokens", "quantity": quantity, **extra}


def stored_events() -> list[tuple[str, uuid.UUID, int]]:
    return sorted(UsageEvent.objects.values_list("event_id", "account_id", "quantity_milli"))


# --- create_service_token --account ---


def run(*args: str) -> list[str]:
    out = StringIO()
    call_command(*args, stdout=out, stderr=StringIO())
    return out.getvalue().splitlines()


@pytest.mark.parametrize("reference", ["crm-acme", "id"])
def test_create_service_token_binds_the_token_to_the_account_given_by_id_or_external_id(
    acme, globex, reference
):
    # when
    lines = run(
        "create_service_token",
        "acme-gateway",
        "--account",
        str(acme.pk) if reference == "id" else reference,
    )
    # then
    assert lines[:-1] == [
        "Created service user acme-gateway; its new token for account Acme (crm-acme) only "
        "(shown once):"
    ]
    binding = TokenAccount.objects.get()
    assert binding.account == acme
    assert binding.token.user.username == "acme-gateway"
    assert binding.token.user.groups.filter(name=USAGE_SERVICES).exists()
    client = client_for(lines[-1])
    assert client.get(f"/api/v1/accounts/{acme.pk}/").status_code == 200
    assert client.get(f"/api/v1/accounts/{globex.pk}/").json() == OTHER_ACCOUNT


def test_create_service_token_with_an_unknown_account_refuses_and_creates_nothing(acme):
    with pytest.raises(
        CommandError, match=r"^Unknown account “nope” \(give its id or external id\)\.$"
    ):
        run("create_service_token", "acme-gateway", "--account", "nope")
    assert not AuthToken.objects.exists()
    assert not TokenAccount.objects.exists()
    assert not Group.objects.get(name=USAGE_SERVICES).user_set.exists()


def test_create_service_token_with_a_bad_account_exits_non_zero_with_one_line(tmp_path):
    database = tmp_path / "ops.sqlite3"
    assert manage("migrate", "--no-input", "-v", "0", database=database).returncode == 0
    # when
    refused = manage(
        "create_service_token", "gw", "--account", str(uuid.uuid4()), database=database
    )
    # then
    assert (refused.returncode, refused.stdout) == (1, "")
    assert len(refused.stderr.splitlines()) == 1
    assert refused.stderr.startswith("CommandError: Unknown account “")


def test_a_bound_token_for_a_reused_service_user_leaves_its_other_tokens_unbound(acme, globex):
    # given: the service already holds a token that reaches every account
    unbound = run("create_service_token", "gateway")[-1]
    # when
    lines = run("create_service_token", "gateway", "--account", "crm-acme")
    # then
    assert lines[0] == (
        "Reused existing service user gateway; its new token for account Acme (crm-acme) "
        "only (shown once):"
    )
    assert client_for(unbound).get(f"/api/v1/accounts/{globex.pk}/").status_code == 200
    assert client_for(lines[-1]).get(f"/api/v1/accounts/{globex.pk}/").status_code == 403
    assert AuthToken.objects.count() == 2
    assert TokenAccount.objects.count() == 1


# --- reads: list, detail, usage ---


def test_the_accounts_list_of_a_bound_token_shows_its_account_alone(
    bound_client, service_client, acme, globex
):
    # when
    listed = bound_client.get("/api/v1/accounts/")
    searched_other = bound_client.get("/api/v1/accounts/", {"search": "globex"})
    searched_own = bound_client.get("/api/v1/accounts/", {"search": "acm"})
    unbound = service_client.get("/api/v1/accounts/")
    # then
    own = {
        "id": str(acme.pk),
        "external_id": "crm-acme",
        "name": "Acme",
        "plan": "enterprise",
        "language": "en",
        "timezone": "Europe/Paris",
    }
    assert listed.status_code == 200
    assert listed.json()["count"] == 1
    assert listed.json()["results"] == [own]
    assert searched_other.json()["results"] == []
    assert searched_own.json()["results"] == [own]
    assert [a["name"] for a in unbound.json()["results"]] == ["Acme", "Globex"]


@pytest.mark.parametrize("path", ["", "usage/"])
def test_a_bound_token_reads_its_account_and_is_refused_any_other_with_403(
    bound_client, service_client, acme, globex, path
):
    # when
    own = bound_client.get(f"/api/v1/accounts/{acme.pk}/{path}")
    other = bound_client.get(f"/api/v1/accounts/{globex.pk}/{path}")
    unknown = bound_client.get(f"/api/v1/accounts/{uuid.uuid4()}/{path}")
    malformed = bound_client.get(f"/api/v1/accounts/not-a-uuid/{path}")
    # then: an unknown or malformed id tells a bound token nothing more than another's
    assert own.status_code == 200
    assert own.json()["account" if path else "id"] == str(acme.pk)
    for refused in (other, unknown, malformed):
        assert (refused.status_code, refused.json()) == (403, OTHER_ACCOUNT)
    # and an unbound token reaches every account, and learns that an id is unknown
    assert service_client.get(f"/api/v1/accounts/{globex.pk}/{path}").status_code == 200
    assert service_client.get(f"/api/v1/accounts/{uuid.uuid4()}/{path}").status_code == 404


def test_the_account_id_of_a_bound_token_may_be_spelled_in_capitals(bound_client, acme):
    response = bound_client.get(f"/api/v1/accounts/{str(acme.pk).upper()}/")
    assert response.status_code == 200


def test_without_the_permission_a_bound_token_is_refused_its_own_account_too(acme):
    # given: a bound token of a user in no group
    client = bound_token_of(UserFactory(username="nobody"), acme)
    # when
    response = client.get(f"/api/v1/accounts/{acme.pk}/usage/")
    # then
    assert (response.status_code, response.json()) == (
        403,
        {"detail": "You do not have permission to perform this action."},
    )


def test_without_credentials_a_bound_route_answers_401(api_client, acme):
    assert api_client.get(f"/api/v1/accounts/{acme.pk}/").status_code == 401


# --- pre-flight check ---


def test_a_bound_token_checks_its_account_and_is_refused_any_other_with_403(
    bound_client, service_client, acme, globex
):
    # given
    LimitFactory(account=acme, metric="text_tokens", warning=None, blocked=100)
    LimitFactory(account=globex, metric="text_tokens", warning=None, blocked=100)
    body = {"metric": "text_tokens", "quantity": 60}
    # when
    own = bound_client.post(f"/api/v1/accounts/{acme.pk}/usage/check/", body, format="json")
    other = bound_client.post(f"/api/v1/accounts/{globex.pk}/usage/check/", body, format="json")
    unbound = service_client.post(f"/api/v1/accounts/{globex.pk}/usage/check/", body, format="json")
    # then
    line = {"period": "month", "window_days": None, "labels": {}, "used": 0, "remaining": 100}
    expected = {
        "allowed": True,
        "metric": "text_tokens",
        "used": 0,
        "remaining": 100,
        "lines": [{**line, "status": "ok", "allowed": True}],
    }
    assert own.status_code == 200
    assert own.json() == {**expected, "status": "ok"}
    assert (other.status_code, other.json()) == (403, OTHER_ACCOUNT)
    assert unbound.json() == {**expected, "status": "ok"}


# --- limits ---


def test_a_bound_manager_token_changes_the_limits_of_its_account_only(manager, acme, globex):
    # given: a token of an account manager, bound to Acme
    client = bound_token_of(manager, acme)
    LimitFactory(account=globex, metric="text_tokens", warning=None, blocked=500)
    document = {"limits": {"text_tokens": {"warning": None, "blocked": 100}}}
    # when
    own = client.put(f"/api/v1/accounts/{acme.pk}/limits/", document, format="json")
    read_other = client.get(f"/api/v1/accounts/{globex.pk}/limits/")
    put_other = client.put(f"/api/v1/accounts/{globex.pk}/limits/", document, format="json")
    patch_other = client.patch(f"/api/v1/accounts/{globex.pk}/limits/", document, format="json")
    # then
    assert own.status_code == 200
    assert own.json()["limits"]["text_tokens"] == {"warning": None, "blocked": 100}
    for refused in (read_other, put_other, patch_other):
        assert (refused.status_code, refused.json()) == (403, OTHER_ACCOUNT)
    assert list(Limit.objects.filter(account=globex).values_list("warning", "blocked")) == [
        (None, 500)
    ]


def _account_routes() -> list[tuple[str, type]]:
    """Every API route that names an account as ``<id>``, with its view class."""
    found = []

    def walk(patterns, prefix: str) -> None:
        for pattern in patterns:
            if isinstance(pattern, URLResolver):
                walk(pattern.url_patterns, prefix + str(pattern.pattern))
            elif isinstance(pattern, URLPattern):
                route = prefix + str(pattern.pattern)
                view = getattr(pattern.callback, "view_class", None)
                if route.startswith("api/v1/") and ACCOUNT_ID.search(route) and view is not None:
                    found.append((route, view))

    walk(get_resolver().url_patterns, "")
    return found


def test_every_account_route_refuses_a_bound_token_for_another_account(acme, globex):
    # given: a bound token whose user holds every permission, so only the binding refuses
    client = bound_token_of(UserFactory(username="root", is_superuser=True), acme)
    routes = _account_routes()
    assert {route for route, _view in routes} >= {
        "api/v1/accounts/<str:id>/",
        "api/v1/accounts/<str:id>/limits/",
        "api/v1/accounts/<str:id>/usage/",
        "api/v1/accounts/<str:id>/usage/check/",
    }
    limits_before = list(Limit.objects.values_list("account_id", "metric", "blocked"))
    for route, view in routes:
        path = "/" + ACCOUNT_ID.sub(str(globex.pk), route)
        # Any other argument of the route (a reservation's id...) is a made-up one.
        while "<" in path:
            start = path.index("<")
            path = path[:start] + "x" + path[path.index(">", start) + 1 :]
        for method in getattr(view, "required_permissions", {}):
            # when
            response = client.generic(method, path, "{}", content_type="application/json")
            # then
            assert (response.status_code, response.json()) == (403, OTHER_ACCOUNT), (
                method,
                path,
            )
    assert list(Limit.objects.values_list("account_id", "metric", "blocked")) == limits_before
    assert not UsageEvent.objects.exists()


# --- usage events ---


def test_an_event_of_a_bound_token_defaults_to_its_account(bound_client, acme):
    # given
    LimitFactory(account=acme, metric="text_tokens", warning=None, blocked=100)
    # when
    response = bound_client.post(EVENTS, event(quantity=30), format="json")
    # then
    assert response.status_code == 201
    assert response.json() == {
        "accepted": 1,
        "duplicates": 0,
        "usage": [
            {
                "account": str(acme.pk),
                "metric": "text_tokens",
                "used": 30,
                "status": "ok",
                "remaining": 70,
                "is_within_budget": True,
            }
        ],
    }
    assert stored_events() == [("e-1", acme.pk, 30_000)]
    assert list(UsageCounter.objects.values_list("account_id", "quantity_milli")) == [
        (acme.pk, 30_000)
    ]


@pytest.mark.parametrize("spelling", ["id", "ID", "null"])
def test_a_bound_token_may_name_its_own_account_or_null(bound_client, acme, spelling):
    account = {"id": str(acme.pk), "ID": str(acme.pk).upper(), "null": None}[spelling]
    response = bound_client.post(EVENTS, event(account=account), format="json")
    assert response.status_code == 201
    assert stored_events() == [("e-1", acme.pk, 10_000)]


@pytest.mark.parametrize("other", ["globex", "unknown"])
def test_an_event_of_a_bound_token_for_another_account_is_a_400_naming_account(
    bound_client, globex, other
):
    account = str(globex.pk) if other == "globex" else str(uuid.uuid4())
    # when
    response = bound_client.post(EVENTS, event(account=account), format="json")
    # then
    assert (response.status_code, response.json()) == (400, {"account": NOT_ITS_ACCOUNT})
    assert stored_events() == []
    assert not UsageCounter.objects.exists()


def test_a_batch_of_a_bound_token_defaults_each_event_to_its_account(bound_client, acme):
    # when
    response = bound_client.post(
        EVENTS,
        {"events": [event("e-1"), event("e-2", account=str(acme.pk)), event("e-1")]},
        format="json",
    )
    # then
    assert response.status_code == 201
    assert (response.json()["accepted"], response.json()["duplicates"]) == (2, 1)
    assert [u["account"] for u in response.json()["usage"]] == [str(acme.pk)]
    assert stored_events() == [("e-1", acme.pk, 10_000), ("e-2", acme.pk, 10_000)]


def test_a_batch_of_a_bound_token_naming_another_account_is_refused_whole(
    bound_client, acme, globex
):
    # when
    response = bound_client.post(
        EVENTS,
        {"events": [event("e-1"), event("e-2", account=str(globex.pk)), event("e-3")]},
        format="json",
    )
    # then
    assert (response.status_code, response.json()) == (
        400,
        {"events": {"1": {"account": NOT_ITS_ACCOUNT}}},
    )
    assert stored_events() == []
    assert not UsageCounter.objects.exists()


def test_an_unbound_token_must_name_the_account_of_each_event(service_client, acme, globex):
    # when
    single = service_client.post(EVENTS, event(), format="json")
    batch = service_client.post(
        EVENTS, {"events": [event("e-1", account=str(globex.pk)), event("e-2")]}, format="json"
    )
    # then
    assert (single.status_code, single.json()) == (400, {"account": ["This field is required."]})
    assert (batch.status_code, batch.json()) == (
        400,
        {"events": {"1": {"account": ["This field is required."]}}},
    )
    assert stored_events() == []


def test_an_unbound_token_records_events_for_any_account(service_client, acme, globex):
    response = service_client.post(
        EVENTS,
        {"events": [event("e-1", account=str(acme.pk)), event("e-1", account=str(globex.pk))]},
        format="json",
    )
    assert response.status_code == 201
    assert stored_events() == sorted([("e-1", acme.pk, 10_000), ("e-1", globex.pk, 10_000)])


def test_an_event_of_a_bound_token_whose_account_is_inactive_is_refused(bound_client, acme):
    Account.objects.filter(pk=acme.pk).update(is_active=False)
    response = bound_client.post(EVENTS, event(), format="json")
    assert (response.status_code, response.json()) == (
        400,
        {"account": ["Unknown or inactive account."]},
    )
    assert stored_events() == []


# --- cost, revocation, the admin, the schema ---


@pytest.mark.parametrize("bound", [True, False])
def test_authentication_reads_the_binding_in_the_token_query(
    service_user, acme, bound, django_assert_num_queries
):
    # given
    token, key = AuthToken.objects.create(user=service_user, expiry=None)
    if bound:
        TokenAccount.objects.create(token=token, account=acme)
    request = SimpleNamespace()
    # when
    with django_assert_num_queries(1):
        request.user, request.auth = TokenAuthentication().authenticate_credentials(key.encode())
    with django_assert_num_queries(0):
        account_id = token_account_id(request)
    # then
    assert request.user == service_user
    assert account_id == (acme.pk if bound else None)


def test_a_bound_token_costs_no_more_queries_than_an_unbound_one(service_user, acme):
    # given: two tokens of one user, one bound
    unbound = client_for(AuthToken.objects.create(user=service_user, expiry=None)[1])
    bound = bound_token_of(service_user, acme)
    path = f"/api/v1/accounts/{acme.pk}/usage/"
    # when
    with CaptureQueriesContext(connection) as unbound_queries:
        assert unbound.get(path).status_code == 200
    with CaptureQueriesContext(connection) as bound_queries:
        assert bound.get(path).status_code == 200
    # then
    assert len(bound_queries) == len(unbound_queries)


def test_a_revoked_bound_token_answers_401_and_its_binding_is_gone(bound_client, acme):
    AuthToken.objects.all().delete()
    response = bound_client.get(f"/api/v1/accounts/{acme.pk}/")
    assert response.status_code == 401
    assert not TokenAccount.objects.exists()


def test_an_account_with_bound_tokens_cannot_be_deleted(bound_client, acme):
    # Deleting it would leave the token unbound, reaching every account.
    with pytest.raises(ProtectedError):
        acme.delete()
    assert TokenAccount.objects.get().account == acme


def test_the_admin_lists_tokens_with_their_account_and_filters_by_it(
    admin_client, service_user, acme, globex
):
    # given
    service_token_create(name="acme-gateway", account=acme)
    unbound, _key = AuthToken.objects.create(user=service_user, expiry=None)
    url = "/admin/knox/authtoken/"
    # when
    listed = admin_client.get(url)
    by_account = admin_client.get(url, {"account": str(acme.pk)})
    not_bound = admin_client.get(url, {"account": "none"})
    # then
    page = listed.content.decode()
    assert listed.status_code == 200
    assert f'<a href="/admin/accounts/account/{acme.pk}/change/">Acme (crm-acme)</a>' in page
    assert "any (not bound)" in page
    assert "Any account (not bound)" in page  # the filter's choices
    assert "Globex" not in page  # no token is bound to it
    assert [t.user.username for t in by_account.context["cl"].result_list] == ["acme-gateway"]
    assert [t.pk for t in not_bound.context["cl"].result_list] == [unbound.pk]


def test_the_admin_shows_the_binding_of_a_token_and_revokes_it(admin_client, acme):
    # given
    service_token_create(name="acme-gateway", account=acme)
    token = AuthToken.objects.get()
    url = f"/admin/knox/authtoken/{token.pk}/"
    # when
    page = admin_client.get(f"{url}change/")
    deleted = admin_client.post(f"{url}delete/", {"post": "yes"})
    # then
    assert page.status_code == 200
    assert "Acme (crm-acme)" in page.content.decode()
    assert deleted.status_code == 302
    assert not AuthToken.objects.exists()
    assert not TokenAccount.objects.exists()


def test_the_schema_says_account_may_be_left_out_and_documents_the_403(client):
    schema = client.get("/api/v1/schema/", {"format": "json"}).json()
    variants = [
        schema["components"]["schemas"][name]
        for name in ("SecondsEventRequest", "TokensEventRequest")
    ]
    for event_schema in variants:
        assert "account" in event_schema["properties"]
        assert "account" not in event_schema["required"]
        assert "bound to one account" in event_schema["properties"]["account"]["description"]
    for path in ("/api/v1/accounts/{id}/", "/api/v1/accounts/{id}/usage/check/"):
        operation = next(iter(schema["paths"][path].values()))
        assert "bound to another account" in operation["responses"]["403"]["description"]


def test_a_manager_token_made_by_create_api_token_stays_unbound(manager, acme, globex):
    key = run("create_api_token", "manager")[-1]
    assert manager.groups.filter(name=ACCOUNT_MANAGERS).exists()
    assert client_for(key).get(f"/api/v1/accounts/{globex.pk}/limits/").status_code == 200
    assert not TokenAccount.objects.exists()


def test_the_refusals_of_a_bound_token_speak_french(bound_client, globex):
    # when
    read = bound_client.get(f"/api/v1/accounts/{globex.pk}/", HTTP_ACCEPT_LANGUAGE="fr")
    posted = bound_client.post(
        EVENTS, event(account=str(globex.pk)), format="json", HTTP_ACCEPT_LANGUAGE="fr"
    )
    # then
    assert (read.status_code, read.json()) == (
        403,
        {"detail": "Ce jeton est lié à un autre compte."},
    )
    assert (posted.status_code, posted.json()) == (
        400,
        {"account": ["Ce jeton ne peut enregistrer d’usage que pour son propre compte."]},
    )
