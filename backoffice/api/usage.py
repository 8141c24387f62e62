"""Usage API: record events, read usage, pre-flight check, reservations (SPEC 5, 11, 12)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from django.utils import timezone
from django.utils.translation import gettext_lazy as _
from drf_spectacular.utils import (
    OpenApiParameter,
    OpenApiResponse,
    PolymorphicProxySerializer,
    extend_schema,
)
from rest_framework import status
from rest_framework.exceptions import NotFound, ValidationError
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.api.base import (
    ErrorSerializer,
    ModelPermissions,
    account_get_or_404,
    account_id_or_404,
)
from accounts.generations import UNREAD, generation_key
from accounts.labels import labels_key, labels_parse
from accounts.metrics import METRICS
from accounts.models import Account
from backoffice.services import usage_events_record
from config.authentication import token_account_id
from usage.api.parsers import ExactJSONParser
from usage.api.serializers import (
    AccountUsageSerializer,
    CapacitiesSerializer,
    CheckRequestSerializer,
    CheckResultSerializer,
    EventBatchSerializer,
    EventSerializer,
    IngestResultSerializer,
    ReservationRefusedSerializer,
    ReservationRequestSerializer,
    ReservationSerializer,
    ValidationErrorSerializer,
)
from usage.ingest import (
    EventsInvalid,
    parse_metric,
    parse_quantity,
    parse_reservation,
    unknown_fields,
)
from usage.models import Reservation
from usage.periods import (
    FIRST_PERIOD_CODE,
    LAST_PERIOD_CODE,
    PERIOD_PATTERN,
    Period,
)
from usage.quantities import quantity_number
from usage.selectors import (
    KnownLines,
    LineUsage,
    MetricUsage,
    account_lines_known,
    account_lines_with_reservations,
    account_usage_read,
    line_period_data,
    reservation_get,
    worst_status,
)
from usage.services import (
    ReservationRefused,
    reservation_create,
    reservation_release,
)

# The fields a pre-flight check may have; any other is refused ("Unknown field.").
CHECK_FIELDS = frozenset({"metric", "quantity", "labels"})
ERRORS = {
    400: ValidationErrorSerializer,
    401: ErrorSerializer,
    403: ErrorSerializer,
}
ACCOUNT_ERRORS = {
    **ERRORS,
    403: OpenApiResponse(
        ErrorSerializer,
        description=_("The user lacks the permission, or the token is bound to another account."),
    ),
    404: ErrorSerializer,
}


def _status_entry(usage: MetricUsage) -> dict[str, Any]:
    return {
        "account": usage.account_id,
        "metric": usage.metric,
        "used": quantity_number(usage.used_milli, usage.metric),
        "status": usage.status,
        "remaining": quantity_number(usage.remaining_milli, usage.metric),
        "is_within_budget": usage.is_within_budget,
    }


class UsageEventsView(APIView):
    """Record one usage event or a batch of up to 1000, idempotently by ``event_id``."""

    parser_classes = [ExactJSONParser]
    permission_classes = [ModelPermissions]
    required_permissions = {"POST": ["usage.add_usageevent"]}
    throttle_scope = "ingest"

    @extend_schema(
        operation_id="usage_events_create",
        request=PolymorphicProxySerializer(
            component_name="EventOrBatch",
            serializers=[EventSerializer, EventBatchSerializer],
            resource_type_field_name=None,
        ),
        responses={
            201: IngestResultSerializer,
            200: IngestResultSerializer,
            **ERRORS,
            415: ErrorSerializer,
            429: ErrorSerializer,
        },
        description='One event, or `{"events": [...]}` with up to 1000 events validated as '
        "a whole (errors keyed by index, nothing recorded). 201 when anything was recorded, "
        "200 when every event was a duplicate. With a token bound to one account, `account` "
        "may be left out (it is the token's account), and an event naming another account "
        "is a 400 keyed `account`.",
    )
    def post(self, request: Request) -> Response:
        try:
            result = usage_events_record(payload=request.data, account_id=token_account_id(request))
        except EventsInvalid as exc:
            raise ValidationError(exc.errors) from exc
        body = {
            "accepted": result.accepted,
            "duplicates": result.duplicates,
            "usage": [_status_entry(usage) for usage in result.usage],
        }
        return Response(body, status=status.HTTP_201_CREATED if result.accepted else 200)


class AccountScopedView(APIView):
    permission_classes = [ModelPermissions]

    def get_account(self, account_id: str) -> Account:
        return account_get_or_404(account_id)


class AccountLinesView(AccountScopedView):
    """A read of the account's lines: the account's generation is read in the same round
    trip as the token's (``config.authentication``, ``accounts.generations``)."""

    account_generation_key: str | None = None

    def generation_reads(self, request: Request) -> list[str]:
        try:
            self.account_generation_key = generation_key(uuid.UUID(self.kwargs["id"]))
        except ValueError:  # not an account id: a 404 later
            return []
        return [] if self.account_generation_key is None else [self.account_generation_key]

    def generation_found(self) -> Any:
        """The account's generation as the authentication read it (``None``: missing);
        ``UNREAD`` when it read nothing."""
        read = getattr(self, "generations_read", None)
        if read is None or self.account_generation_key not in read:
            return UNREAD
        return read[self.account_generation_key]


class AccountUsageView(AccountLinesView):
    """Current-period usage of every metric, or a past month with ``?period=YYYY-MM``."""

    required_permissions = {"GET": ["usage.view_usagecounter"]}

    @extend_schema(
        operation_id="accounts_usage_retrieve",
        parameters=[
            OpenApiParameter(
                "period",
                str,
                pattern=PERIOD_PATTERN,
                description=f"A month as YYYY-MM, from {FIRST_PERIOD_CODE} to "
                f"{LAST_PERIOD_CODE}; the current period by default.",
            )
        ],
        responses={200: AccountUsageSerializer, **ACCOUNT_ERRORS},
    )
    def get(self, request: Request, id: str) -> Response:
        try:
            found = account_usage_read(
                account_id=account_id_or_404(id),
                period_code=request.query_params.get("period"),
                found=self.generation_found(),
            )
        except ValueError:
            raise ValidationError(
                {
                    "period": [
                        _("Expected a month from %(first)s to %(last)s, as YYYY-MM.")
                        % {"first": FIRST_PERIOD_CODE, "last": LAST_PERIOD_CODE}
                    ]
                }
            ) from None
        if found is None:
            raise NotFound(_("Account not found."))
        account, period, metrics, made = found
        body = made.get("usage")
        if body is None:
            body = made["usage"] = _usage_body(account, period, metrics)
        return Response(body)


def _usage_body(account: Account, period: Period, metrics: list[MetricUsage]) -> dict[str, Any]:
    return {
        "account": account.pk,
        "period": {
            "start": period.start.isoformat(),
            "end": period.end.isoformat(),
            "timezone": account.timezone,
        },
        "has_remaining_capacity": all(m.is_within_budget for m in metrics),
        "metrics": [
            {
                "metric": m.metric,
                "unit": METRICS[m.metric].unit,
                "used": quantity_number(m.used_milli, m.metric),
                "warning_threshold": m.warning,
                "blocked_threshold": m.blocked,
                "extension": m.extension,
                "remaining": quantity_number(m.remaining_milli, m.metric),
                "status": m.status,
                "is_within_budget": m.is_within_budget,
            }
            for m in metrics
        ],
    }


class UsageCheckView(AccountLinesView):
    """Pre-flight: may this much more usage be processed now?"""

    parser_classes = [ExactJSONParser]
    required_permissions = {"POST": ["usage.check_usage"]}
    throttle_scope = "check"

    @extend_schema(
        operation_id="accounts_usage_check",
        request=CheckRequestSerializer,
        responses={
            200: CheckResultSerializer,
            **ACCOUNT_ERRORS,
            415: ErrorSerializer,
            429: ErrorSerializer,
        },
    )
    def post(self, request: Request, id: str) -> Response:
        account_id = account_id_or_404(id)
        try:
            metric, quantity_milli, labels = _check_parse(request.data)
        except ValidationError:
            account_get_or_404(id)  # an unknown account is a 404 whatever the body
            raise
        known = account_lines_known(account_id=account_id, found=self.generation_found())
        if known is None:
            raise NotFound(_("Account not found."))
        # What the answer says of the lines that apply, but whether each allows the quantity:
        # made once while the lines hold.
        memo_key = ("check", metric, labels_key(labels))
        memo = known.made.get(memo_key)
        if memo is None:
            memo = known.made[memo_key] = _check_lines(known, metric, labels)
        lines, entries, body = memo
        allowed = [line.allows(quantity_milli) for line in lines]
        return Response(
            {
                "allowed": all(allowed),
                **body,
                "lines": [
                    {**entry, "allowed": line_allowed}
                    for entry, line_allowed in zip(entries, allowed, strict=True)
                ],
            }
        )


def _check_lines(
    known: KnownLines, metric: str, labels: dict[str, str]
) -> tuple[list[LineUsage], list[dict[str, Any]], dict[str, Any]]:
    """The lines of ``metric`` that apply to ``labels``, each line's entry of the pre-flight
    answer without ``allowed``, and the answer's other fields."""
    lines = known.applying(metric=metric, labels=labels)
    used = next(line.usage.used_milli for line in lines if line.is_whole_metric_month)
    entries = [
        {
            "period": line.line.period,
            "window_days": line.line.window_days,
            "labels": dict(sorted(line.line.labels.items())),
            "used": quantity_number(line.usage.used_milli, metric),
            "remaining": quantity_number(line.remaining_milli, metric),
            "status": line.usage.status,
        }
        for line in lines
    ]
    remaining = [line.remaining_milli for line in lines if line.remaining_milli is not None]
    body = {
        "metric": metric,
        "used": quantity_number(used, metric),
        "remaining": quantity_number(min(remaining, default=None), metric),
        "status": worst_status(line.usage for line in lines),
    }
    return lines, entries, body


def _check_parse(payload: Any) -> tuple[str, int, dict[str, str]]:
    """The pre-flight's metric, quantity in thousandths and labels; ``ValidationError``."""
    if not isinstance(payload, dict):
        raise ValidationError({"non_field_errors": [_("Expected an object.")]})
    unknown = unknown_fields(payload, CHECK_FIELDS)
    if unknown:
        raise ValidationError(unknown)
    metric, error = parse_metric(payload.get("metric"))
    if error:
        raise ValidationError({"metric": [error]})
    quantity = payload.get("quantity")
    quantity_milli = 0
    if quantity is not None:
        quantity_milli, error = parse_quantity(
            quantity, METRICS[metric].decimal_places, allow_zero=True
        )
        if error:
            raise ValidationError({"quantity": [error]})
    labels, error = labels_parse(payload.get("labels"))
    if error:
        raise ValidationError({"labels": error})
    return metric, quantity_milli, labels


def _capacity_entry(line: LineUsage, account: Account) -> dict[str, Any]:
    usage, metric = line.usage, line.line.metric
    period = line_period_data(line, account)
    return {
        "metric": metric,
        "unit": METRICS[metric].unit,
        "labels": dict(sorted(line.line.labels.items())),
        "current_period": period,
        "used": quantity_number(usage.used_milli, metric),
        "warning_threshold": usage.warning,
        "blocked_threshold": usage.blocked,
        "extension": usage.extension,
        "is_extended": line.is_extended,
        "reserved": quantity_number(line.reserved_milli, metric),
        "remaining": quantity_number(line.remaining_milli, metric),
        "status": usage.status,
        "has_remaining_capacity": usage.is_within_budget,
        "valid_until": period["end_time"],
    }


class CapacitiesView(AccountLinesView):
    """Every limit line of the account, its current period and what is left (SPEC 11.3)."""

    required_permissions = {"GET": ["usage.view_usagecounter"]}

    @extend_schema(
        operation_id="accounts_capacities_retrieve",
        responses={200: CapacitiesSerializer, **ACCOUNT_ERRORS},
    )
    def get(self, request: Request, id: str) -> Response:
        known = account_lines_known(account_id=account_id_or_404(id), found=self.generation_found())
        if known is None:
            raise NotFound(_("Account not found."))
        body = known.made.get("capacities")
        if body is None:
            account, lines = known.account, known.lines
            body = known.made["capacities"] = {
                "account": account.pk,
                "has_remaining_capacity": all(line.usage.is_within_budget for line in lines),
                "items": [_capacity_entry(line, account) for line in lines],
            }
        return Response(body)


# --- Reservations (SPEC 12.1) ---


def _reservation_line(line: LineUsage) -> dict[str, Any]:
    metric = line.line.metric
    return {
        "period": line.line.period,
        "window_days": line.line.window_days,
        "labels": dict(sorted(line.line.labels.items())),
        "used": quantity_number(line.usage.used_milli, metric),
        "reserved": quantity_number(line.reserved_milli, metric),
        "remaining": quantity_number(line.remaining_milli, metric),
        "status": line.usage.status,
    }


def _reservation_body(
    reservation: Reservation, account: Account, lines: list[LineUsage], now: datetime
) -> dict[str, Any]:
    zone = account.zone
    state = reservation.state_at(now)
    ended_at = reservation.ended_at
    if ended_at is None and state == Reservation.Status.EXPIRED:
        ended_at = reservation.expires_at  # expired, not yet written so by the tidying task
    return {
        "reservation_id": reservation.reservation_id,
        "status": state,
        "metric": reservation.metric,
        "quantity": quantity_number(reservation.quantity_milli, reservation.metric),
        "labels": dict(sorted(reservation.labels.items())),
        "created_at": reservation.created_at.astimezone(zone).isoformat(),
        "expires_at": reservation.expires_at.astimezone(zone).isoformat(),
        "ended_at": None if ended_at is None else ended_at.astimezone(zone).isoformat(),
        "lines": [_reservation_line(line) for line in lines],
    }


RESERVATION_ERRORS = {**ACCOUNT_ERRORS, 415: ErrorSerializer, 429: ErrorSerializer}


class ReservationsView(AccountScopedView):
    """Hold capacity for usage about to be recorded (SPEC 12.1)."""

    parser_classes = [ExactJSONParser]
    required_permissions = {"POST": ["usage.add_reservation"]}
    throttle_scope = "check"

    @extend_schema(
        operation_id="accounts_usage_reservations_create",
        request=ReservationRequestSerializer,
        responses={
            201: ReservationSerializer,
            200: OpenApiResponse(
                ReservationSerializer,
                description=_("The same request again: the reservation it made, as it is now."),
            ),
            409: OpenApiResponse(
                ReservationRefusedSerializer,
                description=_(
                    "No room on a line that applies (`insufficient_capacity`), or the id is "
                    "used by another request (`reservation_id_reused`). Nothing is held."
                ),
            ),
            **RESERVATION_ERRORS,
        },
        description="Holds `quantity` on every line of the metric whose labels the request's "
        "contain, when each has room for used + active reservations + quantity within its "
        "effective blocked threshold (lines without one always have room). The hold ends when "
        "a usage event names the reservation (`settled`), when it is released, or at "
        "`expires_at`.",
    )
    def post(self, request: Request, id: str) -> Response:
        account_id = account_id_or_404(id)
        try:
            wanted = parse_reservation(request.data)
        except EventsInvalid as exc:
            account_get_or_404(id)  # an unknown account is a 404 whatever the body
            raise ValidationError(exc.errors) from exc
        now = timezone.now()
        try:
            held = reservation_create(account_id=account_id, request=wanted, now=now)
        except ReservationRefused as exc:
            body: dict[str, Any] = {"code": exc.code, "detail": str(exc.message)}
            if exc.code == ReservationRefused.INSUFFICIENT_CAPACITY:
                body["lines"] = [
                    {**_reservation_line(line), "allowed": line.allows(exc.quantity_milli)}
                    for line in exc.lines
                ]
            return Response(body, status=status.HTTP_409_CONFLICT)
        if held is None:
            raise NotFound(_("Account not found."))
        return Response(
            _reservation_body(held.reservation, held.account, held.lines, now),
            status=status.HTTP_201_CREATED if held.created else status.HTTP_200_OK,
        )


class ReservationDetailView(AccountScopedView):
    """One reservation: read it, or release it (SPEC 12.1)."""

    required_permissions = {
        "GET": ["usage.view_reservation"],
        "DELETE": ["usage.change_reservation"],
    }
    throttle_scope = "check"

    def get_throttles(self) -> list[Any]:
        # Reads are not throttled (README, "Throttling"); releasing shares the check bucket.
        if self.request.method in ("GET", "HEAD", "OPTIONS"):
            return []
        return super().get_throttles()

    def get_reservation(self, account: Account, reservation_id: str) -> Reservation:
        reservation = reservation_get(account=account, reservation_id=reservation_id)
        if reservation is None:
            raise NotFound(_("Reservation not found."))
        return reservation

    def _answer(self, reservation: Reservation, account: Account, now: datetime) -> Response:
        lines = account_lines_with_reservations(
            account=account, metric=reservation.metric, labels=reservation.labels, now=now
        )
        return Response(_reservation_body(reservation, account, lines, now))

    @extend_schema(
        operation_id="accounts_usage_reservations_retrieve",
        responses={200: ReservationSerializer, **ACCOUNT_ERRORS},
    )
    def get(self, request: Request, id: str, reservation_id: str) -> Response:
        account = self.get_account(id)
        reservation = self.get_reservation(account, reservation_id)
        return self._answer(reservation, account, timezone.now())

    @extend_schema(
        operation_id="accounts_usage_reservations_destroy",
        responses={
            200: OpenApiResponse(
                ReservationSerializer,
                description=_(
                    "Released; a reservation no longer active is answered as it is, unchanged."
                ),
            ),
            **ACCOUNT_ERRORS,
        },
    )
    def delete(self, request: Request, id: str, reservation_id: str) -> Response:
        account = self.get_account(id)
        now = timezone.now()
        reservation = reservation_release(account=account, reservation_id=reservation_id, now=now)
        if reservation is None:
            raise NotFound(_("Reservation not found."))
        return self._answer(reservation, account, now)
