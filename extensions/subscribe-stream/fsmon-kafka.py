#!/usr/bin/env python3
"""fsmon events to a Kafka topic, one message per event.

UNTESTED: no server available in CI (no Kafka broker on the test machines). An example to
adapt: it follows kafka-python's documented API but has never run against a broker.

usage: fsmon-kafka.py --brokers HOST:9092[,HOST:9092] [--topic fsmon-events]
                      [--hostname H] [--socket PATH] [--group G] [--count N]

Message key: "<host>:<path>", so the events of one file stay in order on one partition.
Value: the event's JSON with "group" and "host". Missed-event notices go to the same topic
with key "<host>:missed". Needs kafka-python (`pip install kafka-python`, Debian: python3-kafka)
and fsmon_stream.py beside it.
"""
import argparse
import json
import socket
import sys

import fsmon_stream

def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    fsmon_stream.add_arguments(p)
    p.add_argument("--brokers", required=True, help="bootstrap servers, comma-separated")
    p.add_argument("--topic", default="fsmon-events")
    p.add_argument("--hostname", default=socket.gethostname())
    args = p.parse_args()
    try:
        from kafka import KafkaProducer
    except ImportError:
        sys.exit("fsmon-kafka: the kafka-python package is missing: pip install kafka-python")
    producer = KafkaProducer(bootstrap_servers=args.brokers.split(","), acks="all", linger_ms=50,
                             key_serializer=str.encode, value_serializer=lambda v: json.dumps(v).encode())
    sub = fsmon_stream.connect(args, "fsmon-kafka")
    for ev in sub.events():
        ev["host"] = args.hostname
        producer.send(args.topic, key=f"{args.hostname}:{ev.get('path', '')}", value=ev)
        if missed := sub.take_missed():
            producer.send(args.topic, key=f"{args.hostname}:missed",
                          value={"host": args.hostname, "notice": "missed", "missed": missed})
    producer.flush()
    producer.close()
    return fsmon_stream.end_of_stream(sub)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(0)
