"""One person, several identifiers (phone number, BSUID, parent BSUID): the alias rules, pure and run
through the processor with its outputs fed back as a broker would deliver them (no broker: the pure
core and its routing; tests/integration/test_contacts.py runs the same stories on a real Kafka)."""

from __future__ import annotations

import itertools
from collections import deque
from dataclasses import fields, replace
from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.core.processor import MAX_ALIAS_HOPS, MAX_ECHO_BYTES, Processor
from streams.core.records import Output, Record
from streams.metrics import GateMetrics
from streams.models import Decision
from streams.policy.contacts import (
    Alias,
    canonical_identifier,
    has_window_content,
    merge_states,
    point_to,
)
from streams.policy.keys import is_business_scoped, partition_for
from streams.policy.templates import Registry
from streams.policy.webhook import normalize_webhook
from streams.policy.window import ContactState, view, window_report
from streams.settings import Settings
from streams.topology import topology
from tests.whatsapp_fixtures import FIXTURES

from .factories import DAY, HOUR, T0
from .test_pipeline import DictState

PNID = "123456123"  # the whatsapp-api-js v25 fixtures' phone_number_id
PHONE = "16315551181"
BSUID = "US.13491208655302741918"
PARENT = "US.11815799212886844830"  # the v25 fixtures' parent_user_id (Meta's example: no ENT in it)


# -- pure rules ----------------------------------------------------------------------------------


def test_the_canonical_identifier_is_the_phone_number_then_the_bsuid_then_the_parent() -> None:
    assert canonical_identifier([("user_id", BSUID), ("wa_id", PHONE), ("parent_user_id", PARENT)]) == PHONE
    assert canonical_identifier([("parent_user_id", PARENT), ("user_id", BSUID)]) == BSUID
    alias = Alias.of(PNID, [("user_id", BSUID), ("wa_id", PHONE)], 1.0)
    assert alias is not None and (alias.canonical, alias.identifiers) == (PHONE, (PHONE, BSUID))
    assert Alias.of(PNID, [("wa_id", PHONE), ("wa_id", PHONE)], 1.0) is None  # one identifier: no alias


def test_bsuids_are_told_from_phone_numbers_by_their_form() -> None:
    assert is_business_scoped(BSUID) and is_business_scoped("US.ENT.11815799212886844830")
    assert not is_business_scoped(PHONE) and not is_business_scoped("group:abc")


def test_pointing_carries_the_window_kept_under_the_identifier_and_never_points_a_phone() -> None:
    kept = ContactState(last_opener_at=T0 - 60, decided={"r1": T0 - 30})
    pointed, carried = point_to(kept, BSUID, PHONE, T0)
    assert pointed == ContactState(alias_of=PHONE, alias_at=T0)
    assert carried is not None and carried.last_opener_at == T0 - 60 and carried.decided == {"r1": T0 - 30}
    assert point_to(pointed, BSUID, PHONE, T0 - 1) == (pointed, None)  # an older alias changes nothing
    assert point_to(ContactState(), PHONE, BSUID, T0) == (ContactState(), None)  # a phone is canonical
    assert point_to(ContactState(aliases=(PHONE,)), BSUID, PHONE, T0)[1] is None  # no cycle


_times = st.one_of(st.none(), st.floats(min_value=T0 - 3 * DAY, max_value=T0, allow_nan=False))
_states = st.builds(
    ContactState,
    last_opener_at=_times,
    closed_at=_times,
    decided=st.dictionaries(st.sampled_from(["r1", "r2", "r3"]), st.floats(T0 - DAY, T0), max_size=3),
    marketing_pref_at=_times,
    marketing_opted_out=st.booleans(),
    marketing_cooldown_until=_times,
    referral_at=_times,
    free_entry_started_at=_times,
    free_entry_until=_times,
    free_form_sent_at=_times,
    aliases=st.lists(st.sampled_from([BSUID, PARENT]), unique=True).map(lambda a: tuple(sorted(a))),
).map(
    # Only states the rules can make: an opt-out has a time, a free entry point window a start and an end.
    lambda s: replace(
        s,
        marketing_opted_out=s.marketing_opted_out and s.marketing_pref_at is not None,
        free_entry_until=None if s.free_entry_started_at is None else s.free_entry_started_at + 3 * DAY,
    )
)


def _window_fields(state: ContactState) -> dict[str, Any]:
    return {
        f.name: getattr(state, f.name) for f in fields(ContactState) if f.name not in ("alias_of", "alias_at")
    }


@settings(max_examples=300, deadline=None)
@given(_states, _states, _states)
def test_merging_two_states_of_one_person_is_a_join(
    a: ContactState, b: ContactState, c: ContactState
) -> None:
    """Commutative, associative, idempotent: so any order of the webhooks that reveal an alias, and any
    order of the merges they cause, gives the same contact."""
    assert _window_fields(merge_states(a, b)) == _window_fields(merge_states(b, a))
    assert _window_fields(merge_states(merge_states(a, b), c)) == _window_fields(
        merge_states(a, merge_states(b, c))
    )
    assert _window_fields(merge_states(a, a)) == _window_fields(a)
    merged = merge_states(a, b)
    # Never less open than either side: the window is the later of the two.
    for part in (a, b):
        if part.last_opener_at is not None:
            assert merged.last_opener_at is not None and merged.last_opener_at >= part.last_opener_at


def test_the_report_names_every_identifier_of_the_contact() -> None:
    rules = Settings(store="memory").rules
    report = window_report(f"{PNID}:{PHONE}", ContactState(aliases=(BSUID,)), T0, rules, asked_as=BSUID)
    assert (report.identifiers, report.asked_as) == ([PHONE, BSUID], BSUID)


# -- webhooks ------------------------------------------------------------------------------------


def _fixture(name: str) -> bytes:
    return (FIXTURES / "whatsapp-api-js" / name).read_bytes()


def test_v25_payloads_name_the_user_by_phone_with_the_bsuids_beside_it() -> None:
    for name in ("incoming.json", "sent.json", "delivered.json", "read.json"):
        result = normalize_webhook(_fixture(name), T0)
        [event] = result.events
        assert (event.user, event.user_id, event.parent_user_id) == (PHONE, BSUID, PARENT), name
        [alias] = result.aliases
        assert alias.identifiers == (PHONE, PARENT, BSUID), name


def _body(value: dict[str, Any], field: str = "messages") -> bytes:
    envelope = {
        "object": "whatsapp_business_account",
        "entry": [
            {
                "id": "1",
                "changes": [
                    {
                        "field": field,
                        "value": {
                            "messaging_product": "whatsapp",
                            "metadata": {"display_phone_number": "16505551111", "phone_number_id": PNID},
                            **value,
                        },
                    }
                ],
            }
        ],
    }
    return orjson.dumps(envelope)


def username_message(ts: float, user_id: str = BSUID, mid: str = "wamid.u1") -> bytes:
    """A user with a username: Meta withholds the phone number (no 'from', no wa_id)."""
    return _body(
        {
            "contacts": [{"profile": {"name": "A", "username": "@a"}, "user_id": user_id}],
            "messages": [
                {
                    "from_user_id": user_id,
                    "id": mid,
                    "timestamp": str(int(ts)),
                    "type": "text",
                    "text": {"body": "hi"},
                }
            ],
        }
    )


def failed_status(ts: float, *, recipient_user_id: str = BSUID, code: int = 131047) -> bytes:
    """A failed status for a message sent to the BSUID: no contacts block, no phone number."""
    status = {
        "id": f"wamid.f{ts}",
        "status": "failed",
        "timestamp": str(int(ts)),
        "recipient_user_id": recipient_user_id,
        "errors": [{"code": code, "title": "Re-engagement message"}],
    }
    return _body({"statuses": [status]})


def number_change(ts: float, old: str, new_phone: str | None, new_user_id: str | None, kind: str) -> bytes:
    system: dict[str, Any] = {"body": "User A changed", "type": kind}
    if new_phone:
        system["wa_id"] = new_phone
    if new_user_id:
        system["user_id"] = new_user_id
    message = {"id": f"wamid.s{ts}", "timestamp": str(int(ts)), "type": "system", "system": system}
    message["from_user_id" if is_business_scoped(old) else "from"] = old
    return _body({"messages": [message]})


def marketing_stop(ts: float, user: str = PHONE) -> bytes:
    pref = {
        "wa_id": user,
        "category": "marketing_messages",
        "value": "stop",
        "timestamp": int(ts),
        "detail": "x",
    }
    return _body({"user_preferences": [pref]}, field="user_preferences")


def test_a_username_user_is_keyed_by_the_bsuid_until_an_alias_is_known() -> None:
    [event] = normalize_webhook(username_message(T0), T0).events
    assert (event.user, event.user_id) == (BSUID, None)
    assert normalize_webhook(username_message(T0), T0).aliases == []


def test_user_changed_user_id_names_the_new_bsuid_as_a_new_contact() -> None:
    [event] = normalize_webhook(number_change(T0, BSUID, None, "US.99", "user_changed_user_id"), T0).events
    assert (event.kind, event.type, event.user, event.new_user) == (
        "system",
        "user_changed_user_id",
        BSUID,
        "US.99",
    )
    result = normalize_webhook(number_change(T0, PHONE, "16315550000", "US.77", "user_changed_number"), T0)
    [alias] = result.aliases  # the new phone number and the new BSUID are one (new) contact
    assert (alias.canonical, alias.identifiers) == ("16315550000", ("16315550000", "US.77"))


# -- through the processor -----------------------------------------------------------------------


class World:
    """A processor whose outputs to its own inputs are delivered back in the order written (one
    interleaving a broker may give); the gate's answers collect in ``published``."""

    def __init__(self, partitions: int = 8) -> None:
        self.settings = Settings(partitions=partitions, store="memory", window_events_enabled=False)
        self.topo = topology(self.settings)
        self.metrics = GateMetrics()
        self.now = T0

        self.state = DictState()
        self.processor = Processor(
            self.topo, self.state, self.settings.rules, self.metrics, Registry(), clock=lambda: self.now
        )
        self.queue: deque[Record] = deque()
        self.offsets: dict[tuple[str, int], int] = {}
        self.published: list[Output] = []
        self.handled = 0

    def write(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        partition: int | None = None,
        headers: tuple[tuple[str, bytes], ...] = (),
    ) -> None:
        if partition is None:
            partition = 0 if key is None else partition_for(key, self.settings.partitions)
        offset = self.offsets.get((topic, partition), 0)
        self.offsets[(topic, partition)] = offset + 1
        self.queue.append(Record(topic, partition, offset, 0, key, value, headers))

    def run(self) -> None:
        handlers = {
            self.topo.webhooks.name: self.processor.webhook,
            self.topo.inbound.name: self.processor.inbound,
            self.topo.requests.name: self.processor.request,
        }
        while self.queue:
            record = self.queue.popleft()
            out: list[Output] = []
            handlers[record.topic](record, out)
            self.handled += 1
            assert self.handled < 10_000, "records kept moving between partitions (an alias cycle)"
            for output in out:
                if output.topic in handlers:
                    self.write(output.topic, output.key, output.value, output.partition, output.headers)
                else:
                    self.published.append(output)

    def webhook(self, body: bytes) -> None:
        self.write(self.topo.webhooks.name, None, body)
        self.run()

    def request(self, to: str, rid: str, key: str | None = None) -> Decision:
        value = {
            "request_id": rid,
            "phone_number_id": PNID,
            "to": to,
            "origin": "agent",
            "message": {"type": "text", "text": {"body": "hello"}},
        }
        self.write(self.topo.requests.name, (key or f"{PNID}:{to}").encode(), orjson.dumps(value))
        self.run()
        routes = {self.topo.send.name, self.topo.template.name, self.topo.rejected.name}
        decisions = [
            Decision.model_validate_json(o.value or b"") for o in self.published if o.topic in routes
        ]
        return [d for d in decisions if d.request_id == rid][-1]  # the newest decision of this id

    def partition(self, identifier: str) -> int:
        return partition_for(f"{PNID}:{identifier}", self.settings.partitions)

    def contact(self, identifier: str) -> ContactState:
        key = f"{PNID}:{identifier}"
        raw = self.state.get(partition_for(key, self.settings.partitions), key.encode())
        return ContactState.from_bytes(raw)

    def contact_records(self) -> dict[str, dict[str, Any]]:
        return {
            (o.key or b"").decode(): orjson.loads(o.value or b"")
            for o in self.published
            if o.topic == self.topo.contacts.name
        }


def test_a_user_writes_with_phone_and_bsuid_then_a_request_by_the_bsuid_is_sent() -> None:
    world = World()
    world.webhook(_fixture("incoming.json"))  # timestamp 1504902988: set the clock an hour after it
    world.now = 1504902988 + HOUR
    decision = world.request(BSUID, "r-bsuid")
    assert (decision.route, decision.reason) == ("send", "window_open")
    assert (decision.contact, decision.to) == (f"{PNID}:{PHONE}", BSUID)
    assert (
        decision.message is not None
        and decision.message["recipient"] == BSUID
        and "to" not in decision.message
    )
    assert world.contact(BSUID) == ContactState(alias_of=PHONE, alias_at=1504902988.0)
    assert world.contact(PHONE).aliases == tuple(sorted((BSUID, PARENT)))
    records = world.contact_records()
    assert set(records) == {f"{PNID}:{i}" for i in (PHONE, BSUID, PARENT)}
    assert {r["contact"] for r in records.values()} == {f"{PNID}:{PHONE}"}
    assert world.metrics.rekeyed.labels("requests")._value.get() == 1
    assert world.metrics.aliases_learnt.labels("user_id")._value.get() == 1
    # The parent BSUID reaches the same window, and a request by phone is not moved at all.
    assert world.request(PARENT, "r-parent").reason == "window_open"
    assert world.request(PHONE, "r-phone").contact == f"{PNID}:{PHONE}"
    assert world.metrics.rekeyed.labels("requests")._value.get() == 2


def test_until_an_alias_is_known_the_bsuid_is_a_separate_contact() -> None:
    world = World()
    world.webhook(
        _body({"messages": [{"from": PHONE, "id": "m1", "timestamp": str(int(T0 - 60)), "type": "text"}]})
    )
    decision = world.request(BSUID, "r1")
    assert (decision.route, decision.reason, decision.contact) == ("rejected", "no_window", f"{PNID}:{BSUID}")


def test_a_window_opened_under_the_bsuid_joins_the_phone_contact_once_the_alias_is_known() -> None:
    """The reverse order: the user writes with a username (BSUID only), a request by BSUID is sent,
    then a status names phone and BSUID together; a request by phone then finds the window, and the
    request id decided under the BSUID is still known."""
    world = World()
    world.webhook(username_message(T0 - 600))
    assert world.request(BSUID, "r1").reason == "window_open"
    world.webhook(_fixture("delivered.json"))  # names PHONE, BSUID and PARENT together
    assert world.contact(BSUID).alias_of == PHONE and not has_window_content(world.contact(BSUID))
    by_phone = world.request(PHONE, "r2")
    assert (by_phone.route, by_phone.reason) == ("send", "window_open")
    assert world.request(PHONE, "r1").reason == "duplicate_request"
    assert world.metrics.contacts_merged._value.get() == 1


def test_a_131047_for_the_bsuid_closes_the_window_kept_under_the_phone_number() -> None:
    world = World()
    world.webhook(_fixture("incoming.json"))
    world.now = 1504902988 + HOUR
    assert world.request(PHONE, "r1").reason == "window_open"
    world.webhook(failed_status(1504902988 + HOUR + 1))
    world.now += 10
    # This worker knows the alias (wa.contacts): the status went straight to the phone's contact.
    assert world.metrics.rekeyed.labels("webhooks")._value.get() == 1
    decision = world.request(PHONE, "r2")
    assert (decision.route, decision.reason) == ("rejected", "window_closed")
    assert world.metrics.gate_misses._value.get() == 1  # the failure follows the gate's own send


def test_an_event_for_the_bsuid_reaches_the_phone_contact_even_when_the_normalizer_does_not_know() -> None:
    """A worker whose copy of wa.contacts lags: the BSUID's partition moves the event (one hop more)."""
    world = World()
    world.webhook(_fixture("incoming.json"))
    world.now = 1504902988 + HOUR
    world.processor.registry.aliases.clear()
    world.webhook(failed_status(1504902988 + HOUR - 1))
    assert world.metrics.rekeyed.labels("inbound")._value.get() == 1
    assert world.request(PHONE, "r1").reason == "window_closed"


def test_a_number_change_closes_the_window_and_carries_the_opt_out_to_the_new_contact() -> None:
    world = World()
    world.webhook(_fixture("incoming.json"))
    world.webhook(marketing_stop(1504902988 + 10))
    world.now = 1504902988 + HOUR
    world.webhook(number_change(world.now - 5, PHONE, "16315550000", "US.77", "user_changed_number"))
    old = world.contact(PHONE)
    assert view(old, world.now, world.settings.rules).state == "closed"
    new = world.contact("16315550000")
    assert (new.marketing_opted_out, new.last_opener_at, new.aliases) == (True, None, ("US.77",))
    # The new contact has no window (only templates), and no marketing either: the user opted out.
    assert world.request("US.77", "r1").reason == "no_window"
    assert world.contact("US.77").alias_of == "16315550000"


def test_a_bsuid_change_closes_the_contact_it_belonged_to() -> None:
    world = World()
    world.webhook(_fixture("incoming.json"))
    world.now = 1504902988 + HOUR
    world.webhook(number_change(world.now - 5, BSUID, None, "US.99", "user_changed_user_id"))
    assert world.request(PHONE, "r1").reason == "window_closed"
    assert world.request("US.99", "r2").reason == "no_window"


def test_a_request_keyed_by_a_contact_that_does_not_list_its_to_is_decided_under_its_own_to() -> None:
    """A forged or mistaken key cannot borrow another contact's open window."""
    world = World()
    world.webhook(_fixture("incoming.json"))
    world.now = 1504902988 + HOUR
    decision = world.request("US.55", "r1", key=f"{PNID}:{PHONE}")
    assert (decision.reason, decision.contact) == ("no_window", f"{PNID}:US.55")


# -- any order gives the same contacts -----------------------------------------------------------

_STORY = {
    "incoming": lambda: _fixture("incoming.json"),
    "username_message": lambda: username_message(1504902988 - 50, mid="wamid.early"),
    "parent_only": lambda: _body(
        {"messages": [{"from_parent_user_id": PARENT, "id": "p1", "timestamp": "1504902900", "type": "text"}]}
    ),
    "failed_131050": lambda: failed_status(1504902989, code=131050),
    "delivered": lambda: _fixture("delivered.json"),
    "phone_message": lambda: _body(
        {"messages": [{"from": PHONE, "id": "m9", "timestamp": "1504902990", "type": "image"}]}
    ),
}


def _outcome(world: World) -> dict[str, Any]:
    phone = world.contact(PHONE)
    return {
        "window": _window_fields(phone) | {"decided": {}},
        "points": {i: world.contact(i).alias_of for i in (BSUID, PARENT)},
        "bsuid_has_content": has_window_content(world.contact(BSUID)),
    }


@settings(max_examples=60, deadline=None)
@given(st.permutations(sorted(_STORY)), st.integers(min_value=1, max_value=8))
def test_any_order_of_the_webhooks_that_reveal_an_alias_gives_the_same_contacts(
    order: list[str], partitions: int
) -> None:
    expected = None
    for sequence in (sorted(_STORY), order):
        world = World(partitions)
        for name in sequence:
            world.webhook(_STORY[name]())
        outcome = _outcome(world)
        if expected is None:
            expected = outcome
        assert outcome == expected
    assert expected is not None and expected["points"] == {BSUID: PHONE, PARENT: PHONE}
    assert expected["window"]["marketing_opted_out"] is True and not expected["bsuid_has_content"]


def test_announcements_of_random_alias_sets_always_come_to_rest() -> None:
    """Re-keying follows alias_of, which only ever points to a higher-ranked identifier: whatever
    identifiers are named together, no record moves between partitions for ever."""
    ids = [
        ("wa_id", "111"),
        ("wa_id", "222"),
        ("user_id", "US.1"),
        ("user_id", "US.2"),
        ("parent_user_id", "US.3"),
    ]
    for combo in itertools.combinations(ids, 2):
        world = World(4)
        for kind, value in combo:
            field = {"wa_id": "from", "user_id": "from_user_id", "parent_user_id": "from_parent_user_id"}[
                kind
            ]
            world.webhook(
                _body({"messages": [{field: value, "id": f"m{value}", "timestamp": "1", "type": "text"}]})
            )
        world.webhook(
            _body(
                {
                    "messages": [
                        {
                            **{
                                {
                                    "wa_id": "from",
                                    "user_id": "from_user_id",
                                    "parent_user_id": "from_parent_user_id",
                                }[k]: v
                                for k, v in combo
                            },
                            "id": "both",
                            "timestamp": "2",
                            "type": "text",
                        }
                    ]
                }
            )
        )
        for _, value in ids:
            world.request(value, f"r-{combo}-{value}")


# -- hostile alias records -------------------------------------------------------------------------


def _alias_event(world: World, user: str, **fields: Any) -> None:
    event = {
        "event_id": f"x-{user}",
        "phone_number_id": PNID,
        "user": user,
        "timestamp": 1.0,
        "kind": "alias",
    }
    world.write(world.topo.inbound.name, f"{PNID}:{user}".encode(), orjson.dumps({**event, **fields}))
    world.run()


def test_contradicting_alias_records_stop_a_request_instead_of_circling() -> None:
    """Hand-written points X -> Y and Y -> X (each side not listing the other): the request moves at
    most MAX_ALIAS_HOPS times, then is decided where it stands, as an unknown contact."""
    world = World()
    _alias_event(world, "US.X", type="point", alias_of="US.Y")
    _alias_event(world, "US.Y", type="point", alias_of="US.X")
    decision = world.request("US.X", "r1")
    assert decision.reason == "no_window"
    assert world.metrics.rekeyed.labels("stopped")._value.get() == 1
    _alias_event(world, "US.X", type="merge", merged_state={"o": T0})  # an event for X circles too
    letters = [orjson.loads(o.value or b"") for o in world.published if o.topic == world.topo.deadletter.name]
    assert [letter["error"].split(":")[0] for letter in letters] == [
        "moved 3 times between identifiers of one user"
    ]


def test_a_merge_with_a_state_the_gate_could_not_have_written_is_dead_lettered() -> None:
    world = World()
    for bad in ({"o": "yesterday"}, {"d": {"r1": "x"}}, {"al": [1]}, {"mo": "yes"}, {"o": True}):
        _alias_event(world, PHONE, type="merge", via=BSUID, merged_state=bad)
    letters = [o for o in world.published if o.topic == world.topo.deadletter.name]
    assert len(letters) == 5
    assert world.contact(PHONE) == ContactState()  # nothing entered the store
    decision = world.request(PHONE, "r1")  # and the contact still decides
    assert decision.reason == "no_window"


def test_an_item_with_two_bsuids_learns_both_so_a_request_to_either_comes_to_rest() -> None:
    """Issue 18, finding 4: a message from US.AAA whose contacts[] entry gives the phone number and
    another BSUID, US.BBB. The learn event kept one BSUID per kind while a point went to each: US.BBB
    pointed to a contact that did not list it, and a request to US.BBB bounced between the two
    partitions for ever (the re-partitioned copy lost its hop count)."""
    world = World(8)
    contacts = [{"profile": {"name": "A"}, "wa_id": PHONE, "user_id": "US.BBB"}]
    message = {
        "from": PHONE,
        "from_user_id": "US.AAA",
        "id": "m1",
        "timestamp": str(int(T0 - 60)),
        "type": "text",
    }
    world.webhook(_body({"contacts": contacts, "messages": [message]}))
    phone = world.contact(PHONE)
    assert set(phone.aliases) == {"US.AAA", "US.BBB"}  # what the contact lists ...
    assert {i: world.contact(i).alias_of for i in ("US.AAA", "US.BBB")} == {"US.AAA": PHONE, "US.BBB": PHONE}
    for to in ("US.BBB", "US.AAA", PHONE):  # ... and what points to it agree
        assert world.request(to, f"r-{to}").reason == "window_open"
    assert world.metrics.rekeyed.labels("stopped")._value.get() == 0


def test_a_request_bounced_between_an_alias_and_a_contact_that_does_not_list_it_stops() -> None:
    """A point written by hand to a contact that does not list the identifier: the request is re-keyed
    to the contact, which sends it back to the identifier's partition, and so on. Every move counts
    as a hop, re-partitions included, so it is decided after MAX_ALIAS_HOPS moves, as an unknown
    contact, and nothing is stored on a partition that does not hold it."""
    world = World(8)
    x = next(f"US.X{i}" for i in range(100) if world.partition(f"US.X{i}") != world.partition(PHONE))
    _alias_event(world, x, type="point", alias_of=PHONE)
    stored = dict(world.state.data)
    decision = world.request(x, "r1")
    assert decision.reason == "no_window"
    assert world.metrics.rekeyed.labels("stopped")._value.get() == 1
    moves = world.metrics.rekeyed.labels("requests")._value.get()
    moves += world.metrics.repartitioned.labels("requests")._value.get()
    assert moves == MAX_ALIAS_HOPS
    assert world.state.data == stored  # the stray decision wrote no state


def test_a_moved_record_over_the_echo_cap_is_not_moved_but_rejected_or_dead_lettered() -> None:
    """A moved copy is capped like an echo: a record larger than Kafka takes would fail its transaction
    and the worker would replay and fail again. A request gets a rejection that says how to key it;
    an inbound event a dead letter."""
    world = World(8)
    x, y = (
        PHONE,
        next(f"1555{i}" for i in range(100) if world.partition(f"1555{i}") != world.partition(PHONE)),
    )
    big = {
        "request_id": "big",
        "phone_number_id": PNID,
        "to": x,
        "origin": "agent",
        "message": {"type": "text", "text": {"body": "x" * (MAX_ECHO_BYTES + 1)}},
    }
    world.write(world.topo.requests.name, f"{PNID}:{y}".encode(), orjson.dumps(big), world.partition(y))
    event = {"event_id": "e", "phone_number_id": PNID, "user": x, "timestamp": T0, "kind": "message"}
    event |= {"type": "text", "padding": "x" * (MAX_ECHO_BYTES + 1)}
    world.write(world.topo.inbound.name, f"{PNID}:{y}".encode(), orjson.dumps(event), world.partition(y))
    world.run()
    routes = {world.topo.send.name, world.topo.template.name, world.topo.rejected.name}
    (decision,) = [Decision.model_validate_json(o.value or b"") for o in world.published if o.topic in routes]
    assert (decision.request_id, decision.reason) == ("big", "invalid_request")
    assert "are not moved between partitions" in decision.detail and decision.request is None
    letters = [orjson.loads(o.value or b"") for o in world.published if o.topic == world.topo.deadletter.name]
    assert len(letters) == 1 and letters[0]["error"].startswith(f"larger than {MAX_ECHO_BYTES} bytes")
    assert world.metrics.repartitioned.labels("requests")._value.get() == 0
