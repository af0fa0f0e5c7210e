"""A Kafka client that is not Triggerfish's (Python confluent-kafka, its own librdkafka),
for tests/kafka_interop.rs.

  python3 tests/kafka_client.py consume BOOTSTRAP TOPIC COUNT TIMEOUT_S
      reads COUNT records from the start of every partition of TOPIC (or fails after
      TIMEOUT_S) and prints them as a JSON list of
      {partition, offset, key, headers: [[name, value]], value_b64}
  python3 tests/kafka_client.py produce BOOTSTRAP TOPIC PARTITION
      produces the records of a JSON list on stdin, each {key?, headers: [[name,
      value]], value_b64?}, to PARTITION in order, and prints their offsets

Producers send one record per batch: tansu, the test broker, reads exact offsets only
from one-record batches (docs/design/kafka.md). Values and header values travel as
base64 / UTF-8 text so any bytes can be checked.
"""

import base64
import json
import sys
import time

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition


def consume(bootstrap, topic, count, timeout_s):
    c = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "interop-reader",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }
    )
    md = c.list_topics(topic, timeout=10)
    partitions = md.topics[topic].partitions
    c.assign([TopicPartition(topic, p, 0) for p in partitions])
    out = []
    deadline = time.time() + timeout_s
    while len(out) < count:
        if time.time() > deadline:
            sys.exit(f"only {len(out)} of {count} records within {timeout_s}s")
        msg = c.poll(0.2)
        if msg is None:
            continue
        if msg.error():
            raise KafkaException(msg.error())
        out.append(
            {
                "partition": msg.partition(),
                "offset": msg.offset(),
                "key": None if msg.key() is None else msg.key().decode(),
                "headers": [
                    [k, None if v is None else v.decode()] for k, v in (msg.headers() or [])
                ],
                "value_b64": None
                if msg.value() is None
                else base64.b64encode(msg.value()).decode(),
            }
        )
    c.close()
    print(json.dumps(out))


def produce(bootstrap, topic, partition):
    records = json.load(sys.stdin)
    p = Producer(
        {
            "bootstrap.servers": bootstrap,
            "batch.num.messages": 1,
            "enable.idempotence": True,
            "acks": "all",
        }
    )
    offsets = []
    errors = []

    def report(err, msg):
        if err is not None:
            errors.append(str(err))
        else:
            offsets.append(msg.offset())

    for r in records:
        value = r.get("value_b64")
        p.produce(
            topic,
            partition=partition,
            key=r.get("key"),
            value=None if value is None else base64.b64decode(value),
            headers=[(k, v) for k, v in r.get("headers", [])],
            on_delivery=report,
        )
        # One at a time, so the order on the topic is the order given.
        p.flush(10)
    if errors or len(offsets) != len(records):
        sys.exit(f"produce failed: {errors}")
    print(json.dumps(offsets))


if __name__ == "__main__":
    cmd = sys.argv[1]
    if cmd == "consume":
        consume(sys.argv[2], sys.argv[3], int(sys.argv[4]), float(sys.argv[5]))
    elif cmd == "produce":
        produce(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    else:
        sys.exit(f"unknown command {cmd}")
