"""Meta's sending limits decided before Meta, on the real broker (contract section 10).

**The portfolio's messaging limit, two workers and a restart.** A gate of 4 partitions, two workers
(static membership), a portfolio limit of 250. 400 template requests go to 400 distinct users who
never wrote (business-initiated), spread over every partition. Each request's partition decides its
window and asks the portfolio's partition for a slot. Half-way, the worker that holds the
portfolio's partition is killed (SIGKILL) and restarted on the same state. Exactly 250 are sent and
150 rejected with ``messaging_limit_reached``, each decided once; then a ``business_capability_update``
webhook raises the limit and the next requests go.

**131062 and paused marketing.** On the shared worker: an authentication template with a copy-code
button to a contact known only by its BSUID is rejected; to a BSUID whose phone number the gate
knows, it goes to the phone number. A marketing template to a US number is rejected; to a Brazilian
one it goes.
"""

from __future__ import annotations

import signal
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .conftest import start_and_wait, text_request
from .harness import Gate, Worker, free_port
from .test_templates import Asker, listing, load_templates, meta_template, webhook

LIMIT = 250
USERS = 400
TEMPLATE = {"type": "template", "template": {"name": "hello", "language": {"code": "en_US"}}}


def _limit_request(pnid: str, user: str, rid: str) -> dict[str, Any]:
    return text_request(pnid, user, rid, origin="broadcast", message=TEMPLATE)


def _used(workers: list[Worker], portfolio: str) -> float:
    """The usage gauge, summed over the workers (only the portfolio partition's holder exports it)."""
    total = 0.0
    for worker in workers:
        try:
            text = worker.metrics_text()
        except OSError:
            continue
        for line in text.splitlines():
            if line.startswith(f'wagate_messaging_limit_used{{portfolio="{portfolio}"}}'):
                total += float(line.rsplit(" ", 1)[1])
    return total


def test_two_workers_give_exactly_the_limit_across_a_restart(
    bootstrap: str, workdir: Path, record_property: Callable[[str, object], None]
) -> None:
    pnid = f"ml{uuid.uuid4().hex[:8]}"
    waba = f"waba-{pnid}"
    gate = Gate(
        bootstrap,
        workdir,
        WAGATE_PHONE_NUMBER_WABAS=f"{pnid}={waba}",
        WAGATE_MESSAGING_LIMITS=f"{waba}={LIMIT}",
        WAGATE_INTERNAL_KEY=f"{pnid}-internal-key-0123456789",  # the limit records signed and checked
        WAGATE_INSTANCE_ID=f"{pnid}-1",
    )
    start_and_wait(gate)
    second_env = {**gate.env, "WAGATE_INSTANCE_ID": f"{pnid}-2"}
    second_settings = gate.settings.model_copy(
        update={"data_dir": workdir / gate.prefix / "second", "web_port": free_port()}
    )
    second = Worker(second_settings, workdir / f"{gate.prefix}second.log", **second_env)
    second.start()
    workers = [gate.worker, second]
    extra_env = {id(gate.worker): gate.env, id(second): second_env}
    try:
        second.wait_for_log("Worker ready", timeout=120)
        deadline = time.monotonic() + 90
        probe = 0
        while second.metric_sum("wagate_decisions_total") <= 0:  # the partitions are shared now
            assert time.monotonic() < deadline, f"the second worker was given nothing:\n{second.log_tail()}"
            rids = [f"probe{probe}-{i}" for i in range(8)]
            gate.produce_many(
                (gate.topo.requests.name, f"probe:x{i}", text_request("probe", f"x{i}", rid))
                for i, rid in enumerate(rids)
            )
            gate.decisions(rids, timeout=60)
            probe += 1

        rids = [f"{pnid}-{i}" for i in range(USERS)]
        half = USERS // 2
        gate.produce_bulk(
            (gate.topo.requests.name, f"{pnid}:u{i}", _limit_request(pnid, f"u{i}", rids[i]))
            for i in range(half)
        )
        gate.decisions(rids[: half // 2], timeout=120)
        # Kill whichever worker holds the portfolio's partition (it exports the usage gauge).
        holder = next((w for w in workers if _used([w], waba) > 0), gate.worker)
        record_property("killed_worker", "first" if holder is gate.worker else "second")
        killed_at = time.monotonic()
        holder.signal(signal.SIGKILL)
        restarted = Worker(holder.settings, holder.log_path, **extra_env[id(holder)])
        restarted.start()
        workers = [restarted if w is holder else w for w in workers]
        gate.produce_bulk(
            (gate.topo.requests.name, f"{pnid}:u{i}", _limit_request(pnid, f"u{i}", rids[i]))
            for i in range(half, USERS)
        )
        decided = gate.decisions(rids, timeout=180)
        took = time.monotonic() - killed_at

        twice = {rid: len(records) for rid, records in decided.items() if len(records) != 1}
        outcomes = Counter((r[0].value["route"], r[0].value["reason"]) for r in decided.values())
        record_property("messaging_limit_outcomes", dict(outcomes))
        record_property("messaging_limit_seconds_from_kill_to_last_decision", round(took, 1))
        assert twice == {}, f"decided more than once: {twice}"
        assert outcomes == {
            ("send", "template_unverified"): LIMIT,
            ("rejected", "messaging_limit_reached"): USERS - LIMIT,
        }
        refused = next(r[0].value for r in decided.values() if r[0].value["route"] == "rejected")
        assert refused["request"]["request_id"] == refused["request_id"]
        assert f"{LIMIT} of {LIMIT}" in refused["detail"]
        deadline = time.monotonic() + 60
        while _used(workers, waba) != LIMIT:  # the restarted holder reads it back from its state
            assert time.monotonic() < deadline, f"usage gauge: {_used(workers, waba)}"
            time.sleep(0.5)

        # Meta raises the portfolio's limit: the next requests (and those refused before) go.
        gate.send_webhooks(
            [
                webhook(
                    waba,
                    "business_capability_update",
                    {"max_daily_conversations_per_business": "TIER_2K"},
                    time.time(),
                )
            ]
        )
        later = [f"{pnid}-later-{i}" for i in range(10)]
        gate.produce_many(
            (gate.topo.requests.name, f"{pnid}:v{i}", _limit_request(pnid, f"v{i}", rid))
            for i, rid in enumerate(later)
        )
        retried = f"{pnid}-retry"
        refused_user = refused["to"]
        gate.produce(
            gate.topo.requests.name, f"{pnid}:{refused_user}", _limit_request(pnid, refused_user, retried)
        )
        after = gate.decisions([*later, retried], timeout=60)
        assert {r[0].value["route"] for r in after.values()} == {"send"}
        assert sum(w.metric_sum("wagate_messaging_limit") for w in workers) == 2_000
    finally:
        for worker in workers:
            worker.stop()


OTP_TEMPLATE = meta_template(
    "login_code",
    category="AUTHENTICATION",
    components=[
        {"type": "BODY", "text": "*{{1}}* is your verification code."},
        {"type": "BUTTONS", "buttons": [{"type": "OTP", "otp_type": "COPY_CODE", "text": "Copy code"}]},
    ],
)
PROMO_TEMPLATE = meta_template("promo", category="MARKETING", components=[{"type": "BODY", "text": "Sale!"}])


def _template(name: str, params: int) -> dict[str, Any]:
    body = {"type": "body", "parameters": [{"type": "text", "text": "123456"}] * params}
    return {
        "type": "template",
        "template": {"name": name, "language": {"code": "en_US"}, "components": [body]},
    }


def test_otp_templates_need_a_phone_number_and_us_marketing_is_paused(
    gate: Gate, pnid: str, workdir: Path
) -> None:
    waba = f"waba-{pnid}"
    phone, bsuid, stranger = "5511987654321", "BR.1122334455", "BR.9988776655"
    now = time.time()
    message = {
        "from": phone,
        "from_user_id": bsuid,
        "id": f"wamid.{pnid}",
        "timestamp": str(int(now - 60)),
        "type": "text",
    }
    value = {
        "messaging_product": "whatsapp",
        "metadata": {"phone_number_id": pnid},
        "contacts": [{"wa_id": phone, "user_id": bsuid, "profile": {"name": "A"}}],
        "messages": [message],
    }
    gate.send_webhooks([webhook(waba, "messages", value, now - 60)])  # pnid -> waba, phone <-> bsuid
    load_templates(gate, workdir, waba, listing(OTP_TEMPLATE, PROMO_TEMPLATE))

    otp = _template("login_code", 1)
    refused = Asker(gate, pnid, stranger).until("recipient_requires_phone", message=otp)
    assert (refused["route"], refused["reason"]) == ("rejected", "recipient_requires_phone"), refused
    assert "131062" in refused["detail"]
    sent = Asker(gate, pnid, bsuid)(message=otp)
    assert (sent["route"], sent["reason"]) == ("send", "template"), sent
    assert sent["message"]["to"] == phone and "recipient" not in sent["message"] and sent["to"] == bsuid

    promo = _template("promo", 0)
    us = Asker(gate, pnid, "14155550123")(message=promo, intent="marketing")
    assert (us["route"], us["reason"]) == ("rejected", "marketing_unavailable_in_region"), us
    brazil = Asker(gate, pnid, phone)(message=promo, intent="marketing")
    assert brazil["route"] == "send", brazil
    assert gate.worker.metric_sum("wagate_marketing_unavailable_total") >= 1
    assert us["request"]["to"] == "14155550123"
