"""Serializers of the accounts API.

The account serializer renders accounts. The limits serializers render and *describe* the
limits document; they never validate a request: the rules of SPEC section 3 are checked by
``accounts.services`` alone, so that the admin, the API and ``set_limits`` agree on what is
allowed and word a refusal alike.

The limits document comes in two families sharing component names: the answer (every field
present) and the request (every field optional: left out means unlimited or empty for
``PUT``, unchanged for ``PATCH``). drf-spectacular suffixes the request components with
``Request``, so the two never collide in the schema.
"""

from __future__ import annotations

from typing import Any

from django.utils.text import format_lazy
from django.utils.translation import gettext_lazy as _
from drf_spectacular.utils import extend_schema_serializer
from rest_framework import serializers

from accounts.api.base import ErrorSerializer
from accounts.labels import LABEL_KEYS, MAX_VALUE_LENGTH, VALUE
from accounts.metrics import METRICS
from accounts.models import MAX_SCOPED_LIMITS, RECIPIENT_EMAIL_MAX_LENGTH, Account, Language
from accounts.selectors import LimitsDocument
from accounts.services import MAX_RECIPIENTS_PER_LEVEL, MAX_THRESHOLD, AccountNotEnterprise
from accounts.windows import MAX_ROLLING_DAYS, PeriodKind


class AccountSerializer(serializers.ModelSerializer):
    """An account, as synced from the CRM."""

    class Meta:
        model = Account
        fields = ["id", "external_id", "name", "plan", "language", "timezone"]
        read_only_fields = fields
        extra_kwargs = {
            "id": {"help_text": _("The account's id, used in the URLs of the API.")},
            "external_id": {"help_text": _("The account's id in the CRM.")},
            "name": {"help_text": _("The account's name.")},
            "plan": {"help_text": _("The plan's code; only Enterprise accounts take limits.")},
            "language": {
                "help_text": _("The language of recipients added without one (en or fr).")
            },
            "timezone": {
                "help_text": _(
                    "IANA name, e.g. Europe/Paris. Periods are calendar months in this zone."
                )
            },
        }


def _sentences(*parts: Any) -> Any:
    """The ``parts`` that are not ``None`` joined by spaces, translated when rendered."""
    # ``is not None``, not truthiness: testing a lazy string would translate it at import.
    given = [part for part in parts if part is not None]
    return format_lazy(" ".join("{}" for _part in given), *given)


def _serializer_class(
    name: str, component: str, doc: str, fields: dict[str, serializers.Field]
) -> type[serializers.Serializer]:
    """A ``Serializer`` subclass with ``fields``, named ``component`` in the schema."""
    cls = serializers.SerializerMetaclass(
        name, (serializers.Serializer,), {"__doc__": doc, "__module__": __name__, **fields}
    )
    return extend_schema_serializer(component_name=component)(cls)


def _limits_document_serializer(*, request: bool) -> type[serializers.Serializer]:
    """The limits document's serializer: of the answer, or of a ``PUT``/``PATCH`` body."""
    required = not request
    suffix = "Input" if request else ""
    threshold_left_out = _("Left out: none for PUT, unchanged for PATCH.") if request else None
    at_most = format_lazy(_("At most {limit}."), limit=MAX_RECIPIENTS_PER_LEVEL)
    list_left_out = (
        _("Left out: empty for PUT, unchanged for PATCH. Null empties it.") if request else None
    )
    thresholds = _serializer_class(
        f"Thresholds{suffix}Serializer",
        "Thresholds",
        "The thresholds of one metric, in the metric's unit; null means no threshold.",
        {
            "warning": serializers.IntegerField(
                required=required,
                allow_null=True,
                min_value=0,
                max_value=MAX_THRESHOLD,
                help_text=_sentences(
                    _(
                        "Usage at which the warning recipients are notified; null for none. "
                        "Lower than the blocked threshold when both are set, and needs at "
                        "least one warning recipient."
                    ),
                    threshold_left_out,
                ),
            ),
            "blocked": serializers.IntegerField(
                required=required,
                allow_null=True,
                min_value=0,
                max_value=MAX_THRESHOLD,
                help_text=_sentences(
                    _(
                        "Usage at which further processing is refused and the blocked "
                        "recipients are notified; null for none."
                    ),
                    threshold_left_out,
                ),
            ),
        },
    )
    limits = _serializer_class(
        f"Limits{suffix}Serializer",
        "Limits",
        "The thresholds of every metric, keyed by metric code.",
        {
            spec.code: thresholds(
                required=required,
                allow_null=request,
                help_text=_sentences(
                    format_lazy(
                        _("Thresholds of “{label}”, in {unit}."), label=spec.label, unit=spec.unit
                    ),
                    _("Null clears both thresholds.") if request else None,
                ),
            )
            for spec in METRICS.values()
        },
    )
    recipient = _serializer_class(
        f"Recipient{suffix}Serializer",
        "Recipient",
        "An address notified when a threshold is reached.",
        {
            "email": serializers.EmailField(
                max_length=RECIPIENT_EMAIL_MAX_LENGTH,
                help_text=_(
                    "E-mail address of at most 254 characters whose domain has a dot "
                    "(not “localhost”); mailing lists welcome. Once per list."
                ),
            ),
            "language": serializers.ChoiceField(
                choices=Language.choices,
                required=required,
                help_text=_("Language of the messages sent to this address.")
                if required
                else _(
                    "Language of the messages sent to this address; the account's if left "
                    "out (null or empty is refused)."
                ),
            ),
        },
    )
    recipient_lists = _serializer_class(
        f"RecipientLists{suffix}Serializer",
        "RecipientLists",
        "Who is notified, per level; the same address may be on both lists.",
        {
            "warning": recipient(
                many=True,
                required=required,
                allow_null=request,
                max_length=MAX_RECIPIENTS_PER_LEVEL,
                help_text=_sentences(
                    _("Notified when a warning threshold is reached."), at_most, list_left_out
                ),
            ),
            "blocked": recipient(
                many=True,
                required=required,
                allow_null=request,
                max_length=MAX_RECIPIENTS_PER_LEVEL,
                help_text=_sentences(
                    _("Notified when a blocked threshold is reached."), at_most, list_left_out
                ),
            ),
        },
    )
    labels = _serializer_class(
        f"ScopedLimitLabels{suffix}Serializer",
        "ScopedLimitLabels",
        "The labels an event must carry to count in a scoped limit; none: every event.",
        {
            key: serializers.RegexField(
                rf"^{VALUE.pattern}$",
                required=False,
                min_length=1,
                max_length=MAX_VALUE_LENGTH,
                help_text=format_lazy(
                    _("Only the events whose label “{key}” has this value."), key=key
                ),
            )
            for key in LABEL_KEYS
        },
    )
    scoped_limit = _serializer_class(
        f"ScopedLimit{suffix}Serializer",
        "ScopedLimit",
        "The thresholds of one metric over a period, for the events with the labels given.",
        {
            "metric": serializers.ChoiceField(
                choices=list(METRICS), help_text=_("The metric the line counts.")
            ),
            "period": serializers.ChoiceField(
                choices=PeriodKind.values,
                help_text=_(
                    "month (calendar month), week (ISO week, from Monday 00:00), day, hour, "
                    "minute, or rolling (the current day and the window_days - 1 days before "
                    "it), in the account's time zone. A month needs labels: the monthly "
                    "limit of a whole metric is in limits."
                ),
            ),
            "window_days": serializers.IntegerField(
                required=required,
                allow_null=True,
                min_value=1,
                max_value=MAX_ROLLING_DAYS,
                help_text=_sentences(
                    _("Days of a rolling window; required with rolling, null otherwise."),
                    _("Left out: null.") if request else None,
                ),
            ),
            "labels": labels(
                required=required,
                allow_null=request,
                help_text=_sentences(
                    _(
                        "Only the events whose labels contain every pair given count; empty: "
                        "every event of the metric."
                    ),
                    _("Left out or null: empty.") if request else None,
                ),
            ),
            "warning": serializers.IntegerField(
                required=required,
                allow_null=True,
                min_value=0,
                max_value=MAX_THRESHOLD,
                help_text=_sentences(
                    _(
                        "Usage at which the warning recipients are notified; null for none. "
                        "Lower than the blocked threshold when both are set, and needs at "
                        "least one warning recipient."
                    ),
                    _("Left out: none.") if request else None,
                ),
            ),
            "blocked": serializers.IntegerField(
                required=required,
                allow_null=True,
                min_value=0,
                max_value=MAX_THRESHOLD,
                help_text=_sentences(
                    _(
                        "Usage at which further processing is refused and the blocked "
                        "recipients are notified; null for none."
                    ),
                    _("Left out: none.") if request else None,
                ),
            ),
        },
    )
    return _serializer_class(
        f"LimitsDocument{suffix}Serializer",
        "LimitsDocument",
        "An account's limits per metric and the recipients of its notifications.",
        {
            # A request may carry what a GET answered, unchanged or not: these two are
            # ignored, whatever their value, and the schema of a request says so.
            "account": serializers.JSONField(
                required=False,
                help_text=_("Ignored: the answer of a GET may be sent back as it is."),
            )
            if request
            else serializers.UUIDField(help_text=_("The account's id.")),
            "limits": limits(
                required=required,
                allow_null=request,
                help_text=_(
                    "Thresholds per metric. A PUT leaves the metrics not given unlimited; "
                    "a PATCH merges (RFC 7396). Null makes every metric unlimited."
                )
                if request
                else _("Thresholds per metric, every metric listed."),
            ),
            "recipients": recipient_lists(
                required=required,
                allow_null=request,
                help_text=_(
                    "Recipients per level; a list given replaces that list. Null empties both."
                )
                if request
                else _("Recipients per level, both lists listed."),
            ),
            # A ListField, not many=True, so that the schema states maxItems.
            "scoped_limits": serializers.ListField(
                child=scoped_limit(),
                required=required,
                allow_null=request,
                max_length=MAX_SCOPED_LIMITS,
                help_text=_sentences(
                    _(
                        "Limits over other periods or on labelled events, in their order; "
                        "each (metric, period, window_days, labels) once."
                    ),
                    format_lazy(_("At most {limit}."), limit=MAX_SCOPED_LIMITS),
                    _("Left out: none for PUT, unchanged for PATCH. Null removes them all.")
                    if request
                    else None,
                ),
            ),
            "updated_at": serializers.JSONField(
                required=False,
                help_text=_("Ignored: the answer of a GET may be sent back as it is."),
            )
            if request
            else serializers.DateTimeField(
                allow_null=True,
                help_text=_("When limits or recipients last changed; null if never."),
            ),
        },
    )


LimitsDocumentSerializer = _limits_document_serializer(request=False)
LimitsDocumentInputSerializer = _limits_document_serializer(request=True)


def limits_document_data(document: LimitsDocument) -> dict[str, Any]:
    """The answer of the limits endpoint for a ``LimitsDocument`` selector result."""
    return LimitsDocumentSerializer(
        {
            "account": document.account_id,
            **document.as_data(),
            "updated_at": document.updated_at,
        }
    ).data


class NotEnterpriseSerializer(ErrorSerializer):
    """The account's plan is not Enterprise, so it takes no limits."""

    code = serializers.CharField(
        help_text=format_lazy(_("Always “{code}”."), code=AccountNotEnterprise.code)
    )


class LimitsErrorSerializer(serializers.Serializer):
    """A refused limits document: messages keyed by field path, as DRF writes them.

    Nothing was changed. An unknown top-level field is reported under its own name.
    """

    limits = serializers.DictField(
        child=serializers.JSONField(),
        required=False,
        help_text=_(
            "Messages by metric code, then by threshold (warning, blocked); under "
            "non_field_errors when limits is not an object."
        ),
    )
    recipients = serializers.DictField(
        child=serializers.JSONField(),
        required=False,
        help_text=_(
            "Messages by level (warning, blocked), then by the recipient's index and field; "
            "under non_field_errors when recipients is not an object."
        ),
    )
    scoped_limits = serializers.JSONField(
        required=False,
        help_text=_(
            "Messages by the scoped limit's index, then by field (labels: then by label "
            "key); a list of messages when scoped_limits is not a list or is too long."
        ),
    )
    non_field_errors = serializers.ListField(
        child=serializers.CharField(),
        required=False,
        help_text=_("Messages about the document as a whole, e.g. a body that is not an object."),
    )
    detail = serializers.CharField(
        required=False, help_text=_("Given instead of the above when the body is not valid JSON.")
    )
