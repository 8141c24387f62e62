"""The ops commands of SPEC section 8 that manage tokens, accounts, limits and demo data."""

from __future__ import annotations

import os
import subprocess
import sys
from io import StringIO
from pathlib import Path

import pytest
from django.conf import settings
from django.contrib.auth import authenticate, get_user_model
from django.contrib.auth.models import Group
from django.core.management import call_command, load_command_class
from django.core.management.base import CommandError
from knox.auth import TokenAuthentication
from knox.models import AuthToken

from accounts.models import Account, Limit, Plan, Recipient
from accounts.roles import ACCOUNT_MANAGERS, USAGE_SERVICES
from accounts.selectors import limits_document_get
from backoffice.services import limits_replace
from tests.factories import AccountFactory, UserFactory
from usage.models import UsageEvent
from usage.selectors import account_usage

pytestmark = pytest.mark.django_db

WARNING_RULE = "At least one warning recipient is required when a warning threshold is set."


@pytest.fixture(autouse=True)
def _fast_password_hasher(settings) -> None:
    # seed_demo hashes and the tests check several passwords; the default hasher is slow by design.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def run(*args: str) -> list[str]:
    """The lines a command writes on stdout."""
    out = StringIO()
    call_command(*args, stdout=out, stderr=StringIO())
    return out.getvalue().splitlines()


def authenticated_user(key: str):
    user, _ = TokenAuthentication().authenticate_credentials(key.encode())
    return user


def limits_state(account: Account) -> tuple[dict, int, int]:
    """The limits document and the number of history rows, to tell that nothing changed."""
    return (
        limits_document_get(account=account).as_data(),
        Limit.history.count(),
        Recipient.history.count(),
    )


# --- create_service_token ---


def test_create_service_token_prints_a_token_alone_on_the_last_line_that_authenticates():
    # when
    lines = run("create_service_token", "llm-gateway")
    # then
    user = get_user_model().objects.get(username="llm-gateway")
    assert lines[:-1] == ["Created service user llm-gateway; its new token (shown once):"]
    assert authenticated_user(lines[-1]) == user
    assert user.groups.filter(name=USAGE_SERVICES).exists()
    assert not user.has_usable_password()
    assert not user.is_staff
    assert not user.is_superuser
    assert AuthToken.objects.get(user=user).expiry is None


def test_create_service_token_reuses_an_existing_service_user_and_adds_a_token():
    first = run("create_service_token", "llm-gateway")[-1]
    lines = run("create_service_token", "llm-gateway")
    user = get_user_model().objects.get(username="llm-gateway")
    assert lines[0] == "Reused existing service user llm-gateway; its new token (shown once):"
    assert authenticated_user(first) == authenticated_user(lines[-1]) == user
    assert AuthToken.objects.filter(user=user).count() == 2
    assert get_user_model().objects.filter(username="llm-gateway").count() == 1


def test_create_service_token_refuses_the_name_of_a_person():
    person = UserFactory(username="alice")
    with pytest.raises(CommandError, match=r"^User “alice” exists and is not a service user"):
        run("create_service_token", "alice")
    assert not person.groups.exists()
    assert not AuthToken.objects.exists()


# --- create_api_token ---


def test_create_api_token_prints_a_token_alone_on_the_last_line_that_authenticates(manager):
    lines = run("create_api_token", "manager")
    assert lines[:-1] == ["New API token for user manager (shown once):"]
    assert authenticated_user(lines[-1]) == manager
    assert list(manager.groups.values_list("name", flat=True)) == [ACCOUNT_MANAGERS]


def test_create_api_token_refuses_an_unknown_user():
    with pytest.raises(CommandError, match=r"^Unknown user “bob”\.$"):
        run("create_api_token", "bob")
    assert not AuthToken.objects.exists()


def test_create_api_token_refuses_an_inactive_user():
    UserFactory(username="gone", is_active=False)
    with pytest.raises(CommandError, match=r"^User “gone” is inactive; activate it first\.$"):
        run("create_api_token", "gone")
    assert not AuthToken.objects.exists()


# --- upsert_account ---


def test_upsert_account_creates_then_updates_the_same_account():
    # when
    created = run("upsert_account", "crm-42", "--name", "Acme", "--timezone", "Europe/Paris")
    updated = run("upsert_account", "crm-42", "--name", "Acme Corp", "--language", "fr")
    # then
    account = Account.objects.get()
    assert created == [
        "Created account Acme (crm-42), plan enterprise, language en, time zone Europe/Paris:",
        str(account.pk),
    ]
    assert updated == [
        "Updated account Acme Corp (crm-42), plan enterprise, language fr, time zone Europe/Paris:",
        str(account.pk),
    ]
    assert (account.name, account.plan, account.language, account.timezone) == (
        "Acme Corp",
        Plan.ENTERPRISE,
        "fr",
        "Europe/Paris",
    )


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--timezone", "Mars/Olympus", "“Mars/Olympus” is not a known IANA time zone."),
        ("--plan", "gold", "plan: Value 'gold' is not a valid choice."),
        ("--language", "de", "language: Value 'de' is not a valid choice."),
    ],
)
def test_upsert_account_refuses_a_bad_value_and_changes_nothing(option, value, message):
    account = AccountFactory(external_id="crm-42", name="Acme", timezone="Europe/Paris")
    with pytest.raises(CommandError) as refused:
        run("upsert_account", "crm-42", "--name", "Renamed", option, value)
    assert str(refused.value) == f"Account refused: {message}"
    account.refresh_from_db()
    assert (account.name, account.plan, account.language, account.timezone) == (
        "Acme",
        Plan.ENTERPRISE,
        "en",
        "Europe/Paris",
    )


def test_upsert_account_speaks_the_site_language(settings):
    # given: French as the site's language, which the commands speak
    settings.LANGUAGE_CODE = "fr"
    # when
    created = run("upsert_account", "crm-42", "--name", "Acme", "--timezone", "Europe/Paris")
    with pytest.raises(CommandError) as refused:
        run("upsert_account", "crm-42", "--name", "Acme", "--timezone", "Mars/Olympus")
    help_text = load_command_class("backoffice", "upsert_account").create_parser(
        "manage.py", "upsert_account"
    )
    # then
    account = Account.objects.get()
    assert created == [
        "Compte Acme (crm-42) créé, offre enterprise, langue en, fuseau horaire Europe/Paris :",
        str(account.pk),
    ]
    assert str(refused.value) == (
        "Compte refusé : « Mars/Olympus » n’est pas un fuseau horaire IANA connu."
    )
    assert "Crée le compte EXTERNAL_ID, ou le met à jour s’il existe" in " ".join(
        help_text.format_help().split()
    )
    assert "l’offre enterprise, la langue en" in " ".join(help_text.format_help().split())


def test_upsert_account_with_a_bad_time_zone_creates_nothing():
    with pytest.raises(CommandError, match="is not a known IANA time zone"):
        run("upsert_account", "crm-42", "--name", "Acme", "--timezone", "Europe/Atlantis")
    assert not Account.objects.exists()


def test_upsert_account_requires_a_name():
    with pytest.raises(CommandError, match="the following arguments are required: --name"):
        run("upsert_account", "crm-42")
    assert not Account.objects.exists()


# --- set_limits ---


@pytest.fixture
def account() -> Account:
    return AccountFactory(external_id="crm-1", name="Acme", language="en")


def test_set_limits_sets_thresholds_and_prints_every_metric_and_both_lists(account):
    # when
    lines = run(
        "set_limits",
        "crm-1",
        "--metric",
        "text_tokens",
        "--warning",
        "800000",
        "--blocked",
        "1000000",
        "--warning-recipient",
        "pm@example.com:fr",
    )
    # then
    assert lines == [
        "Limits changed for Acme (crm-1):",
        "metric                     warning  blocked",
        "audio_transcribed_seconds     none     none",
        "audio_analyzed_seconds        none     none",
        "text_tokens                 800000  1000000",
        "warning recipients: pm@example.com (fr)",
        "blocked recipients: none",
    ]
    assert limits_document_get(account=account).as_data() == {
        "limits": {
            "audio_transcribed_seconds": {"warning": None, "blocked": None},
            "audio_analyzed_seconds": {"warning": None, "blocked": None},
            "text_tokens": {"warning": 800_000, "blocked": 1_000_000},
        },
        "recipients": {"warning": [{"email": "pm@example.com", "language": "fr"}], "blocked": []},
        "scoped_limits": [],
    }
    change = Limit.history.get()
    assert (change.history_user, change.history_change_reason) == (None, "command")


def test_set_limits_takes_the_account_id_too(account):
    run("set_limits", str(account.pk), "--metric", "audio_analyzed_seconds", "--blocked", "60")
    assert limits_document_get(account=account).limits["audio_analyzed_seconds"].blocked == 60


def test_set_limits_changes_only_what_is_given(account):
    # given
    limits_replace(
        account=account,
        data={
            "limits": {
                "text_tokens": {"warning": 10, "blocked": 20},
                "audio_transcribed_seconds": {"warning": None, "blocked": 3600},
            },
            "recipients": {
                "warning": [{"email": "pm@example.com", "language": "fr"}],
                "blocked": [{"email": "ops@example.com", "language": "en"}],
            },
        },
    )
    # when
    run("set_limits", "crm-1", "--metric", "text_tokens", "--blocked", "30")
    # then
    assert limits_document_get(account=account).as_data() == {
        "limits": {
            "audio_transcribed_seconds": {"warning": None, "blocked": 3600},
            "audio_analyzed_seconds": {"warning": None, "blocked": None},
            "text_tokens": {"warning": 10, "blocked": 30},
        },
        "recipients": {
            "warning": [{"email": "pm@example.com", "language": "fr"}],
            "blocked": [{"email": "ops@example.com", "language": "en"}],
        },
        "scoped_limits": [],
    }


def test_set_limits_none_clears_a_threshold(account):
    limits_replace(account=account, data={"limits": {"text_tokens": {"blocked": 20}}})
    lines = run("set_limits", "crm-1", "--metric", "text_tokens", "--blocked", "none")
    assert limits_document_get(account=account).limits["text_tokens"].is_unlimited
    assert "text_tokens                   none     none" in lines


def test_set_limits_recipients_replace_the_list_and_default_to_the_account_language():
    # given
    account = AccountFactory(external_id="crm-fr", name="Lumière", language="fr")
    limits_replace(
        account=account,
        data={
            "recipients": {
                "warning": [{"email": "old@example.com", "language": "en"}],
                "blocked": [{"email": "ops@example.com", "language": "en"}],
            }
        },
    )
    # when: recipients only, no --metric needed
    lines = run(
        "set_limits",
        "crm-fr",
        "--warning-recipient",
        "pm@example.com",
        "--warning-recipient",
        "cto@example.com:en",
    )
    # then
    assert lines[-2:] == [
        "warning recipients: pm@example.com (fr), cto@example.com (en)",
        "blocked recipients: ops@example.com (en)",
    ]


def test_set_limits_none_empties_a_recipient_list(account):
    limits_replace(
        account=account,
        data={"recipients": {"blocked": [{"email": "ops@example.com", "language": "en"}]}},
    )
    run("set_limits", "crm-1", "--blocked-recipient", "none")
    assert limits_document_get(account=account).recipients["blocked"] == ()


def test_set_limits_says_when_nothing_changed(account):
    limits_replace(account=account, data={"limits": {"text_tokens": {"blocked": 20}}})
    lines = run("set_limits", "crm-1", "--metric", "text_tokens", "--blocked", "20")
    assert lines[0] == "No change for Acme (crm-1): the limits already were as given."
    assert Limit.history.count() == 1


@pytest.mark.parametrize(
    ("options", "message"),
    [
        pytest.param(
            ["--metric", "text_tokens", "--warning", "10"],
            f"recipients.warning: {WARNING_RULE}",
            id="warning-needs-a-recipient",
        ),
        pytest.param(
            ["--metric", "text_tokens", "--warning", "10", "--warning-recipient", "none"],
            f"recipients.warning: {WARNING_RULE}",
            id="warning-needs-a-recipient-emptied-list",
        ),
        pytest.param(
            [
                *("--metric", "text_tokens", "--warning", "20", "--blocked", "20"),
                *("--warning-recipient", "pm@example.com"),
            ],
            "limits.text_tokens.warning: "
            "The warning threshold must be lower than the blocked threshold.",
            id="warning-below-blocked",
        ),
        pytest.param(
            ["--metric", "text_tokens", "--blocked", "-1"],
            "limits.text_tokens.blocked: Ensure this value is greater than or equal to 0.",
            id="negative",
        ),
        pytest.param(
            ["--metric", "text_tokens", "--blocked", "1.5"],
            "limits.text_tokens.blocked: A valid integer is required.",
            id="decimal",
        ),
        pytest.param(
            ["--metric", "text_tokens", "--blocked", "ten"],
            "limits.text_tokens.blocked: A valid integer is required.",
            id="word",
        ),
        pytest.param(
            ["--metric", "text_tokens", "--blocked", str(10**15 + 1)],
            "limits.text_tokens.blocked: "
            "Ensure this value is less than or equal to 1000000000000000.",
            id="too-large",
        ),
        pytest.param(
            ["--metric", "video_seconds", "--blocked", "5"],
            "limits.video_seconds: Unknown metric. Expected one of: "
            "audio_transcribed_seconds, audio_analyzed_seconds, text_tokens.",
            id="unknown-metric",
        ),
        pytest.param(
            ["--blocked-recipient", "not-an-address"],
            "recipients.blocked.0.email: Enter a valid email address.",
            id="bad-address",
        ),
        pytest.param(
            ["--blocked-recipient", "ops@example.com:de"],
            "recipients.blocked.0.language: “de” is not a valid choice. Expected one of: en, fr.",
            id="bad-language",
        ),
        pytest.param(
            ["--blocked-recipient", "ops@example.com", "--blocked-recipient", "OPS@example.com"],
            "recipients.blocked.1.email: This address is already in the list.",
            id="duplicate-address",
        ),
        pytest.param(
            ["--metric", "text_tokens", "--warning", "5", "--blocked", "x"],
            "limits.text_tokens.blocked: A valid integer is required.; "
            f"recipients.warning: {WARNING_RULE}",
            id="several-errors-on-one-line",
        ),
    ],
)
def test_set_limits_refuses_what_the_rules_refuse_with_the_service_message(
    account, options, message
):
    # given
    limits_replace(
        account=account,
        data={
            "limits": {"text_tokens": {"blocked": 100}},
            "recipients": {"blocked": [{"email": "ops@example.com", "language": "en"}]},
        },
    )
    before = limits_state(account)
    # when
    with pytest.raises(CommandError) as refused:
        run("set_limits", "crm-1", *options)
    # then
    assert str(refused.value) == message
    assert "\n" not in str(refused.value)
    assert limits_state(account) == before


def test_set_limits_refuses_an_unknown_account():
    with pytest.raises(
        CommandError, match=r"^Unknown account “nope” \(give its id or external id\)\.$"
    ):
        run("set_limits", "nope", "--metric", "text_tokens", "--blocked", "5")


def test_set_limits_refuses_an_account_that_is_not_enterprise():
    account = AccountFactory(external_id="crm-pro", plan=Plan.PRO)
    with pytest.raises(
        CommandError, match=r"^Limits can only be defined for an Enterprise account\.$"
    ):
        run("set_limits", "crm-pro", "--metric", "text_tokens", "--blocked", "5")
    assert not account.limits.exists()


def test_set_limits_needs_a_metric_for_thresholds(account):
    with pytest.raises(CommandError, match=r"^--metric is required with --warning or --blocked\.$"):
        run("set_limits", "crm-1", "--blocked", "5")
    assert not Limit.objects.exists()


def test_set_limits_needs_something_to_change(account):
    with pytest.raises(CommandError, match=r"^Nothing to change: "):
        run("set_limits", "crm-1", "--metric", "text_tokens")


# --- seed_demo ---


def counts() -> dict[str, int]:
    return {
        "accounts": Account.objects.count(),
        "enterprise": Account.objects.filter(plan=Plan.ENTERPRISE).count(),
        "limits": Limit.objects.count(),
        "limit changes": Limit.history.count(),
        "recipients": Recipient.objects.count(),
        "users": get_user_model().objects.count(),
    }


def test_seed_demo_twice_creates_no_duplicates_and_prints_a_working_password(monkeypatch):
    # given
    monkeypatch.delenv("DEMO_ADMIN_PASSWORD", raising=False)
    first = run("seed_demo")
    after_first = counts()
    # when
    second = run("seed_demo")
    # then
    assert counts() == after_first
    assert after_first["enterprise"] >= 3
    assert after_first["accounts"] > after_first["enterprise"]
    assert after_first["recipients"] > 0
    assert {a.timezone for a in Account.objects.filter(plan=Plan.ENTERPRISE)} >= {
        "Europe/Paris",
        "America/Los_Angeles",
        "Pacific/Auckland",
    }
    assert {a.language for a in Account.objects.all()} == {"en", "fr"}
    password = second[-2].removeprefix("Superuser: admin / ")
    assert first[-2] != second[-2], "a new random password on every run"
    assert second[-1] == f"Account manager: manager / {password}"
    admin = authenticate(username="admin", password=password)
    assert admin is not None and admin.is_superuser and admin.is_staff
    manager = authenticate(username="manager", password=password)
    assert manager is not None and manager.is_staff and not manager.is_superuser
    assert manager.groups.get() == Group.objects.get(name=ACCOUNT_MANAGERS)
    assert authenticate(username="admin", password=first[-2].split(" / ")[1]) is None


def test_seed_demo_records_current_usage_once_with_one_account_warning_and_one_blocked():
    # given
    run("seed_demo")
    events = UsageEvent.objects.count()
    statuses = {
        account.external_id: {u.metric: u.status for u in account_usage(account=account)}
        for account in Account.objects.all()
    }
    # when
    run("seed_demo")
    # then
    assert events > 0
    assert UsageEvent.objects.count() == events
    assert statuses["demo-lumiere"]["text_tokens"] == "warning"
    assert statuses["demo-pacific"]["audio_analyzed_seconds"] == "blocked"
    assert set(statuses["demo-kiwi"].values()) == {"ok"}


def test_seed_demo_takes_the_password_from_the_environment(monkeypatch):
    monkeypatch.setenv("DEMO_ADMIN_PASSWORD", "demo-Passw0rd")
    lines = run("seed_demo")
    assert lines[-2:] == [
        "Superuser: admin / demo-Passw0rd",
        "Account manager: manager / demo-Passw0rd",
    ]
    assert authenticate(username="admin", password="demo-Passw0rd") is not None


# --- through manage.py, as ops run them ---


def manage(*args: str, database: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DATABASE_URL": f"sqlite:///{database}", "PYTHONIOENCODING": "utf-8"}
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=settings.BASE_DIR,
        env=env,
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=60,
        check=False,
    )


def test_bad_input_exits_non_zero_with_one_line_on_stderr(tmp_path):
    # given: an empty, migrated database
    database = tmp_path / "ops.sqlite3"
    assert manage("migrate", "--no-input", "-v", "0", database=database).returncode == 0
    # when
    unknown = manage(
        "set_limits", "nope", "--metric", "text_tokens", "--blocked", "5", database=database
    )
    missing = manage("set_limits", database=database)
    # then
    assert (unknown.returncode, unknown.stdout) == (1, "")
    assert unknown.stderr.splitlines() == [
        "CommandError: Unknown account “nope” (give its id or external id)."
    ]
    assert (missing.returncode, missing.stdout) == (2, "")
    assert missing.stderr.splitlines() == [
        "manage.py set_limits: error: the following arguments are required: ACCOUNT (see --help)"
    ]
