#!/usr/bin/env python3
"""Publishes posting events with Python `pika` — a RabbitMQ client that is not bidorch's.

Used by tests/interop.rs to show the worker bids on events from any AMQP publisher that follows
the contract (README, "The posting event"). Usage:

    python3 tests/interop/publish_pika.py AMQP_URL EXCHANGE < events.jsonl

Each stdin line is {"event": {...posting event...}, "headers": {"traceparent": "...", ...}}.
Each event is published to EXCHANGE with routing key `posting.{marketplace}`, content type
application/json, persistent (delivery_mode 2), message_id = event_id and the given headers, on a
confirm-mode channel with `mandatory`: pika raises if the broker nacks or returns a message, so a
zero exit means every event was routed and confirmed. Prints {"published": N} on stdout.
"""

import json
import sys

import pika


def main() -> int:
    url, exchange = sys.argv[1], sys.argv[2]
    params = pika.URLParameters(url)
    params.client_properties = {"connection_name": "bidorch-interop-pika"}
    connection = pika.BlockingConnection(params)
    channel = connection.channel()
    channel.confirm_delivery()
    published = 0
    for line in sys.stdin:
        if not line.strip():
            continue
        item = json.loads(line)
        event = item["event"]
        properties = pika.BasicProperties(
            content_type="application/json",
            delivery_mode=pika.DeliveryMode.Persistent,
            message_id=event["event_id"],
            headers=item.get("headers") or {},
        )
        # Raises UnroutableError / NackError when the broker does not take the message.
        channel.basic_publish(
            exchange=exchange,
            routing_key=f"posting.{event['marketplace']}",
            body=json.dumps(event).encode("utf-8"),
            properties=properties,
            mandatory=True,
        )
        published += 1
    connection.close()
    json.dump({"published": published}, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
