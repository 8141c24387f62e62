"""Forms of usage shown in the admin."""

from __future__ import annotations

from typing import Any

from django import forms
from django.core.exceptions import ValidationError

from .models import Extension
from .services import extension_validate


class ExtensionInlineForm(forms.ModelForm):
    """A new extension of the account's current period, judged by ``extension_validate``.

    The fields only parse what was typed; ``clean()`` asks the service's own check
    (``extension_validate``), so its refusals show on this row with its messages and
    nothing is written before the whole page is valid. ``AccountAdmin.save_related``
    then grants it with ``extension_grant``, which checks the same way.
    """

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

    # What the user types; the service's other errors (account, period) go above the row.
    typed_fields = ("metric", "amount", "reason")

    class Meta:
        model = Extension
        fields = ("metric", "amount", "reason")

    def clean(self) -> dict[str, Any]:
        cleaned_data = super().clean()
        # The account being edited, as posted (the inline's foreign key field returns it).
        account = cleaned_data.get("account")
        if account is None or account._state.adding:
            return cleaned_data
        try:
            extension_validate(
                account=account,
                metric=cleaned_data.get("metric"),
                amount=cleaned_data.get("amount"),
                reason=cleaned_data.get("reason") or "",
            )
        except ValidationError as refused:
            for name, errors in refused.error_dict.items():
                field = name if name in self.typed_fields else None
                if field is not None and self.has_error(field):
                    continue  # the field could not be parsed and says so already
                self.add_error(field, errors)
        return cleaned_data
