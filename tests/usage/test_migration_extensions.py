"""The migration to extensions per limit line keeps every extension granted before it
(usage 0009): each stays an extension of its whole-metric monthly line, for its month."""

from __future__ import annotations

from datetime import date

import pytest
from django.core.management import call_command

from accounts.models import Account as Current
from tests.migrations import migrate
from usage.models import Extension as CurrentExtension
from usage.periods import Period
from usage.selectors import usage_for

BEFORE = [("usage", "0008_usagelabelset"), ("accounts", "0006_scoped_limits")]
AFTER = [("usage", "0009_extension_per_line")]


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_extensions_granted_before_stay_on_their_monthly_line():
    # given: the database as it was before the migration, with a scoped limit beside
    apps = migrate(BEFORE)
    Account = apps.get_model("accounts", "Account")
    Limit = apps.get_model("accounts", "Limit")
    ScopedLimit = apps.get_model("accounts", "ScopedLimit")
    Extension = apps.get_model("usage", "Extension")
    account = Account.objects.create(external_id="acme", name="Acme", timezone="Europe/Paris")
    Limit.objects.create(account=account, metric="text_tokens", blocked=1000)
    ScopedLimit.objects.create(
        account=account,
        metric="text_tokens",
        period="day",
        labels={},
        labels_key="",
        blocked=50,
    )
    for period, amount in ((date(2027, 2, 1), 300), (date(2027, 3, 1), 200)):
        Extension.objects.create(
            account=account, metric="text_tokens", period=period, amount=amount, reason="Old"
        )

    # when
    migrate(AFTER)
    call_command("migrate", verbosity=0)

    # then
    assert sorted(
        CurrentExtension.objects.values_list(
            "metric", "scoped_limit", "period", "period_start", "amount"
        )
    ) == [
        ("text_tokens", None, date(2027, 2, 1), None, 300),
        ("text_tokens", None, date(2027, 3, 1), None, 200),
    ]
    account = Current.objects.get(external_id="acme")
    march = usage_for(periods={account.pk: Period(2027, 3, account.zone)})
    assert (march[(account.pk, "text_tokens")].extension, march[(account.pk, "text_tokens")]
            .effective_blocked) == (200, 1200)  # fmt: skip
