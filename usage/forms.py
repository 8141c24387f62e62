"""Forms of usage shown in the admin."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django import forms
from django.core.exceptions import ValidationError
from django.utils.translation import gettext_lazy as _

from accounts.models import Account
from accounts.selectors import LimitsDocument
from accounts.services import limits_document_validate

from .models import Extension
from .selectors import CHOICE_PERIOD_SEPARATOR, SCOPED_LINE_CHOICE, extension_line_choices
from .services import extension_validate


def extension_line_parse(value: str) -> dict[str, Any] | None:
    """The ``extension_grant`` arguments naming the line (and for a scoped line, the
    period) of a ``line`` choice; ``None`` when it is not one."""
    if not value.startswith(SCOPED_LINE_CHOICE):
        return {"metric": value, "scoped_limit_id": None}
    line, _separator, start = value.removeprefix(SCOPED_LINE_CHOICE).partition(
        CHOICE_PERIOD_SEPARATOR
    )
    try:
        period_start = datetime.fromisoformat(start)
    except ValueError:
        return None
    if not line.isdigit() or period_start.utcoffset() is None:
        return None
    return {"metric": None, "scoped_limit_id": int(line), "period_start": period_start}


class LineChoiceField(forms.ChoiceField):
    """The line of an extension. A scoped line offered in a period that has ended since is
    still a valid choice: the service refuses it with its own message."""

    def valid_value(self, value: Any) -> bool:
        if super().valid_value(value):
            return True
        parsed = extension_line_parse(str(value))
        if parsed is None or parsed["scoped_limit_id"] is None:
            return False
        offered = (extension_line_parse(str(key)) for key, _words in self.choices if key)
        return any(
            choice is not None and choice["scoped_limit_id"] == parsed["scoped_limit_id"]
            for choice in offered
        )


class ExtensionInlineFormSet(forms.BaseInlineFormSet):
    """Gives each form the account being edited, whose lines it offers."""

    def get_form_kwargs(self, index: int | None) -> dict[str, Any]:
        return {**super().get_form_kwargs(index), "account": self.instance}


class ExtensionInlineForm(forms.ModelForm):
    """A new extension of one line of the account, for the line's current period, judged by
    ``extension_validate``.

    The line is chosen by its words (metric, period, labels). The fields only parse what
    was typed; ``clean()`` asks the service's own check (``extension_validate``), so its
    refusals show on this row with its messages and nothing is written before the whole
    page is valid. ``AccountAdmin.save_related`` then grants it with ``extension_grant``
    (through ``grant_row``), which checks the same way.
    """

    line = LineChoiceField(
        label=_("limit line"),
        choices=(),
        help_text=_("The extension raises this line's blocked threshold in its current period."),
    )
    amount = forms.IntegerField(
        label=Extension._meta.get_field("amount").verbose_name,
        help_text=Extension._meta.get_field("amount").help_text,
        widget=forms.NumberInput(attrs={"min": 1, "step": 1}),
    )
    # Blank is refused by the service, with its message.
    reason = forms.CharField(
        label=Extension._meta.get_field("reason").verbose_name,
        required=False,
        widget=forms.TextInput(attrs={"size": 40}),
    )

    # Where the service's errors go: what the user chose or typed; the others (account,
    # period) above the row.
    error_fields = {"line": "line", "metric": "line", "amount": "amount", "reason": "reason"}

    class Meta:
        model = Extension
        fields = ("amount", "reason")

    def __init__(self, *args: Any, account: Account | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if account is not None and not account._state.adding:
            self.fields["line"].choices = [
                ("", "---------"),
                *extension_line_choices(account=account),
            ]

    def grant_row(self) -> dict[str, Any]:
        """The ``extension_grant`` arguments of this valid row, the actor aside."""
        line = extension_line_parse(self.cleaned_data["line"])
        assert line is not None  # ``LineChoiceField`` took it
        return {
            **line,
            "amount": self.cleaned_data["amount"],
            "reason": self.cleaned_data["reason"],
        }

    @staticmethod
    def _limits_saved_with(account: Account) -> LimitsDocument | None:
        """The limits this page saves before granting (``AccountAdmin.save_related``), once
        the recipients formset accepted them: a line it removes, or whose blocked threshold
        it clears, cannot take an extension. ``None`` when the page leaves them as stored."""
        draft = getattr(account, "_limits_draft", None)
        document = getattr(draft, "document", None)
        if document is None:
            return None
        return limits_document_validate(account=account, data=document)

    def clean(self) -> dict[str, Any]:
        cleaned_data = super().clean()
        # The account being edited, as posted (the inline's foreign key field returns it).
        account = cleaned_data.get("account")
        line = extension_line_parse(cleaned_data.get("line") or "")
        if account is None or account._state.adding or line is None:
            return cleaned_data
        try:
            extension_validate(
                account=account,
                **line,
                amount=cleaned_data.get("amount"),
                reason=cleaned_data.get("reason") or "",
                limits=self._limits_saved_with(account),
            )
        except ValidationError as refused:
            for name, errors in refused.error_dict.items():
                field = self.error_fields.get(name)
                if field is not None and self.has_error(field):
                    continue  # the field could not be parsed and says so already
                self.add_error(field, errors)
        return cleaned_data
