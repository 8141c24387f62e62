"""``manage.py seed_demo``."""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.db import transaction
from django.utils import timezone
from django.utils.translation import gettext
from django.utils.translation import gettext_lazy as _

from accounts.management.base import OpsCommand
from accounts.models import Account, Language, Plan
from accounts.roles import ACCOUNT_MANAGERS
from backoffice.services import account_upsert, limits_replace, usage_events_record
from usage.periods import period_containing

PASSWORD_VARIABLE = "DEMO_ADMIN_PASSWORD"
# What is printed per demo account, by (created, with limits).
SEEDED = {
    (True, True): _(
        "Created %(plan)s account %(name)s (%(external_id)s), %(timezone)s, %(language)s, "
        "with limits"
    ),
    (True, False): _(
        "Created %(plan)s account %(name)s (%(external_id)s), %(timezone)s, %(language)s"
    ),
    (False, True): _(
        "Updated %(plan)s account %(name)s (%(external_id)s), %(timezone)s, %(language)s, "
        "with limits"
    ),
    (False, False): _(
        "Updated %(plan)s account %(name)s (%(external_id)s), %(timezone)s, %(language)s"
    ),
}


@dataclass(frozen=True)
class DemoAccount:
    external_id: str
    name: str
    plan: str
    language: str
    timezone: str
    # A whole limits document, as PUT takes it; ``None`` leaves the limits alone.
    limits: dict[str, Any] | None = None
    # Usage of the current period per metric, recorded as ten events spread over it.
    usage: dict[str, int] | None = None


DEMO_ACCOUNTS = (
    DemoAccount(
        "demo-lumiere",
        "Lumière Médias",
        Plan.ENTERPRISE,
        Language.FR,
        "Europe/Paris",
        {
            "limits": {
                "audio_transcribed_seconds": {"warning": 36_000, "blocked": 72_000},
                "text_tokens": {"warning": 800_000, "blocked": 1_000_000},
            },
            "recipients": {
                "warning": [{"email": "chef-de-projet@lumiere.example", "language": "fr"}],
                "blocked": [
                    {"email": "ops-alertes@lumiere.example", "language": "fr"},
                    {"email": "usage-alerts@vendor.example", "language": "en"},
                ],
            },
        },
        {"audio_transcribed_seconds": 21_600, "text_tokens": 850_000},  # text: warning
    ),
    DemoAccount(
        "demo-pacific",
        "Pacific Coast Podcasts",
        Plan.ENTERPRISE,
        Language.EN,
        "America/Los_Angeles",
        # A blocked threshold alone needs no recipient: it still blocks.
        {"limits": {"audio_analyzed_seconds": {"warning": None, "blocked": 180_000}}},
        {"audio_analyzed_seconds": 181_000, "text_tokens": 42_000},  # audio: blocked
    ),
    DemoAccount(
        "demo-kiwi",
        "Kiwi Legal Transcripts",
        Plan.ENTERPRISE,
        Language.EN,
        "Pacific/Auckland",
        {
            "limits": {
                "audio_transcribed_seconds": {"warning": 360_000, "blocked": None},
                "text_tokens": {"warning": 5_000_000, "blocked": 6_000_000},
            },
            "recipients": {
                "warning": [
                    {"email": "legal-ops@kiwi.example", "language": "en"},
                    {"email": "account-manager@vendor.example", "language": "fr"},
                ],
                "blocked": [{"email": "legal-ops@kiwi.example", "language": "en"}],
            },
        },
        {"audio_transcribed_seconds": 120_000, "text_tokens": 1_200_000},  # all ok
    ),
    DemoAccount(
        "demo-studio", "Small Studio", Plan.PRO, Language.EN, "UTC", None, {"text_tokens": 9_000}
    ),
)


class Command(OpsCommand):
    help = _(
        "Create or bring back the demo data: three Enterprise accounts with limits and "
        "recipients (Europe/Paris in French, America/Los_Angeles and Pacific/Auckland in "
        "English), one Pro account without limits, current-period usage for each (one account in "
        "warning, one blocked), a superuser “admin” and a staff user "
        "“manager” in the “%(group)s” group. Both users get the same password: "
        "$%(variable)s when set, else a new random one on every run; it is printed. "
        "Running it again creates no duplicates: it resets the demo accounts, their limits "
        "and the two users to the values above and changes nothing else."
    )
    help_values = {"group": ACCOUNT_MANAGERS, "variable": PASSWORD_VARIABLE}

    def handle(self, *args: Any, **options: Any) -> None:
        password = os.environ.get(PASSWORD_VARIABLE) or secrets.token_urlsafe(12)
        with transaction.atomic():
            accounts = self._seed_accounts()
            self._seed_users(password)
        self._seed_usage(accounts)
        self.stdout.write(gettext("Superuser: admin / %(password)s") % {"password": password})
        self.stdout.write(
            gettext("Account manager: manager / %(password)s") % {"password": password}
        )

    def _seed_usage(self, accounts: list[Account]) -> None:
        """Usage of the current period; event ids are fixed, so a second run adds nothing."""
        now = timezone.now()
        for demo, account in zip(DEMO_ACCOUNTS, accounts, strict=True):
            start = period_containing(now, account.zone).start
            step = (now - start) / 10
            events = [
                {
                    "event_id": f"demo-{metric}-{n}",
                    "account": str(account.pk),
                    "metric": metric,
                    "quantity": total // 10,
                    "occurred_at": (start + step * n).isoformat(),
                    "source": "seed_demo",
                }
                for metric, total in (demo.usage or {}).items()
                for n in range(10)
            ]
            if events:
                usage_events_record(payload={"events": events}, now=now)

    def _seed_accounts(self) -> list[Account]:
        accounts = []
        for demo in DEMO_ACCOUNTS:
            account, created = account_upsert(
                external_id=demo.external_id,
                name=demo.name,
                plan=demo.plan,
                language=demo.language,
                timezone_name=demo.timezone,
            )
            if demo.limits is not None:
                limits_replace(account=account, data=demo.limits, reason="seed_demo")
            self.stdout.write(
                SEEDED[created, bool(demo.limits)]
                % {
                    "plan": account.get_plan_display(),
                    "name": account.name,
                    "external_id": account.external_id,
                    "timezone": account.timezone,
                    "language": account.language,
                }
            )
            accounts.append(account)
        return accounts

    def _seed_users(self, password: str) -> None:
        user_model = get_user_model()
        managers = Group.objects.get(name=ACCOUNT_MANAGERS)
        for username, is_superuser in (("admin", True), ("manager", False)):
            user, _created = user_model._default_manager.get_or_create(
                **{user_model.USERNAME_FIELD: username},
                defaults={"email": f"{username}@example.com"},
            )
            user.is_active = True
            user.is_staff = True
            user.is_superuser = is_superuser
            user.set_password(password)
            user.save()
            if not is_superuser:
                user.groups.add(managers)
