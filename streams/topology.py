"""Every topic the gate reads or writes: its name, partitions and cleanup policy. One place.

``wagate topics create`` creates them all up front (admin.py), and the Faust app (app.py) declares
them from the same list, so partition counts cannot drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass

from streams.settings import Settings


@dataclass(frozen=True, slots=True)
class TopicSpec:
    name: str
    partitions: int
    compacted: bool = False
    # Processed or written by partition number, so its partition count must equal the state's: keyed
    # by contact (contract section 1), or, for wa.webhooks, read by the worker (and the transactional
    # producer <app id>-p<p>) that owns partition p of the inputs.
    copartitioned: bool = False


@dataclass(frozen=True, slots=True)
class Topology:
    prefix: str
    webhooks: TopicSpec
    inbound: TopicSpec
    templates: TopicSpec
    numbers: TopicSpec
    contacts: TopicSpec
    requests: TopicSpec
    send: TopicSpec
    template: TopicSpec
    rejected: TopicSpec
    windows: TopicSpec
    deadletter: TopicSpec
    contact_state_changelog: TopicSpec

    def all(self) -> list[TopicSpec]:
        return [
            value
            for value in (getattr(self, name) for name in self.__dataclass_fields__)
            if isinstance(value, TopicSpec)
        ]

    def route_topic(self, route: str) -> str:
        return {"send": self.send.name, "template": self.template.name, "rejected": self.rejected.name}[route]


CONTACT_STATE_TABLE = "contact_state"


def topology(settings: Settings) -> Topology:
    p = settings.topic_prefix
    n = settings.partitions

    def topic(name: str, *, compacted: bool = False, copartitioned: bool = False) -> TopicSpec:
        return TopicSpec(p + name, n, compacted=compacted, copartitioned=copartitioned)

    return Topology(
        prefix=p,
        # Not keyed by contact, but partition w is owned with partition w of the inputs and committed by
        # their transactional producer <app id>-p<w>: another count would make two workers fence each
        # other over one transactional id.
        webhooks=topic("wa.webhooks", copartitioned=True),
        inbound=topic("wa.inbound", copartitioned=True),
        templates=topic("wa.templates", compacted=True),
        # phone_number_id -> waba_id learnt from webhooks (key: phone_number_id); read whole by every worker.
        numbers=topic("wa.numbers", compacted=True),
        # One record per identifier of a user (key <phone_number_id>:<identifier>): the contact it shares a
        # window with. Written by the worker holding the contact, on the identifier's own partition.
        contacts=topic("wa.contacts", compacted=True, copartitioned=True),
        requests=topic("wa.outbound.requests", copartitioned=True),
        # Keyed by contact and written with an explicit murmur2 partition: same count as the inputs.
        send=topic("wa.outbound.send", copartitioned=True),
        template=topic("wa.outbound.template", copartitioned=True),
        rejected=topic("wa.outbound.rejected", copartitioned=True),
        windows=topic("wa.windows", copartitioned=True),
        deadletter=topic("wa.deadletter"),
        # Faust names a table's changelog "<app id>-<table>-changelog"; it holds the contact state.
        contact_state_changelog=TopicSpec(
            f"{settings.faust_app_id}-{CONTACT_STATE_TABLE}-changelog", n, compacted=True, copartitioned=True
        ),
    )
