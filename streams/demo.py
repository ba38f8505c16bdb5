"""``wagate demo``: the store-hours timeline, decided by a running gate.

The gate decides on the wall clock, so each step is replayed on a contact of its own with the
history shifted so that the step happens now: what the gate answers at that moment of the story.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any

from streams.client import GateClient
from streams.settings import Settings

HOUR = 3600.0
# Minutes since Day 1 00:00.
D1_1000, D1_1005, D1_1100, D1_1130 = 600, 605, 660, 690
D3_0900 = 2 * 24 * 60 + 540
FALLBACK = {"name": "order_follow_up", "language": {"code": "en_US"}, "components": []}


@dataclass(frozen=True)
class Step:
    at: int  # minutes since Day 1 00:00
    label: str
    history: tuple[int, ...]  # customer messages before this step (minutes)
    request: dict[str, Any]


STEPS = (
    Step(
        D1_1005,
        "agent replies with store hours (free-form)",
        (D1_1000,),
        {"origin": "agent", "message": {"type": "text", "text": {"body": "We're open 9-18."}}},
    ),
    Step(
        D1_1100,
        "human sends a follow-up image",
        (D1_1000,),
        {"origin": "human", "message": {"type": "image", "image": {"link": "https://example.com/map.png"}}},
    ),
    Step(
        D3_0900,
        "automation follows up, with a fallback template",
        (D1_1000, D1_1130),
        {
            "origin": "automation",
            "message": {"type": "text", "text": {"body": "How was your visit?"}},
            "fallback_template": FALLBACK,
        },
    ),
    Step(
        D3_0900,
        "automation follows up, no fallback",
        (D1_1000, D1_1130),
        {"origin": "automation", "message": {"type": "text", "text": {"body": "How was your visit?"}}},
    ),
)


def _clock(minutes: int) -> str:
    return f"Day {minutes // 1440 + 1} {minutes % 1440 // 60:02d}:{minutes % 60:02d}"


async def run_demo(settings: Settings, timeout: float = 60.0) -> int:
    run = uuid.uuid4().hex[:8]
    pnid = f"demo-{run}"
    now = time.time()
    async with GateClient(settings) as client:
        topo = client.topo
        print(f"{_clock(D1_1000)}  customer asks for store hours  -> opens the 24 h window")
        print(f"{_clock(D1_1130)}  customer says thanks           -> refreshes it until Day 2 11:30")
        request_ids = []
        for i, step in enumerate(STEPS):
            user = f"user{i}"
            for n, minute in enumerate(step.history):
                await client.produce(
                    topo.inbound.name,
                    f"{pnid}:{user}",
                    {
                        "event_id": f"wamid.{run}.{i}.{n}",
                        "phone_number_id": pnid,
                        "user": user,
                        "timestamp": now - (step.at - minute) * 60,
                        "kind": "message",
                        "type": "text",
                    },
                )
        await client.wait_consumed(topo.inbound.name, timeout)
        for i, step in enumerate(STEPS):
            rid = f"{run}-{i}"
            request_ids.append(rid)
            await client.produce(
                topo.requests.name,
                f"{pnid}:user{i}",
                {
                    "request_id": rid,
                    "phone_number_id": pnid,
                    "to": f"user{i}",
                    "created_at": now,
                    **step.request,
                },
            )
        decided = await client.decisions(request_ids, timeout)
    print()
    print(f"{'when':13} {'step':48} {'route':9} {'reason':15} window")
    for step, rid in zip(STEPS, request_ids, strict=True):
        d = decided[rid][0].value
        window = d["window"]
        left = ""
        if window["expires_at"]:
            hours = (window["expires_at"] - now) / HOUR
            left = (
                f" ({'closes in' if hours > 0 else 'closed'} {abs(hours):.1f} h{'' if hours > 0 else ' ago'})"
            )
        print(f"{_clock(step.at):13} {step.label:48} {d['route']:9} {d['reason']:15} {window['state']}{left}")
    return 0
