"""factory-boy factories shared by every test package."""

from __future__ import annotations

import factory
from django.contrib.auth import get_user_model

from accounts.models import Account, Language, Limit, Plan, Recipient


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = get_user_model()
        django_get_or_create = ("username",)

    username = factory.Sequence(lambda n: f"user{n}")
    email = factory.LazyAttribute(lambda u: f"{u.username}@example.com")
    password = factory.django.Password("correct horse battery staple")


class AccountFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Account

    external_id = factory.Sequence(lambda n: f"crm-{n:05d}")
    name = factory.Sequence(lambda n: f"Customer {n}")
    plan = Plan.ENTERPRISE
    language = Language.EN
    timezone = "Europe/Paris"


class LimitFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Limit

    account = factory.SubFactory(AccountFactory)
    metric = "text_tokens"
    warning = 800_000
    blocked = 1_000_000


class RecipientFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Recipient

    account = factory.SubFactory(AccountFactory)
    level = "warning"
    email = factory.Sequence(lambda n: f"pm{n}@example.com")
    language = Language.EN
