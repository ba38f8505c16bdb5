"""End to end through Kafka topics on a real broker: produce inputs, consume the gate's outputs."""

from __future__ import annotations

import base64
import re
import time
from typing import Any

import orjson

from streams.models import DeadLetter, Decision
from streams.policy.keys import partition_for

from .conftest import inbound, text_request
from .harness import Gate

HOUR = 3600.0
FALLBACK = {"name": "follow_up", "language": {"code": "en_US"}, "components": []}


def test_requests_are_routed_by_window_with_complete_payloads(gate: Gate, pnid: str) -> None:
    now = time.time()
    t = gate.topo
    gate.produce_many(
        [
            (t.inbound.name, f"{pnid}:open", inbound(pnid, "open", now - HOUR)),
            (t.inbound.name, f"{pnid}:lapsed", inbound(pnid, "lapsed", now - 30 * HOUR)),
            (t.inbound.name, f"{pnid}:closing", inbound(pnid, "closing", now - 24 * HOUR + 30)),
            # a delivered status never opens a window
            (
                t.inbound.name,
                f"{pnid}:status",
                inbound(pnid, "status", now - 60, kind="status", type="delivered"),
            ),
        ]
    )
    gate.wait_consumed(t.inbound.name)
    cases: dict[str, tuple[str, dict[str, Any], str, str]] = {
        "open": ("open", {}, "send", "window_open"),
        "lapsed-fb": ("lapsed", {"fallback_template": FALLBACK}, "template", "window_closed"),
        "lapsed": ("lapsed", {}, "rejected", "window_closed"),
        "closing-fb": ("closing", {"fallback_template": FALLBACK}, "template", "window_closing"),
        "never": ("never", {}, "rejected", "no_window"),
        "status": ("status", {}, "rejected", "no_window"),
        "marketing": ("open", {"intent": "marketing"}, "rejected", "marketing_requires_template"),
        "template": (
            "never",
            {"message": {"type": "template", "template": FALLBACK}},
            "send",
            "template_unverified",
        ),
        "stale": ("open", {"not_after": now - 1}, "rejected", "stale_request"),
    }
    for name, (user, extra, _, _) in cases.items():
        gate.produce(t.requests.name, f"{pnid}:{user}", text_request(pnid, user, f"{pnid}-{name}", **extra))
    decided = gate.decisions([f"{pnid}-{name}" for name in cases])
    route_topic = {"send": t.send.name, "template": t.template.name, "rejected": t.rejected.name}
    for name, (user, _, route, reason) in cases.items():
        [record] = decided[f"{pnid}-{name}"]
        decision = Decision.model_validate(record.value)
        assert (decision.route, decision.reason) == (route, reason), name
        assert record.topic == route_topic[route]
        assert record.key == f"{pnid}:{user}".encode()
        assert "__faust" not in record.value
    open_send = decided[f"{pnid}-open"][0].value
    assert open_send["message"] == {
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": "open",
        "type": "text",
        "text": {"body": "hello"},
    }
    assert open_send["window"]["state"] == "open"
    assert abs(open_send["window"]["expires_at"] - (now - HOUR + 24 * HOUR)) < 1e-3
    converted = decided[f"{pnid}-lapsed-fb"][0].value
    assert converted["message"]["type"] == "template" and converted["message"]["template"] == FALLBACK
    rejected = decided[f"{pnid}-lapsed"][0].value
    assert rejected["request"]["request_id"] == f"{pnid}-lapsed" and rejected["message"] is None


def test_a_repeated_request_id_is_rejected_as_duplicate_never_sent_twice(gate: Gate, pnid: str) -> None:
    gate.produce(gate.topo.inbound.name, f"{pnid}:u", inbound(pnid, "u", time.time() - 60))
    gate.wait_consumed(gate.topo.inbound.name)
    request = text_request(pnid, "u", f"{pnid}-dup")
    gate.produce(gate.topo.requests.name, f"{pnid}:u", request)
    gate.produce(gate.topo.requests.name, f"{pnid}:u", request)
    marker = text_request(pnid, "u", f"{pnid}-after")
    gate.produce(gate.topo.requests.name, f"{pnid}:u", marker)
    decided = gate.decisions([f"{pnid}-dup", f"{pnid}-after"])
    routes = sorted((r.value["route"], r.value["reason"]) for r in decided[f"{pnid}-dup"])
    assert routes == [("rejected", "duplicate_request"), ("send", "window_open")]


def test_bad_requests_mid_stream_are_routed_and_the_rest_still_decided(gate: Gate, pnid: str) -> None:
    t = gate.topo
    key = f"{pnid}:u"
    gate.produce(t.requests.name, key, text_request(pnid, "u", f"{pnid}-before"))
    not_json_offset = gate.produce(t.requests.name, key, b"{this is not json")
    gate.produce(
        t.requests.name,
        key,
        {
            "request_id": f"{pnid}-bad",
            "phone_number_id": pnid,
            "to": "u",
            "origin": "robot",
            "message": {"type": "text", "text": {"body": "x"}},
        },
    )
    no_id_offset = gate.produce(t.requests.name, key, {"phone_number_id": pnid})
    gate.produce(t.requests.name, key, text_request(pnid, "u", f"{pnid}-after"))
    decided = gate.decisions([f"{pnid}-before", f"{pnid}-bad", f"{pnid}-after"])
    bad = decided[f"{pnid}-bad"][0].value
    assert (bad["route"], bad["reason"]) == ("rejected", "invalid_request")
    assert "'origin'" in bad["detail"] and bad["request"]["origin"] == "robot"
    assert decided[f"{pnid}-after"][0].value["reason"] == "no_window"

    wanted = {not_json_offset, no_id_offset}
    partition = partition_for(key, gate.settings.partitions)

    def mine(records: list) -> list:  # type: ignore[type-arg]
        return [
            r
            for r in records
            if r.key == key.encode() and r.value["partition"] == partition and r.value["offset"] in wanted
        ]

    letters = mine(gate.dead_letters(lambda records: len(mine(records)) == 2))
    by_offset = {r.value["offset"]: DeadLetter.model_validate(r.value) for r in letters}
    assert base64.b64decode(by_offset[not_json_offset].value_b64 or "") == b"{this is not json"
    assert "not valid JSON" in by_offset[not_json_offset].error
    assert "request_id" in by_offset[no_id_offset].error
    assert by_offset[no_id_offset].topic == t.requests.name


def test_invalid_inbound_event_is_dead_lettered_and_the_next_one_applies(gate: Gate, pnid: str) -> None:
    t = gate.topo
    key = f"{pnid}:u"
    bad_offset = gate.produce(
        t.inbound.name,
        key,
        {"event_id": "x", "phone_number_id": pnid, "user": "u", "kind": "message", "type": "text"},
    )  # no timestamp
    gate.produce(t.inbound.name, key, inbound(pnid, "u", time.time() - 60))
    gate.wait_consumed(t.inbound.name)
    gate.produce(t.requests.name, key, text_request(pnid, "u", f"{pnid}-r"))
    assert gate.decision(f"{pnid}-r").value["reason"] == "window_open"
    letters = gate.dead_letters(
        lambda records: any(r.key == key.encode() and r.value["offset"] == bad_offset for r in records)
    )
    letter = next(r.value for r in letters if r.key == key.encode() and r.value["offset"] == bad_offset)
    assert "'timestamp' is required" in letter["error"]
    assert orjson.loads(base64.b64decode(letter["value_b64"]))["event_id"] == "x"


def test_records_on_the_wrong_partition_are_repartitioned_then_decided(gate: Gate, pnid: str) -> None:
    t = gate.topo
    n = gate.settings.partitions
    key = f"{pnid}:stray"
    right = partition_for(key, n)
    wrong = (right + 1) % n
    gate.produce(t.inbound.name, key, inbound(pnid, "stray", time.time() - 60), partition=wrong)
    gate.wait_consumed(t.inbound.name)
    gate.wait_consumed(t.inbound.name)  # the re-produced copy, too
    gate.produce(t.requests.name, key, text_request(pnid, "stray", f"{pnid}-stray"), partition=wrong)
    record = gate.decision(f"{pnid}-stray")
    # decided where the state lives: the window opened by the stray inbound event is found
    assert (record.value["route"], record.value["reason"]) == ("send", "window_open")
    assert record.partition == right


def test_a_mis_keyed_record_is_moved_to_its_contacts_partition(gate: Gate, pnid: str) -> None:
    # Keyed by something else entirely: the payload says which contact it is.
    t = gate.topo
    gate.produce(t.inbound.name, "wrong-key", inbound(pnid, "mk", time.time() - 60))
    gate.wait_consumed(t.inbound.name)
    gate.wait_consumed(t.inbound.name)
    gate.produce(t.requests.name, "also-wrong", text_request(pnid, "mk", f"{pnid}-mk"))
    assert gate.decision(f"{pnid}-mk").value["reason"] == "window_open"


def test_a_group_participants_message_opens_the_groups_window(gate: Gate, pnid: str) -> None:
    t = gate.topo
    gate.produce(
        t.inbound.name, f"{pnid}:group:g1", inbound(pnid, "participant7", time.time() - 60, group_id="g1")
    )
    gate.wait_consumed(t.inbound.name)
    gate.produce(
        t.requests.name, f"{pnid}:group:g1", text_request(pnid, "g1", f"{pnid}-g", recipient_type="group")
    )
    gate.produce(t.requests.name, f"{pnid}:participant7", text_request(pnid, "participant7", f"{pnid}-p"))
    decided = gate.decisions([f"{pnid}-g", f"{pnid}-p"])
    group = decided[f"{pnid}-g"][0].value
    assert (group["route"], group["reason"], group["contact"]) == ("send", "window_open", f"{pnid}:group:g1")
    assert group["message"]["recipient_type"] == "group"
    # the participant's own 1:1 window is not opened by a group message
    assert decided[f"{pnid}-p"][0].value["reason"] == "no_window"


def test_a_re_engagement_failure_closes_the_window_and_a_newer_message_reopens_it(
    gate: Gate, pnid: str
) -> None:
    t = gate.topo
    now = time.time()
    key = f"{pnid}:u"
    gate.produce(t.inbound.name, key, inbound(pnid, "u", now - HOUR))
    gate.produce(
        t.inbound.name,
        key,
        inbound(
            pnid,
            "u",
            now - 600,
            kind="status",
            type="failed",
            errors=[{"code": 131047, "title": "Re-engagement message"}],
        ),
    )
    gate.wait_consumed(t.inbound.name)
    gate.produce(t.requests.name, key, text_request(pnid, "u", f"{pnid}-1"))
    assert gate.decision(f"{pnid}-1").value["reason"] == "window_closed"
    gate.produce(t.inbound.name, key, inbound(pnid, "u", now - 60))
    gate.wait_consumed(t.inbound.name)
    gate.produce(t.requests.name, key, text_request(pnid, "u", f"{pnid}-2"))
    assert gate.decision(f"{pnid}-2").value["reason"] == "window_open"


def test_metrics_count_decisions_without_personal_data(gate: Gate, pnid: str) -> None:
    gate.produce(gate.topo.requests.name, f"{pnid}:u", text_request(pnid, "u", f"{pnid}-m"))
    gate.decision(f"{pnid}-m")
    body = gate.worker.metrics_text()
    assert 'wagate_decisions_total{origin="agent",reason="no_window",route="rejected"}' in body
    assert pnid not in body
    # Faust's own figures: lag per topic, commits, rebalances (the worker joined its group once at least)
    assert f'wagate_consumer_lag{{topic="{gate.topo.requests.name}"}}' in body
    assert gate.worker.metric_sum("wagate_rebalances_total") >= 1
    # The Kafka requests behind it, by API, from the consumer's thread and the transactional producers.
    requests = {
        api: float(value)
        for api, value in re.findall(r'^wagate_kafka_requests_total\{api="(\w+)"\} (\S+)$', body, re.M)
    }
    assert requests.get("Fetch", 0) >= 1 and requests.get("Produce", 0) >= 1
    if gate.settings.processing_guarantee == "exactly_once":
        assert requests.get("EndTxn", 0) >= 1 and requests.get("TxnOffsetCommit", 0) >= 1
    deadline = time.monotonic() + 30
    while gate.worker.metric_sum("wagate_commit_latency_seconds_count") == 0:
        assert time.monotonic() < deadline, "no commit was measured"
        time.sleep(0.5)


def test_topics_with_a_different_partition_count_are_refused_with_the_fix(bootstrap: str) -> None:
    import os
    import subprocess
    import sys
    import uuid

    prefix = f"mismatch{uuid.uuid4().hex[:6]}."

    def wagate(command: str, partitions: int) -> subprocess.CompletedProcess[str]:
        env = {
            **os.environ,
            "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "WAGATE_TOPIC_PREFIX": prefix,
            "WAGATE_PARTITIONS": str(partitions),
        }
        return subprocess.run(
            [sys.executable, "-m", "streams.cli", command],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    created = wagate("topics", 2)
    assert created.returncode == 0, created.stderr
    assert f"created  {prefix}wa.outbound.requests partitions=2" in created.stdout
    refused = wagate("worker", 4)
    assert refused.returncode != 0
    assert "WAGATE_PARTITIONS=4" in refused.stderr and f"{prefix}wa.inbound" in refused.stderr


def test_a_webhooks_topic_with_another_partition_count_is_refused_at_start(bootstrap: str) -> None:
    """wa.webhooks is read by partition number (partition w with the inputs' partition w, committed by
    the transactional producer <app id>-p<w>): another count made two workers fence each other."""
    import asyncio
    import uuid

    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    from .harness import wagate

    prefix = f"webhooks{uuid.uuid4().hex[:6]}."

    async def create_webhooks_topic() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            await admin.create_topics([NewTopic(f"{prefix}wa.webhooks", 6, 1)])
        finally:
            await admin.close()

    asyncio.run(create_webhooks_topic())
    for command in ("topics", "worker"):
        refused = wagate(
            command, KAFKA_BOOTSTRAP_SERVERS=bootstrap, WAGATE_TOPIC_PREFIX=prefix, WAGATE_PARTITIONS="4"
        )
        assert refused.returncode != 0, refused.stdout
        assert "WAGATE_PARTITIONS=4" in refused.stderr
        assert f"{prefix}wa.webhooks has 6" in refused.stderr, refused.stderr
