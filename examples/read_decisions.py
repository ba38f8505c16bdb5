"""Read the gate's decisions with confluent-kafka, the way a WhatsApp sender service should:
``isolation.level=read_committed`` (the gate writes its decisions in Kafka transactions; a
read_committed reader sees exactly one decision per request across any crash of the gate).

    pip install confluent-kafka   # or: pip install -e '.[examples]' in this repository
    python examples/read_decisions.py --bootstrap 127.0.0.1:9092 --group my-sender

Prints each decision as one JSON line: route (send | template | rejected), reason, request_id, and
the message to send (the fallback template for route template).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from confluent_kafka import Consumer, KafkaError


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bootstrap", default="127.0.0.1:9092", help="Kafka bootstrap servers")
    parser.add_argument("--prefix", default="", help="the gate's WAGATE_TOPIC_PREFIX")
    parser.add_argument("--group", default="example-sender", help="consumer group of this sender")
    parser.add_argument("--max", type=int, default=0, help="stop after this many decisions (0: run on)")
    parser.add_argument(
        "--timeout", type=float, default=0, help="stop after this many idle seconds (0: never)"
    )
    args = parser.parse_args()

    consumer = Consumer(
        {
            "bootstrap.servers": args.bootstrap,
            "group.id": args.group,
            "isolation.level": "read_committed",  # librdkafka's default, stated: never read_uncommitted
            "auto.offset.reset": "earliest",
            "enable.auto.commit": True,
        }
    )
    topics = [f"{args.prefix}wa.outbound.{route}" for route in ("send", "template", "rejected")]
    consumer.subscribe(topics)
    seen, idle_since = 0, time.monotonic()
    try:
        while not args.max or seen < args.max:
            message = consumer.poll(0.5)
            if message is None:
                if args.timeout and time.monotonic() - idle_since > args.timeout:
                    break
                continue
            error = message.error()
            if error is not None:
                if error.code() != KafkaError._PARTITION_EOF:
                    print(f"kafka error: {error}", file=sys.stderr)
                continue
            value = message.value()
            if value is None:
                continue
            idle_since = time.monotonic()
            decision = json.loads(value)
            print(
                json.dumps({k: decision.get(k) for k in ("request_id", "route", "reason", "message")}),
                flush=True,
            )
            seen += 1
    finally:
        consumer.close()


if __name__ == "__main__":
    main()
