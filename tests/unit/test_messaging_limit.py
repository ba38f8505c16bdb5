"""The messaging-limit hop without a broker: contact partition -> portfolio partition -> decision."""

from __future__ import annotations

from typing import Any

import orjson
from prometheus_client import generate_latest

from streams.core.processor import MINUTE_PREFIX, REACHED_PREFIX, Processor, limits_key
from streams.core.records import Output, Record
from streams.metrics import GateMetrics
from streams.policy.keys import partition_for, request_contact_key
from streams.policy.limits import DAY_SECONDS
from streams.policy.templates import Registry
from streams.settings import Settings
from streams.topology import topology

from .factories import HOUR, T0
from .test_pipeline import DictState

PARTITIONS = 4
PNID, WABA = "pn1", "waba1"
TEMPLATE = {"type": "template", "template": {"name": "hello", "language": {"code": "en_US"}}}


class Gate:
    """One Processor standing in for every partition, with a log of what it wrote."""

    def __init__(
        self,
        limits: dict[str, int] | None = None,
        portfolios: dict[str, str] | None = None,
        signing_key: bytes | None = None,
    ) -> None:
        self.settings = Settings(partitions=PARTITIONS, store="memory", window_events_enabled=False)
        self.topo = topology(self.settings)
        self.metrics = GateMetrics()
        self.now = T0
        self.registry = Registry(
            configured_numbers={PNID: WABA, "pn2": "waba2"},
            configured_portfolios=portfolios or {},
            configured_limits=limits or {},
        )
        self.processor = Processor(
            self.topo,
            DictState(),
            self.settings.rules,
            self.metrics,
            self.registry,
            clock=lambda: self.now,
            signing_key=signing_key,
        )
        self.offset = 0
        self.decisions: list[dict[str, Any]] = []

    def record(
        self,
        topic: str,
        partition: int | None,
        key: bytes | None,
        value: bytes | None,
        headers: tuple[tuple[str, bytes], ...] = (),
    ) -> Record:
        self.offset += 1
        assert partition is not None
        return Record(topic, partition, self.offset, 0, key, value, headers)

    def run(self, out: list[Output]) -> None:
        """Deliver what was written: inbound records are handled in turn, decisions collected."""
        while out:
            output = out.pop(0)
            if output.topic == self.topo.inbound.name:
                more: list[Output] = []
                record = self.record(output.topic, output.partition, output.key, output.value, output.headers)
                self.processor.inbound(record, more)
                self.processor.flush_portfolios(record.partition, more)
                out.extend(more)
            elif output.topic in (self.topo.send.name, self.topo.template.name, self.topo.rejected.name):
                decision = orjson.loads(output.value or b"")
                assert output.partition == partition_for(decision["contact"], PARTITIONS)
                self.decisions.append(decision)

    def request(self, user: str, rid: str, pnid: str = PNID, **fields: Any) -> dict[str, Any]:
        key = request_contact_key(pnid, user, fields.get("recipient_type", "individual"))
        value = {"request_id": rid, "phone_number_id": pnid, "to": user, "origin": "broadcast", **fields}
        value.setdefault("message", TEMPLATE)
        record = self.record(
            self.topo.requests.name, partition_for(key, PARTITIONS), key.encode(), orjson.dumps(value)
        )
        out: list[Output] = []
        self.processor.request(record, out)
        self.run(out)
        return self.decisions[-1]

    def message_from(self, user: str, ts: float) -> None:
        key = f"{PNID}:{user}"
        event = {"event_id": f"w.{user}.{ts}", "phone_number_id": PNID, "user": user}
        value = orjson.dumps({**event, "timestamp": ts, "kind": "message", "type": "text"})
        out: list[Output] = []
        self.processor.inbound(
            self.record(self.topo.inbound.name, partition_for(key, PARTITIONS), key.encode(), value), out
        )
        self.run(out)

    def capability(self, waba: str, limit: Any, at: float) -> None:
        change = {
            "field": "business_capability_update",
            "value": {"max_daily_conversations_per_business": limit},
        }
        body = {
            "object": "whatsapp_business_account",
            "entry": [{"id": waba, "time": at, "changes": [change]}],
        }
        out: list[Output] = []
        self.processor.webhook(self.record(self.topo.webhooks.name, 0, None, orjson.dumps(body)), out)
        assert {o.partition for o in out if o.topic == self.topo.inbound.name} == set(range(PARTITIONS))
        self.run(out)


def test_past_the_limit_business_initiated_templates_are_rejected_with_the_request_echoed() -> None:
    gate = Gate(limits={WABA: 3})
    decisions = [gate.request(f"u{i}", f"r{i}") for i in range(5)]
    assert [d["route"] for d in decisions] == ["send"] * 3 + ["rejected"] * 2
    refused = decisions[3]
    assert refused["reason"] == "messaging_limit_reached" and refused["request"]["request_id"] == "r3"
    assert "3 of 3" in refused["detail"] and refused["message"] is None and refused["contact"] == "pn1:u3"
    # an already-reached user is not limited; nor is a user writing in (the window is open)
    assert gate.request("u0", "r0b")["route"] == "send"
    gate.message_from("u9", T0 - HOUR)
    assert gate.request("u9", "r9")["route"] == "send"  # inside the window: no slot needed
    # a repeated request_id is a duplicate at the contact's partition, never a second slot
    assert gate.request("u1", "r1")["reason"] == "duplicate_request"
    assert gate.processor.portfolio_usage() == [(WABA, 3, 3)]


def test_a_capability_webhook_raises_the_limit_for_the_next_request() -> None:
    gate = Gate(limits={WABA: 1})
    assert gate.request("u0", "r0")["route"] == "send"
    assert gate.request("u1", "r1")["reason"] == "messaging_limit_reached"
    gate.capability(WABA, "TIER_2K", T0)  # the webhook's value wins over the configured one
    assert gate.request("u1", "r1b")["route"] == "send"
    assert gate.processor.portfolio_usage() == [(WABA, 2_000, 2)]
    text = generate_latest(gate.metrics.registry).decode()
    assert 'wagate_messaging_limit{portfolio="waba1"} 2000.0' in text
    assert 'wagate_messaging_limit_used{portfolio="waba1"} 2.0' in text
    assert 'wagate_messaging_limit_reservations_total{outcome="refused"} 1.0' in text
    # an older retry of a webhook does not move the limit back
    gate.capability(WABA, 250, T0 - 60)
    assert gate.processor.portfolio_usage() == [(WABA, 2_000, 2)]
    gate.capability(WABA, "TIER_UNLIMITED", T0 + 60)  # unlimited: no hop at all from now on
    assert gate.request("u2", "r2")["route"] == "send"
    assert gate.processor.portfolio_usage() == [(WABA, -1, 2)]


def test_numbers_of_one_portfolio_share_its_limit_and_count_a_user_once() -> None:
    gate = Gate(limits={"biz": 2}, portfolios={WABA: "biz", "waba2": "biz"})
    assert gate.request("u0", "a", pnid=PNID)["route"] == "send"
    assert gate.request("u0", "b", pnid="pn2")["route"] == "send"  # the same user from another number
    assert gate.request("u1", "c", pnid="pn2")["route"] == "send"
    assert gate.request("u2", "d", pnid=PNID)["reason"] == "messaging_limit_reached"


def test_no_known_limit_and_groups_are_never_held() -> None:
    gate = Gate()
    assert all(gate.request(f"u{i}", f"r{i}")["route"] == "send" for i in range(10))
    assert gate.processor.portfolio_usage() == []
    limited = Gate(limits={WABA: 0})
    group = limited.request("g1", "g", recipient_type="group")
    assert group["route"] == "send"


def test_the_gauges_leave_with_the_portfolios_partition() -> None:
    gate = Gate(limits={WABA: 5})
    gate.request("u0", "r0")
    home = partition_for(limits_key(WABA), PARTITIONS)
    gate.processor.forget_partition((home + 1) % PARTITIONS)
    assert gate.processor.portfolio_usage() == [(WABA, 5, 1)]
    gate.processor.forget_partition(home)
    assert gate.processor.portfolio_usage() == []


def test_a_hand_written_limit_event_that_cannot_be_used_is_dead_lettered() -> None:
    gate = Gate(limits={WABA: 5})
    out: list[Output] = []
    bad = {"kind": "limit", "type": "reserve", "event_id": "x", "portfolio": WABA, "timestamp": T0}
    record = gate.record(gate.topo.inbound.name, 0, b"limits:waba1", orjson.dumps(bad))
    gate.processor.inbound(record, out)
    letters = [o for o in out if o.topic == gate.topo.deadletter.name]
    assert len(letters) == 1 and b"user and decision" in (letters[0].value or b"")


def test_meta_refusing_marketing_to_a_paused_destination_feeds_the_pause_metric() -> None:
    gate = Gate()
    for user, code in (("14155550100", 131049), ("5511987654321", 131049), ("14155550101", 131047)):
        key = f"{PNID}:{user}"
        status = {
            "event_id": f"wamid.{user}",
            "phone_number_id": PNID,
            "user": user,
            "timestamp": T0,
            "kind": "status",
            "type": "failed",
            "errors": [{"code": code, "title": "not delivered"}],
        }
        record = gate.record(
            gate.topo.inbound.name, partition_for(key, PARTITIONS), key.encode(), orjson.dumps(status)
        )
        gate.processor.inbound(record, [])
    assert gate.metrics.marketing_unavailable.labels("US", "meta")._value.get() == 1
    promo = {"type": "template", "template": {"name": "promo", "language": {"code": "en_US"}}}
    refused = gate.request("14155550102", "m1", message=promo, intent="marketing")
    assert refused["reason"] == "marketing_unavailable_in_region"
    assert gate.metrics.marketing_unavailable.labels("US", "gate")._value.get() == 1


def _reserves(gate: Gate, user: str, rid: str, **fields: Any) -> list[Output]:
    """The reservation a request makes on its contact's partition (not yet delivered)."""
    key = f"{PNID}:{user}"
    value = {
        "request_id": rid,
        "phone_number_id": PNID,
        "to": user,
        "origin": "broadcast",
        "message": TEMPLATE,
    }
    record = gate.record(
        gate.topo.requests.name,
        partition_for(key, PARTITIONS),
        key.encode(),
        orjson.dumps({**value, **fields}),
    )
    out: list[Output] = []
    gate.processor.request(record, out)
    return [o for o in out if o.topic == gate.topo.inbound.name]


def test_a_reservation_delivered_twice_is_sent_once() -> None:
    """at_least_once: after a crash the portfolio's partition may read a reservation again."""
    gate = Gate(limits={WABA: 5})
    reservation = _reserves(gate, "u1", "r1")
    gate.run(list(reservation))
    gate.run(list(reservation))
    assert [(d["route"], d["reason"]) for d in gate.decisions] == [
        ("send", "template_unverified"),
        ("rejected", "duplicate_request"),
    ]
    assert gate.processor.portfolio_usage() == [(WABA, 5, 1)]


def test_a_request_past_its_not_after_while_waiting_for_a_slot_is_stale() -> None:
    gate = Gate(limits={WABA: 5})
    reservation = _reserves(gate, "u1", "r1", not_after=T0 + 5)
    gate.now = T0 + 10  # the portfolio's partition reads it late (a recovery, a backlog)
    gate.run(reservation)
    assert (gate.decisions[-1]["route"], gate.decisions[-1]["reason"]) == ("rejected", "stale_request")
    assert all(used == 0 for _, _, used in gate.processor.portfolio_usage())  # no slot taken


def _own_keys(gate: Gate, prefix: bytes) -> int:
    state = gate.processor.state
    assert isinstance(state, DictState)
    return sum(1 for (_, key), value in state.data.items() if key.startswith(prefix) and value)


def test_users_records_go_when_their_minute_leaves_the_24_hours() -> None:
    gate = Gate(limits={WABA: 1_000})
    for i in range(50):
        gate.request(f"u{i}", f"r{i}")
    assert _own_keys(gate, REACHED_PREFIX) == 50 and _own_keys(gate, MINUTE_PREFIX) == 1
    gate.now = T0 + 3600
    gate.request("u0", "again")  # u0 moves to this minute: still reached
    gate.now = T0 + DAY_SECONDS + 120  # the first minute has left the moving 24 h
    gate.request("late", "late")
    assert _own_keys(gate, REACHED_PREFIX) == 2  # u0 (reached an hour later) and the newcomer
    assert _own_keys(gate, MINUTE_PREFIX) == 2
    assert gate.processor.portfolio_usage() == [(WABA, 1_000, 2)]
    assert gate.request("u0", "u0-3")["route"] == "send"


def test_a_hand_written_reservation_cannot_publish_free_form() -> None:
    gate = Gate(limits={WABA: 5})
    [reservation] = _reserves(gate, "u1", "r1")
    forged = orjson.loads(reservation.value or b"")
    forged["decision"]["message"] = {
        "messaging_product": "whatsapp",
        "to": "u1",
        "type": "text",
        "text": {"body": "x"},
    }
    out: list[Output] = []
    gate.processor.inbound(
        gate.record(gate.topo.inbound.name, reservation.partition, reservation.key, orjson.dumps(forged)), out
    )
    assert [o.topic for o in out] == [gate.topo.deadletter.name]


def test_a_limit_from_the_far_future_does_not_pin_it() -> None:
    gate = Gate()
    gate.capability(WABA, 250, T0 + 10 * DAY_SECONDS)  # a wrong clock somewhere
    gate.capability(WABA, 2_000, T0 + 3600)  # the real next update, an hour later
    assert gate.processor.portfolio_usage() == [(WABA, 2_000, 0)]


def test_with_an_internal_key_only_signed_limit_records_count() -> None:
    key = b"k" * 24
    gate = Gate(limits={WABA: 5}, signing_key=key)
    assert gate.request("u1", "r1")["route"] == "send"  # signed by the gate, checked by the gate
    gate.capability(WABA, 10, T0)
    assert gate.processor.portfolio_usage() == [(WABA, 10, 1)]
    [reservation] = _reserves(gate, "u2", "r2")
    assert reservation.headers and reservation.headers[0][0] == "wagate-signature"
    for headers in ((), (("wagate-signature", b"0" * 64),)):  # unsigned, then signed with another key
        out: list[Output] = []
        record = gate.record(
            gate.topo.inbound.name, reservation.partition, reservation.key, reservation.value, headers
        )
        gate.processor.inbound(record, out)
        assert [o.topic for o in out] == [gate.topo.deadletter.name]
        assert b"WAGATE_INTERNAL_KEY" in (out[0].value or b"")
    assert gate.metrics.dead_letters.labels("wa.inbound", "unsigned_limit_event")._value.get() == 2
