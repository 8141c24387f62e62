"""Writes to accounts, limits and recipients.

The rules of limits and recipients (SPEC section 3) live here and only here: the admin
form, the API and the ``set_limits`` command hand the same JSON-like document to
``limits_replace`` or ``limits_patch`` and show the errors it raises, so the three can
never disagree on what is allowed or on how a refusal is worded. Those two, and
``account_upsert``, live in ``backoffice.services``: they also record the notifications a
change causes, which this app, below ``notifications``, cannot.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser, Group
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils.translation import gettext_lazy as _
from knox.models import AuthToken

from .labels import labels_key, labels_parse
from .metrics import METRICS
from .models import (
    MAX_SCOPED_LIMITS,
    Account,
    Language,
    Level,
    Limit,
    Recipient,
    ScopedLimit,
    TokenAccount,
    validate_recipient_email,
)
from .roles import USAGE_SERVICES
from .selectors import (
    LimitsDocument,
    RecipientSpec,
    ScopedLimitSpec,
    Thresholds,
    limits_document_get,
)
from .windows import PeriodKind, period_kind, window_days_check

MAX_THRESHOLD = 10**15
MAX_RECIPIENTS_PER_LEVEL = 50
# Keys a client may send back unchanged after a GET; they are read-only and ignored.
READ_ONLY_KEYS = frozenset({"account", "updated_at"})

MSG_WARNING_NEEDS_RECIPIENT = _(
    "At least one warning recipient is required when a warning threshold is set."
)
MSG_WARNING_NOT_BELOW_BLOCKED = _("The warning threshold must be lower than the blocked threshold.")
MSG_NOT_ENTERPRISE = _("Limits can only be defined for an Enterprise account.")
MSG_UNKNOWN_FIELD = _("Unknown field.")
MSG_REQUIRED = _("This field is required.")
MSG_NOT_NULL = _("This field may not be null.")
MSG_MONTH_NEEDS_LABELS = _(
    "A monthly limit of a whole metric is set in “limits”: give labels, or another period."
)
MSG_DUPLICATE_LINE = _(
    "This scoped limit is already in the list (same metric, period, window days and labels)."
)
SCOPED_LIMIT_FIELDS = ("metric", "period", "window_days", "labels", "warning", "blocked")
DOCUMENT_FIELDS = ("limits", "recipients", "scoped_limits")

Errors = dict[Any, Any]


class LimitsInvalid(Exception):
    """A limits document breaks a rule; ``errors`` is keyed by field path, DRF style."""

    def __init__(self, errors: Errors) -> None:
        super().__init__(errors)
        self.errors = errors

    def messages(self) -> list[tuple[str, str]]:
        """Every error as ``(dotted.path, message)``, in document order."""
        found: list[tuple[str, str]] = []

        def walk(node: Any, path: tuple[str, ...]) -> None:
            if isinstance(node, dict):
                for key, child in node.items():
                    walk(child, (*path, str(key)))
            else:
                found.extend((".".join(path), str(message)) for message in node)

        walk(self.errors, ())
        return found


class AccountNotEnterprise(Exception):
    """Limits were given for an account whose plan is not Enterprise (SPEC section 3, rule 6)."""

    code = "not_enterprise"

    def __init__(self) -> None:
        super().__init__(str(MSG_NOT_ENTERPRISE))
        self.message = MSG_NOT_ENTERPRISE


@dataclass
class _ErrorCollector:
    errors: Errors
    count: int = 0

    def add(self, path: tuple[Any, ...], message: Any) -> None:
        self.count += 1
        node = self.errors
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node.setdefault(path[-1], []).append(message)


def _parse_threshold(value: Any) -> tuple[int | None, Any]:
    """Return ``(threshold, error message or None)``."""
    if value is None:
        return None, None
    if isinstance(value, bool) or not isinstance(value, int):
        return None, _("A valid integer is required.")
    if value < 0:
        return None, _("Ensure this value is greater than or equal to 0.")
    if value > MAX_THRESHOLD:
        return None, _("Ensure this value is less than or equal to %(limit)s.") % {
            "limit": MAX_THRESHOLD
        }
    return value, None


def _parse_limits(data: Any, collect: _ErrorCollector) -> dict[str, Thresholds]:
    parsed = {code: Thresholds() for code in METRICS}
    if data is None:
        return parsed
    if not isinstance(data, Mapping):
        collect.add(("limits", "non_field_errors"), _("Expected an object keyed by metric code."))
        return parsed
    for metric, thresholds in data.items():
        if metric not in METRICS:
            collect.add(
                ("limits", metric),
                _("Unknown metric. Expected one of: %(metrics)s.")
                % {"metrics": ", ".join(METRICS)},
            )
            continue
        if thresholds is None:
            continue
        if not isinstance(thresholds, Mapping):
            collect.add(("limits", metric), _("Expected an object with “warning” and “blocked”."))
            continue
        for key in thresholds:
            if key not in Level.values:
                collect.add(("limits", metric, key), MSG_UNKNOWN_FIELD)
        warning, warning_error = _parse_threshold(thresholds.get(Level.WARNING))
        blocked, blocked_error = _parse_threshold(thresholds.get(Level.BLOCKED))
        if warning_error:
            collect.add(("limits", metric, Level.WARNING.value), warning_error)
        if blocked_error:
            collect.add(("limits", metric, Level.BLOCKED.value), blocked_error)
        if warning is not None and blocked is not None and warning >= blocked:
            collect.add(("limits", metric, Level.WARNING.value), MSG_WARNING_NOT_BELOW_BLOCKED)
        parsed[metric] = Thresholds(warning=warning, blocked=blocked)
    return parsed


def _parse_recipient(
    item: Any, default_language: str, path: tuple[Any, ...], collect: _ErrorCollector
) -> RecipientSpec | None:
    if not isinstance(item, Mapping):
        collect.add(
            (*path, "non_field_errors"),
            _("Expected an object with “email” and “language”."),
        )
        return None
    ok = True
    for key in item:
        if key not in ("email", "language"):
            collect.add((*path, key), MSG_UNKNOWN_FIELD)
            ok = False
    email = item.get("email")
    if email is None or email == "":
        collect.add((*path, "email"), MSG_REQUIRED)
        ok = False
    elif not isinstance(email, str):
        collect.add((*path, "email"), _("Enter a valid email address."))
        ok = False
    else:
        try:
            validate_recipient_email(email)
        except ValidationError as refused:
            for message in refused.messages:
                collect.add((*path, "email"), message)
            ok = False
    # Left out, the account's language; given, it must be one (null or "" is refused).
    language = item.get("language", default_language)
    if language is None:
        collect.add((*path, "language"), MSG_NOT_NULL)
        ok = False
    elif language == "":
        collect.add((*path, "language"), _("This field may not be blank."))
        ok = False
    elif language not in Language.values:
        collect.add(
            (*path, "language"),
            _("“%(value)s” is not a valid choice. Expected one of: %(choices)s.")
            % {"value": language, "choices": ", ".join(Language.values)},
        )
        ok = False
    return RecipientSpec(email=email.strip(), language=language) if ok else None


def _parse_recipients(
    data: Any, default_language: str, collect: _ErrorCollector
) -> dict[str, tuple[RecipientSpec, ...]]:
    parsed: dict[str, tuple[RecipientSpec, ...]] = {level: () for level in Level.values}
    if data is None:
        return parsed
    if not isinstance(data, Mapping):
        collect.add(
            ("recipients", "non_field_errors"),
            _("Expected an object with “warning” and “blocked” lists."),
        )
        return parsed
    for level, items in data.items():
        if level not in Level.values:
            collect.add(
                ("recipients", level),
                _("Unknown level. Expected one of: %(levels)s.")
                % {"levels": ", ".join(Level.values)},
            )
            continue
        if items is None:
            continue
        if not isinstance(items, list):
            collect.add(("recipients", level), _("Expected a list of recipients."))
            continue
        if len(items) > MAX_RECIPIENTS_PER_LEVEL:
            collect.add(
                ("recipients", level),
                _("Ensure this list has at most %(limit)s recipients.")
                % {"limit": MAX_RECIPIENTS_PER_LEVEL},
            )
            continue
        seen: set[str] = set()
        specs: list[RecipientSpec] = []
        for index, item in enumerate(items):
            spec = _parse_recipient(item, default_language, ("recipients", level, index), collect)
            if spec is None:
                continue
            if spec.email.lower() in seen:
                collect.add(
                    ("recipients", level, index, "email"),
                    _("This address is already in the list."),
                )
                continue
            seen.add(spec.email.lower())
            specs.append(spec)
        parsed[level] = tuple(specs)
    return parsed


def _parse_scoped_limit(
    item: Any, path: tuple[Any, ...], collect: _ErrorCollector
) -> ScopedLimitSpec | None:
    """One scoped limit (SPEC section 11.2), or ``None`` after reporting what is wrong."""
    if not isinstance(item, Mapping):
        collect.add(
            (*path, "non_field_errors"),
            _("Expected an object with “metric”, “period”, “labels” and thresholds."),
        )
        return None
    errors_before = collect.count
    for key in item:
        if key not in SCOPED_LIMIT_FIELDS:
            collect.add((*path, key), MSG_UNKNOWN_FIELD)
    metric = item.get("metric")
    if "metric" not in item:
        collect.add((*path, "metric"), MSG_REQUIRED)
    elif metric is None:
        collect.add((*path, "metric"), MSG_NOT_NULL)
    elif not isinstance(metric, str) or metric not in METRICS:
        collect.add(
            (*path, "metric"),
            _("Unknown metric. Expected one of: %(metrics)s.") % {"metrics": ", ".join(METRICS)},
        )
    period: PeriodKind | None = None
    if "period" not in item:
        collect.add((*path, "period"), MSG_REQUIRED)
    elif item["period"] is None:
        collect.add((*path, "period"), MSG_NOT_NULL)
    else:
        try:
            period = period_kind(item["period"])
        except ValueError as refused:
            collect.add((*path, "period"), refused.args[0])
    window_days = item.get("window_days")
    if period is not None:
        try:
            window_days_check(period, window_days)
        except ValueError as refused:
            collect.add((*path, "window_days"), refused.args[0])
    labels, label_errors = labels_parse(item.get("labels"))
    if isinstance(label_errors, dict):
        for key, messages in label_errors.items():
            for message in messages:
                collect.add((*path, "labels", key), message)
    elif label_errors:
        for message in label_errors:
            collect.add((*path, "labels"), message)
    elif period == PeriodKind.MONTH and not labels:
        collect.add((*path, "labels"), MSG_MONTH_NEEDS_LABELS)
    warning, warning_error = _parse_threshold(item.get(Level.WARNING))
    blocked, blocked_error = _parse_threshold(item.get(Level.BLOCKED))
    if warning_error:
        collect.add((*path, Level.WARNING.value), warning_error)
    if blocked_error:
        collect.add((*path, Level.BLOCKED.value), blocked_error)
    if warning is not None and blocked is not None and warning >= blocked:
        collect.add((*path, Level.WARNING.value), MSG_WARNING_NOT_BELOW_BLOCKED)
    if collect.count > errors_before:
        return None
    return ScopedLimitSpec(
        metric=metric,
        period=period.value,
        window_days=window_days,
        labels=dict(sorted(labels.items())),
        warning=warning,
        blocked=blocked,
    )


def _parse_scoped_limits(data: Any, collect: _ErrorCollector) -> tuple[ScopedLimitSpec, ...]:
    """The scoped limits, in the order given; refused past ``MAX_SCOPED_LIMITS`` or when a
    line comes twice (the later one is named)."""
    if data is None:
        return ()
    if not isinstance(data, list):
        collect.add(("scoped_limits",), _("Expected a list of scoped limits."))
        return ()
    if len(data) > MAX_SCOPED_LIMITS:
        collect.add(
            ("scoped_limits",),
            _("Ensure this list has at most %(limit)s scoped limits.")
            % {"limit": MAX_SCOPED_LIMITS},
        )
        return ()
    seen: set[tuple[str, str, int | None, str]] = set()
    specs: list[ScopedLimitSpec] = []
    for index, item in enumerate(data):
        spec = _parse_scoped_limit(item, ("scoped_limits", index), collect)
        if spec is None:
            continue
        if spec.identity in seen:
            collect.add(("scoped_limits", index, "non_field_errors"), MSG_DUPLICATE_LINE)
            continue
        seen.add(spec.identity)
        specs.append(spec)
    return tuple(specs)


def _keeps_or_clears(*, account: Account, document: LimitsDocument) -> bool:
    """Whether ``document`` only keeps or clears what ``account`` has stored: no new threshold,
    no changed one, no new or changed recipient."""
    if document.is_empty:
        return True
    if account._state.adding:
        return False
    stored = limits_document_get(account=account)
    for metric, thresholds in document.limits.items():
        kept = stored.limits[metric]
        if thresholds.warning not in (None, kept.warning):
            return False
        if thresholds.blocked not in (None, kept.blocked):
            return False
    stored_lines = {line.identity: line for line in stored.scoped_limits}
    for line in document.scoped_limits:
        kept = stored_lines.get(line.identity)
        if kept is None:
            return False
        if line.warning not in (None, kept.warning) or line.blocked not in (None, kept.blocked):
            return False
    return all(
        set(specs) <= set(stored.recipients[level]) for level, specs in document.recipients.items()
    )


def limits_document_validate(*, account: Account, data: Any) -> LimitsDocument:
    """Check a whole limits document against SPEC section 3, rules 1 to 6, and section 11.2.

    ``data`` is JSON-like: ``{"limits": {metric: {"warning", "blocked"}}, "recipients":
    {"warning": [{"email", "language"}], "blocked": [...]}, "scoped_limits": [{"metric",
    "period", "window_days", "labels", "warning", "blocked"}]}``; metrics and lists left out
    are unlimited and empty. Errors are keyed by field path (``scoped_limits.2.warning``);
    rule 4 is keyed ``recipients.warning`` whichever line has the warning threshold. Raises ``LimitsInvalid`` or ``AccountNotEnterprise``.
    Limits are only set for Enterprise accounts; an account on another plan may keep its
    stored limits (inactive, see ``usage.selectors.usage_for``) or clear them, in whole or
    in part, but not set or change any.
    """
    collect = _ErrorCollector(errors={})
    if not isinstance(data, Mapping):
        collect.add(("non_field_errors",), _("Expected an object with “limits” and “recipients”."))
        raise LimitsInvalid(collect.errors)
    for key in data:
        if key not in DOCUMENT_FIELDS and key not in READ_ONLY_KEYS:
            collect.add((key,), MSG_UNKNOWN_FIELD)
    limits = _parse_limits(data.get("limits"), collect)
    recipients = _parse_recipients(data.get("recipients"), account.language, collect)
    scoped_limits = _parse_scoped_limits(data.get("scoped_limits"), collect)
    has_warning = any(t.warning is not None for t in limits.values()) or any(
        line.warning is not None for line in scoped_limits
    )
    # A warning list that could not be read says so already; rule 4 would only add noise.
    recipient_errors = collect.errors.get("recipients", {})
    warning_list_broken = (
        Level.WARNING.value in recipient_errors or "non_field_errors" in recipient_errors
    )
    if has_warning and not recipients[Level.WARNING] and not warning_list_broken:
        collect.add(("recipients", Level.WARNING.value), MSG_WARNING_NEEDS_RECIPIENT)
    if collect.errors:
        raise LimitsInvalid(collect.errors)
    document = LimitsDocument(limits=limits, recipients=recipients, scoped_limits=scoped_limits)
    if not account.is_enterprise and not _keeps_or_clears(account=account, document=document):
        raise AccountNotEnterprise()
    return document


def limits_document_merge(*, current: LimitsDocument, patch: Any) -> Any:
    """Apply a JSON merge patch (RFC 7396) on ``limits``; a recipient list given replaces it,
    and so do ``scoped_limits`` given (left out, they stay as they are).

    Returns the merged JSON-like document, still to be validated.
    """
    if not isinstance(patch, Mapping):
        return patch
    merged = current.as_data()
    for key, value in patch.items():
        if key == "limits" and isinstance(value, Mapping):
            for metric, thresholds in value.items():
                if isinstance(thresholds, Mapping) and isinstance(
                    merged["limits"].get(metric), dict
                ):
                    merged["limits"][metric] = {**merged["limits"][metric], **thresholds}
                else:
                    merged["limits"][metric] = thresholds
        elif key == "recipients" and isinstance(value, Mapping):
            merged["recipients"] = {**merged["recipients"], **value}
        else:
            merged[key] = value
    return merged


def _attribute(
    row: Limit | Recipient | ScopedLimit, actor: AbstractBaseUser | None, reason: str
) -> Any:
    """Tell django-simple-history who makes the next change of ``row``, and through what."""
    row._history_user = actor
    row._change_reason = reason
    return row


def _limits_write(
    *, account: Account, document: LimitsDocument, actor: AbstractBaseUser | None, reason: str
) -> bool:
    """Store ``document`` as the account's limits; returns whether anything changed."""
    changed = False
    existing_limits = {row.metric: row for row in account.limits.all()}
    for metric, thresholds in document.limits.items():
        row = existing_limits.get(metric)
        if row is None:
            if thresholds.is_unlimited:
                continue
            row = Limit(account=account, metric=metric)
        elif (row.warning, row.blocked) == (thresholds.warning, thresholds.blocked):
            continue
        row.warning, row.blocked = thresholds.warning, thresholds.blocked
        _attribute(row, actor, reason).save()
        changed = True

    existing_recipients = {(r.level, r.email.lower()): r for r in account.recipients.all()}
    wanted = {
        (level, spec.email.lower()): spec
        for level, specs in document.recipients.items()
        for spec in specs
    }
    # Deletions first, so that re-adding an address under another case never collides.
    for key, row in existing_recipients.items():
        if key not in wanted:
            _attribute(row, actor, reason).delete()
            changed = True
    for (level, folded), spec in wanted.items():
        row = existing_recipients.get((level, folded))
        if row is None:
            row = Recipient(account=account, level=level)
        elif (row.email, row.language) == (spec.email, spec.language):
            continue
        row.email, row.language = spec.email, spec.language
        _attribute(row, actor, reason).save()
        changed = True
    return (
        _scoped_limits_write(account=account, document=document, actor=actor, reason=reason)
        or changed
    )


def _scoped_limits_write(
    *, account: Account, document: LimitsDocument, actor: AbstractBaseUser | None, reason: str
) -> bool:
    """Store the document's scoped limits: a line kept (same metric, period, window days and
    labels) keeps its row and history; returns whether anything changed."""
    changed = False
    existing = {
        (row.metric, row.period, row.window_days, row.labels_key): row
        for row in account.scoped_limits.all()
    }
    wanted = {
        line.identity: (position, line) for position, line in enumerate(document.scoped_limits)
    }
    for identity, row in existing.items():
        if identity not in wanted:
            _attribute(row, actor, reason).delete()
            changed = True
    for identity, (position, line) in wanted.items():
        row = existing.get(identity)
        if row is None:
            row = ScopedLimit(
                account=account,
                metric=line.metric,
                period=line.period,
                window_days=line.window_days,
                labels=line.labels,
                labels_key=labels_key(line.labels),
            )
        elif (row.warning, row.blocked, row.position) == (line.warning, line.blocked, position):
            continue
        row.warning, row.blocked, row.position = line.warning, line.blocked, position
        _attribute(row, actor, reason).save()
        changed = True
    return changed


# --- API tokens ----------------------------------------------------------------------


class ServiceTokenRefused(Exception):
    """A service token cannot be created; ``message`` says why, in one line."""

    def __init__(self, message: Any) -> None:
        super().__init__(str(message))
        self.message = message


@dataclass(frozen=True)
class ServiceToken:
    """A new service token: its key (shown once, stored hashed) and whether its user is new."""

    key: str
    user_created: bool


def service_token_create(*, name: str, account: Account | None = None) -> ServiceToken:
    """A new token for the service user ``name``, created in the "Usage services" group.

    An existing user is reused only if it is an active service user (no password, not
    staff): adding a person to the group would widen their rights silently. With
    ``account``, the token is bound to that account (SPEC section 11.6); the user's other
    tokens keep their own reach. Raises ``ServiceTokenRefused``.
    """
    if not name.strip():
        raise ServiceTokenRefused(_("NAME may not be blank."))
    user_model = get_user_model()
    with transaction.atomic():
        group = Group.objects.filter(name=USAGE_SERVICES).first()
        if group is None:
            raise ServiceTokenRefused(
                _("The “%(group)s” group is missing: run migrate first.")
                % {"group": USAGE_SERVICES}
            )
        user = user_model._default_manager.filter(**{user_model.USERNAME_FIELD: name}).first()
        created = user is None
        if user is None:
            user = user_model(**{user_model.USERNAME_FIELD: name}, is_staff=False)
            user.set_unusable_password()
            user.save()
        elif user.has_usable_password() or user.is_staff or user.is_superuser:
            raise ServiceTokenRefused(
                _(
                    "User “%(name)s” exists and is not a service user (it has a password or "
                    "staff rights); use create_api_token to give it a token."
                )
                % {"name": name}
            )
        elif not user.is_active:
            raise ServiceTokenRefused(
                _("Service user “%(name)s” is inactive; activate it first.") % {"name": name}
            )
        user.groups.add(group)
        token, key = AuthToken.objects.create(user=user, expiry=None)
        if account is not None:
            TokenAccount.objects.create(token=token, account=account)
    return ServiceToken(key=key, user_created=created)
