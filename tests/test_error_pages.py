"""The admin's 403 page: its own frame and language, not Django's bare "403 Forbidden"."""

from __future__ import annotations

import re

import pytest
from django.urls import reverse

from tests.factories import AccountFactory, UserFactory

pytestmark = pytest.mark.django_db

PAGES = {
    "en": (
        "<title>Access denied | Usage limits</title>",
        "<h1>Access denied</h1>",
        "You do not have the permission to see or change this page.",
        "Limits and recipients are changed by account managers. If your work needs it, ask an "
        "administrator to add you to the “Account managers” group.",
        "Back to the back-office home page",
    ),
    "fr": (
        "<title>Accès refusé | Limites d’usage</title>",
        "<h1>Accès refusé</h1>",
        "Vous n’avez pas la permission de voir ou de modifier cette page.",
        "Les limites et les destinataires sont modifiés par les gestionnaires de comptes. Si "
        "votre travail le demande, demandez à un administrateur de vous ajouter au groupe "
        "« Account managers ».",
        "Retour à l’accueil du back-office",
    ),
}


def _text(html: str) -> str:
    return re.sub(r"\s+", " ", html)


@pytest.mark.parametrize("language", list(PAGES))
def test_staff_without_permission_get_the_admin_403_page_in_their_language(client, language):
    # given: staff in no group
    client.force_login(UserFactory(username="support", is_staff=True))
    account = AccountFactory()
    # when
    response = client.get(
        reverse("admin:accounts_account_change", args=[account.pk]),
        HTTP_ACCEPT_LANGUAGE=language,
    )
    # then: the admin's page (header, breadcrumbs, a way back), with the explanation
    assert response.status_code == 403
    assert response["Content-Type"] == "text/html; charset=utf-8"
    body = _text(response.content.decode())
    for text in PAGES[language]:
        assert text in body
    assert 'id="site-name"' in body
    assert f'<a href="{reverse("admin:index")}">' in body
    assert "403 Forbidden" not in body
