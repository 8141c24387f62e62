"""Admin forms of an account: its fields, its limits per metric and its recipients.

The account form and the recipients inline formset only *parse* what was typed. The
whole limits document (thresholds of every metric and both recipient lists) is then
checked by ``accounts.services.limits_document_validate``, the one place of the rules,
and each refusal is shown where the user looks:

- a threshold error on the matching threshold field of the account form;
- a recipient list error (e.g. the warning list is empty) above the recipients inline; when
  a threshold is its cause (a warning threshold without a warning recipient), also on
  that threshold's field and at the top of the page, where the user looks first;
- an error about one address on that row of the inline;
- "not Enterprise" (and anything else) at the top of the account form.

How the two halves meet: Django's ``ModelAdmin._changeform_view`` builds the account
form, then the inline formsets with ``instance=form.instance`` (the same object), then
calls ``form.is_valid()`` *before* ``all_valid(formsets)``. So ``AccountAdminForm.clean()``
leaves its thresholds on the instance as a ``LimitsDraft``; by the time
``RecipientInlineFormSet.clean()`` runs, the form is fully cleaned (its ``_post_clean()``
has copied the posted plan and language onto the instance, so the rules see the account
as it is about to be saved) and the formset validates the whole document with its own
rows. The admin saves only when the form was valid and every formset is valid, so a
refused document makes the formset invalid (``is_valid()``) even when its errors sit on
the account form: nothing is saved, account fields included. On success the validated
document stays on the draft, and ``AccountAdmin.save_related`` hands it to
``backoffice.services.limits_replace``, which owns the writes and their history.

Scoped limits (SPEC section 11.2) are one more part of the same document: the scoped
limits inline (``ScopedLimitInlineFormSet``) only parses its rows, one per line, with one
field per label key (blank: any value), and registers itself on the account being edited;
the recipients formset asks it for its rows when it validates the whole document, and puts
each ``scoped_limits.<index>.<field>`` error on that row's field (a label's error on that
label's field, a list error above the inline). So the inline may come before or after the
recipients on the page, and a scoped warning threshold without a warning recipient is
refused (rule 4) above the recipients inline, like a monthly one.

Extensions follow the same idea with their own service: ``ExtensionInlineForm`` parses a
new extension and has ``usage.services.extension_validate`` judge it (see the form).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from django import forms
from django.core.exceptions import NON_FIELD_ERRORS
from django.forms.models import construct_instance
from django.utils.text import format_lazy
from django.utils.translation import gettext_lazy as _

from .labels import LABEL_KEYS
from .metrics import METRICS, MetricSpec
from .models import Account, Language, Level, Recipient, ScopedLimit
from .selectors import limits_document_get
from .services import (
    MSG_WARNING_NEEDS_RECIPIENT,
    AccountNotEnterprise,
    LimitsInvalid,
    limits_document_validate,
)

ACCOUNT_FIELDS = ("name", "external_id", "plan", "is_active", "language", "timezone")

UNIT_LABELS = {"seconds": _("seconds"), "tokens": _("tokens")}
_LIMIT_LABELS = {
    Level.WARNING: _("{metric}: warning threshold"),
    Level.BLOCKED: _("{metric}: blocked threshold"),
}


def limit_field_name(metric: str, level: str) -> str:
    """The account form's field for one threshold, e.g. ``limit_text_tokens_warning``."""
    return f"limit_{metric}_{level}"


def limit_field_rows() -> list[tuple[str, ...]]:
    """One fieldset row per metric of ``METRICS``: its warning and blocked fields."""
    return [tuple(limit_field_name(metric, level) for level in Level.values) for metric in METRICS]


def limit_field_names() -> frozenset[str]:
    return frozenset(name for row in limit_field_rows() for name in row)


def limit_label(spec: MetricSpec, level: str) -> str:
    """``Text tokens: warning threshold``, in the active language when rendered."""
    return format_lazy(_LIMIT_LABELS[Level(level)], metric=spec.label)


def _limit_field(spec: MetricSpec, level: str) -> forms.IntegerField:
    # Bounds are the service's rules: the field only parses a whole number.
    return forms.IntegerField(
        label=limit_label(spec, level),
        required=False,
        help_text=format_lazy(
            _("In {unit}; blank = unlimited."), unit=UNIT_LABELS.get(spec.unit, spec.unit)
        ),
        widget=forms.NumberInput(attrs={"min": 0, "step": 1}),
    )


@dataclass
class LimitsDraft:
    """What the account form leaves on its instance for the recipients formset."""

    form: AccountAdminForm
    limits: dict[str, dict[str, int | None]]
    # The whole document, set once the service accepted it; what the admin then stores.
    document: dict[str, Any] | None = field(default=None)


def label_field_name(key: str) -> str:
    """The scoped limits inline's field for one label key, e.g. ``label_model``."""
    return f"label_{key}"


def _units_help() -> Any:
    """``seconds for Audio transcribed, Audio analyzed; tokens for Text tokens``."""
    by_unit: dict[str, list[Any]] = {}
    for spec in METRICS.values():
        by_unit.setdefault(spec.unit, []).append(spec.label)
    parts = [
        format_lazy(
            _("{unit} for {metrics}"),
            unit=UNIT_LABELS.get(unit, unit),
            metrics=format_lazy(", ".join("{}" for _label in labels), *labels),
        )
        for unit, labels in by_unit.items()
    ]
    return format_lazy(
        _("In the metric's unit ({units}); blank = unlimited."),
        units=format_lazy("; ".join("{}" for _part in parts), *parts),
    )


def _scoped_limit_form_fields() -> dict[str, forms.Field]:
    # Bounds are the service's rules: the number fields only parse a whole number.
    fields: dict[str, forms.Field] = {
        "window_days": forms.IntegerField(
            label=_("window days"),
            required=False,
            help_text=_("Rolling window only: 1 to 366 days."),
            widget=forms.NumberInput(attrs={"min": 1, "step": 1, "style": "width: 5em"}),
        ),
    }
    for key, name in LABEL_KEYS.items():
        fields[label_field_name(key)] = forms.CharField(
            label=name,
            required=False,
            strip=True,
            help_text=_("Blank = any."),
            widget=forms.TextInput(attrs={"size": 10}),
        )
    for level in Level.values:
        fields[level] = forms.IntegerField(
            label=Level(level).label,
            required=False,
            help_text=_units_help(),
            widget=forms.NumberInput(attrs={"min": 0, "step": 1}),
        )
    return fields


def _scoped_limit_form_init(self: forms.ModelForm, *args: Any, **kwargs: Any) -> None:
    forms.ModelForm.__init__(self, *args, **kwargs)
    for key, value in (self.instance.labels or {}).items():
        self.initial.setdefault(label_field_name(key), value)


def _scoped_limit_form_post_clean(self: forms.ModelForm) -> None:
    # Only parse: the rules are the service's, checked with the whole document (the
    # model's constraints would word them otherwise). The instance is filled for the
    # admin's change message; the service writes the rows.
    self.instance = construct_instance(self, self.instance, self._meta.fields, self._meta.exclude)
    self.instance.labels = self.labels_typed()


def _scoped_limit_form_labels_typed(self: forms.ModelForm) -> dict[str, Any]:
    """The labels as typed, blank ones left out."""
    labels = {}
    for key in LABEL_KEYS:
        name = label_field_name(key)
        value = self.cleaned_data.get(name, self[name].value())
        if value not in (None, ""):
            labels[key] = value
    return labels


class _ScopedLimitMeta:
    model = ScopedLimit
    fields = ("metric", "period", "window_days", "warning", "blocked")


# Built from LABEL_KEYS, so that a new label key gets its column by itself.
ScopedLimitInlineForm = type(
    "ScopedLimitInlineForm",
    (forms.ModelForm,),
    {
        "__module__": __name__,
        "__doc__": "One scoped limit row: parsed here, judged with the whole document.",
        "Meta": _ScopedLimitMeta,
        "__init__": _scoped_limit_form_init,
        "_post_clean": _scoped_limit_form_post_clean,
        "labels_typed": _scoped_limit_form_labels_typed,
        **_scoped_limit_form_fields(),
    },
)


class ScopedLimitInlineFormSet(forms.BaseInlineFormSet):
    """The scoped limits inline; its rows are judged by the recipients formset, with the
    whole document (see the module doc). It never writes."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.instance._scoped_limits_formset = self

    def rows(self) -> list[tuple[forms.Form, dict[str, Any]]]:
        """``(form, item)`` per row to submit, in page order: untouched extra rows and
        deleted rows left out, a row that failed to parse submitted as typed."""
        self.errors  # noqa: B018 (parses every row, once)
        rows = []
        for form in self.forms:
            if self.can_delete and self._should_delete_form(form):
                continue
            if form in self.extra_forms and not form.has_changed():
                continue
            item: dict[str, Any] = {}
            for name in ("metric", "period", "window_days", *Level.values):
                value = form.cleaned_data.get(name, form[name].value())
                if value in (None, "") and name in ("metric", "period"):
                    continue  # left out: the service says it is required
                item[name] = None if value == "" else value
            item["labels"] = form.labels_typed()
            rows.append((form, item))
        # The service's errors name rows by their index in this list (``place_error``).
        self._rows_submitted = rows
        return rows

    def place_error(self, index: int, path: list[str], message: Any) -> None:
        """Show the service's error at ``scoped_limits.<index>.<path>`` on that row."""
        form = self._rows_submitted[index][0]
        if path[:1] == ["labels"] and len(path) == 2 and path[1] in LABEL_KEYS:
            name: str | None = label_field_name(path[1])
        elif len(path) == 1 and path[0] in form.fields:
            name = path[0]
        else:
            name = None
        if name is not None and form.has_error(name):
            return  # the field could not be parsed and says so already
        form.add_error(name, message)

    def add_list_error(self, message: Any) -> None:
        self.non_form_errors().append(message)


class AccountAdminForm(forms.ModelForm):
    """An account's own fields and, when ``edits_limits``, one field per threshold."""

    # The admin turns this off for users who may not change limits (see AccountAdmin.get_form).
    edits_limits = True

    class Meta:
        model = Account
        fields = ACCOUNT_FIELDS

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not self.edits_limits:
            return
        current = (
            None
            if self.instance._state.adding
            else limits_document_get(account=self.instance).limits
        )
        for metric, spec in METRICS.items():
            for level in Level.values:
                name = limit_field_name(metric, level)
                self.fields[name] = _limit_field(spec, level)
                if current is not None:
                    self.initial.setdefault(name, getattr(current[metric], level))

    def clean(self) -> dict[str, Any]:
        cleaned_data = super().clean()
        if self.edits_limits:
            # A threshold that failed to parse counts as blank here: its field already
            # shows the error and the form is invalid, so nothing will be saved.
            self.instance._limits_draft = LimitsDraft(
                form=self,
                limits={
                    metric: {
                        level: cleaned_data.get(limit_field_name(metric, level))
                        for level in Level.values
                    }
                    for metric in METRICS
                },
            )
        return cleaned_data

    def add_threshold_cause(self, level: str, message: Any) -> None:
        """Show a recipient-list error caused by thresholds on each threshold of ``level``
        that is set, and at the top of the form."""
        draft: LimitsDraft = self.instance._limits_draft
        for metric, levels in draft.limits.items():
            name = limit_field_name(metric, level)
            if levels.get(level) is not None and name in self.fields:
                self.add_error(name, message)
        self.add_error(None, message)

    def add_limits_error(self, path: list[str], message: Any) -> None:
        """Show a service error at ``limits.<metric>.<level>`` on that field, else on top."""
        name = limit_field_name(*path[1:3]) if len(path) == 3 else None
        self.add_error(name if name in self.fields else None, message)


class RecipientInlineForm(forms.ModelForm):
    """One recipient row; a blank language means the account's language."""

    language = forms.ChoiceField(
        label=_("language"),
        required=False,
        choices=[("", _("Account's language")), *Language.choices],
        help_text=_("Blank = the account's language."),
    )

    class Meta:
        model = Recipient
        fields = ("level", "email", "language")


@dataclass(frozen=True)
class _Row:
    form: RecipientInlineForm
    level: str
    item: dict[str, Any]


class RecipientInlineFormSet(forms.BaseInlineFormSet):
    """The recipients inline; validates the whole limits document (see the module doc).

    It never writes: ``AccountAdmin.save_related`` calls ``save(commit=False)`` only so
    that the admin's change message can list what was added, changed and deleted.
    """

    document_refused = False

    def clean(self) -> None:
        super().clean()
        draft: LimitsDraft | None = getattr(self.instance, "_limits_draft", None)
        if draft is None:
            return  # the limits are not edited on this page
        rows = self._rows()
        data = {
            "limits": draft.limits,
            "recipients": {
                level: [row.item for row in rows if row.level == level] for level in Level.values
            },
        }
        scoped: ScopedLimitInlineFormSet | None = getattr(
            self.instance, "_scoped_limits_formset", None
        )
        if scoped is not None:
            data["scoped_limits"] = [item for _form, item in scoped.rows()]
        elif not self.instance._state.adding:
            # Not edited on this page: kept as they are.
            stored = limits_document_get(account=self.instance).as_data()
            data["scoped_limits"] = stored["scoped_limits"]
        try:
            limits_document_validate(account=self.instance, data=data)
        except AccountNotEnterprise as refused:
            self.document_refused = True
            draft.form.add_error(None, refused.message)
        except LimitsInvalid as refused:
            self.document_refused = True
            list_errors = self._place_errors(refused, draft.form, rows, scoped)
            if list_errors:
                raise forms.ValidationError(list_errors) from None
        else:
            draft.document = data

    def is_valid(self) -> bool:
        # A refusal may sit on the account form only (a threshold error), after the admin
        # has already found that form valid: the formset answers for the whole document.
        return super().is_valid() and not self.document_refused

    def _rows(self) -> list[_Row]:
        """The rows to submit, in page order; untouched extra rows and deleted rows left out.

        A row that failed to parse is submitted with what was typed, so the service judges
        the lists as the user sees them; its own messages are not repeated on that row.
        """
        rows = []
        for form in self.forms:
            if self.can_delete and self._should_delete_form(form):
                continue
            if form in self.extra_forms and not form.has_changed():
                continue
            values = {
                name: form.cleaned_data.get(name, form[name].value())
                for name in ("level", "email", "language")
            }
            if values["level"] not in Level.values:
                continue  # the row shows its own error; it belongs to no list
            item = {"email": values["email"] or ""}
            if values["language"]:
                item["language"] = values["language"]
            rows.append(_Row(form=form, level=values["level"], item=item))
        return rows

    @staticmethod
    def _place_errors(
        refused: LimitsInvalid,
        account_form: AccountAdminForm,
        rows: list[_Row],
        scoped: ScopedLimitInlineFormSet | None,
    ) -> list[Any]:
        """Put each error where it belongs; return those about a whole recipient list."""
        list_errors = []
        for dotted, message in refused.messages():
            path = dotted.split(".")
            if path[0] == "scoped_limits" and scoped is not None:
                if len(path) >= 3 and path[1].isdigit():
                    scoped.place_error(int(path[1]), path[2:], message)
                else:
                    scoped.add_list_error(message)
            elif path[0] == "limits":
                account_form.add_limits_error(path, message)
            elif path[0] == "recipients" and len(path) == 2:
                list_errors.append(message)
                if message == str(MSG_WARNING_NEEDS_RECIPIENT):
                    account_form.add_threshold_cause(path[1], message)
            elif path[0] == "recipients" and len(path) == 4 and path[2].isdigit():
                level_rows = [row for row in rows if row.level == path[1]]
                form = level_rows[int(path[2])].form
                name = path[3] if path[3] in form.fields else NON_FIELD_ERRORS
                if not form.has_error(name):
                    form.add_error(None if name == NON_FIELD_ERRORS else name, message)
            else:
                account_form.add_error(None, message)
        return list_errors
