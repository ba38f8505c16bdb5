"""Publish send intents to the gate with confluent-kafka (librdkafka), the way a producer in any
language should: keyed by the contact key, partitioned with murmur2.

librdkafka's default partitioner is CRC32-based (``consistent_random``), not the murmur2 the Java
client, aiokafka and the gate use: without ``partitioner=murmur2_random`` a record lands on another
partition than its contact's state, and the gate has to re-produce it first (counted in
``wagate_repartitioned_total``). The same setting exists in confluent-kafka-go, -dotnet and
node-rdkafka; kafkajs needs its ``Partitioners.DefaultPartitioner`` (murmur2), sarama
``NewHashPartitioner`` is FNV: use a murmur2 one (e.g. sarama's ``WithCustomHashFunction``).

    pip install confluent-kafka   # or: pip install -e '.[examples]' in this repository
    python examples/send_intents.py --bootstrap 127.0.0.1:9092 --phone-number-id 1234 --to 4915112345678

Prints each request_id it published, one per line.
"""

from __future__ import annotations

import argparse
import json
import time
import uuid

from confluent_kafka import Producer


def contact_key(phone_number_id: str, to: str, recipient_type: str = "individual") -> str:
    return f"{phone_number_id}:group:{to}" if recipient_type == "group" else f"{phone_number_id}:{to}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bootstrap", default="127.0.0.1:9092", help="Kafka bootstrap servers")
    parser.add_argument("--prefix", default="", help="the gate's WAGATE_TOPIC_PREFIX")
    parser.add_argument("--phone-number-id", required=True, help="the business number's phone_number_id")
    parser.add_argument("--to", required=True, action="append", help="recipient wa_id (repeatable)")
    parser.add_argument("--text", default="Hello from the example producer")
    parser.add_argument(
        "--origin", default="api", choices=["agent", "human", "automation", "broadcast", "api"]
    )
    args = parser.parse_args()

    producer = Producer(
        {
            "bootstrap.servers": args.bootstrap,
            "partitioner": "murmur2_random",  # the one setting every librdkafka producer needs here
            "enable.idempotence": True,  # acks=all, no duplicates on retries
            "linger.ms": 5,
        }
    )
    topic = f"{args.prefix}wa.outbound.requests"
    for to in args.to:
        request_id = f"example-{uuid.uuid4().hex}"
        request = {
            "request_id": request_id,
            "phone_number_id": args.phone_number_id,
            "to": to,
            "origin": args.origin,
            "message": {"type": "text", "text": {"body": args.text}},
            # What to send instead when the 24-hour window is closed (an approved template):
            "fallback_template": {"name": "hello_world", "language": {"code": "en_US"}, "components": []},
            "created_at": time.time(),
        }
        producer.produce(topic, key=contact_key(args.phone_number_id, to), value=json.dumps(request))
        print(request_id, flush=True)
    if producer.flush(30) != 0:
        raise SystemExit("not every send intent was acknowledged by Kafka within 30 s")


if __name__ == "__main__":
    main()
