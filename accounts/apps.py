from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class AccountsConfig(AppConfig):
    name = "accounts"
    verbose_name = _("Accounts and limits")

    def ready(self) -> None:
        # Knox names its tokens after its class ("Auth tokens"), in no language: the admin
        # shows our names, translated. Set on ``_meta`` alone, not on its Meta, so that
        # Knox's migrations do not change.
        from knox.models import AuthToken

        self.apps.get_app_config("knox").verbose_name = _("API tokens")
        AuthToken._meta.verbose_name = _("API token")
        AuthToken._meta.verbose_name_plural = _("API tokens")

        from .generations import announce_changes_of
        from .models import Account, Limit, ScopedLimit

        announce_changes_of(Account, Limit, ScopedLimit)
