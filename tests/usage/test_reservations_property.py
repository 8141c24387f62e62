"""No interleaving of reservations, settlements, releases, expiry and usage lets a
reservation pass a cap (SPEC 12.1), whatever the order: a hypothesis state machine.

The machine keeps its own clock (``now`` passed to the services, from a fixed instant) and
a model of what each line has used and what each reservation holds. After every step the
lines read by the selectors must equal the model; a reservation must be held exactly when
it fits beside used and reserved on every line it applies to, and once held no line may be
past its cap with what is reserved.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    invariant,
    multiple,
    rule,
)

from backoffice.services import limits_replace, usage_events_record
from tests.factories import AccountFactory
from usage.ingest import ReservationIn
from usage.selectors import account_lines_with_reservations
from usage.services import (
    ReservationRefused,
    reservation_create,
    reservation_release,
    reservations_expire,
)

# A Monday morning in UTC: the machine's clock moves at most a few hours from there, so
# every step stays in one day and one month.
START = datetime(2026, 6, 15, 8, 0, tzinfo=UTC)
MONTH_CAP = 1000
LARGE_DAY_CAP = 400
LARGE = {"model": "large"}


@dataclass
class Held:
    quantity: int
    large: bool
    expires_at: datetime
    status: str = "active"

    def holds(self, now: datetime) -> bool:
        return self.status == "active" and self.expires_at > now


class ReservationMachine(RuleBasedStateMachine):
    reservations = Bundle("reservations")

    def __init__(self) -> None:
        super().__init__()
        self.account = AccountFactory(timezone="UTC")
        limits_replace(
            account=self.account,
            data={
                "limits": {"text_tokens": {"warning": None, "blocked": MONTH_CAP}},
                "scoped_limits": [
                    {
                        "metric": "text_tokens",
                        "period": "day",
                        "window_days": None,
                        "labels": LARGE,
                        "warning": None,
                        "blocked": LARGE_DAY_CAP,
                    },
                ],
            },
        )
        self.now = START
        self.used_month = 0
        self.used_large = 0
        self.held: dict[str, Held] = {}
        self.events = 0

    # --- the model ---

    def reserved(self, *, large_only: bool) -> int:
        return sum(
            held.quantity
            for held in self.held.values()
            if held.holds(self.now) and (held.large or not large_only)
        )

    def lines(self, large: bool) -> list[tuple[int, int, int]]:
        """``(used, reserved, cap)`` of each line a reservation or event applies to."""
        found = [(self.used_month, self.reserved(large_only=False), MONTH_CAP)]
        if large:
            found.append((self.used_large, self.reserved(large_only=True), LARGE_DAY_CAP))
        return found

    def read(self, large: bool) -> list[tuple[int, int, int]]:
        """The same, as the selectors read it."""
        return [
            (line.usage.used_milli // 1000, line.reserved_milli // 1000, line.usage.blocked)
            for line in account_lines_with_reservations(
                account=self.account,
                metric="text_tokens",
                labels=LARGE if large else {},
                now=self.now,
            )
        ]

    def record(self, quantity: int, large: bool, reservation_id: str | None = None) -> None:
        self.events += 1
        event = {
            "event_id": f"e{self.events}",
            "account": str(self.account.pk),
            "metric": "text_tokens",
            "quantity": quantity,
            "labels": LARGE if large else {},
        }
        if reservation_id is not None:
            event["reservation_id"] = reservation_id
        usage_events_record(payload=event, now=self.now)
        self.used_month += quantity
        if large:
            self.used_large += quantity

    # --- the rules ---

    @rule(
        target=reservations,
        quantity=st.integers(min_value=1, max_value=300),
        large=st.booleans(),
        ttl=st.integers(min_value=1, max_value=1800),
    )
    def reserve(self, quantity: int, large: bool, ttl: int):
        reservation_id = f"r{len(self.held)}"
        before = self.read(large)
        fits = all(used + reserved + quantity <= cap for used, reserved, cap in before)
        request = ReservationIn(
            reservation_id=reservation_id,
            metric="text_tokens",
            quantity_milli=quantity * 1000,
            labels=LARGE if large else {},
            ttl_seconds=ttl,
        )
        try:
            held = reservation_create(account_id=self.account.pk, request=request, now=self.now)
        except ReservationRefused as refused:
            assert refused.code == ReservationRefused.INSUFFICIENT_CAPACITY
            assert not fits, (quantity, before)
            return multiple()
        assert held.created
        assert fits, (quantity, before)
        self.held[reservation_id] = Held(quantity, large, self.now + timedelta(seconds=ttl))
        # Held: no line it applies to is past its cap with what is now reserved.
        assert all(used + reserved <= cap for used, reserved, cap in self.read(large))
        return reservation_id

    @rule(reservation_id=reservations)
    def reserve_again(self, reservation_id: str):
        held = self.held[reservation_id]
        request = ReservationIn(
            reservation_id=reservation_id,
            metric="text_tokens",
            quantity_milli=held.quantity * 1000,
            labels=LARGE if held.large else {},
            ttl_seconds=900,
        )
        again = reservation_create(account_id=self.account.pk, request=request, now=self.now)
        assert not again.created
        assert again.reservation.reservation_id == reservation_id

    @rule(reservation_id=consumes(reservations), quantity=st.integers(min_value=1, max_value=300))
    def settle(self, reservation_id: str, quantity: int):
        held = self.held[reservation_id]
        self.record(quantity, held.large, reservation_id)
        if held.holds(self.now):
            held.status = "settled"

    @rule(reservation_id=reservations)
    def release(self, reservation_id: str):
        held = self.held[reservation_id]
        reservation = reservation_release(
            account=self.account, reservation_id=reservation_id, now=self.now
        )
        if held.holds(self.now):
            held.status = "released"
        assert reservation.state_at(self.now) == (
            "expired" if held.status == "active" else held.status
        )

    @rule(quantity=st.integers(min_value=1, max_value=300), large=st.booleans())
    def ingest(self, quantity: int, large: bool):
        self.record(quantity, large)

    @rule(seconds=st.integers(min_value=1, max_value=900))
    def wait(self, seconds: int):
        self.now += timedelta(seconds=seconds)

    @rule()
    def tidy(self):
        reservations_expire(now=self.now)

    # --- what must hold after every step ---

    @invariant()
    def lines_read_as_the_model_says(self):
        assert self.read(True) == self.lines(True)


@pytest.mark.django_db
def test_no_interleaving_lets_a_reservation_pass_a_cap():
    ReservationMachine.TestCase.settings = settings(
        max_examples=25, stateful_step_count=30, deadline=None
    )
    ReservationMachine.TestCase().runTest()
