"""Minimal reproduction of a fetch fault in tansu 0.6 (README, "Broker notes"), with
nothing but confluent-kafka against a broker on 127.0.0.1:9092 (or the address given):

1. five records are produced to a one-partition topic in one produce request, so they are
   one record batch (offsets 0 to 4), then a sixth in a batch of its own (offset 5);
2. a group commits offset 2, as a consumer does that applied records 0 and 1 and then
   lost the partition (a rebalance, a restart, a replica taking over);
3. a new member of the group reads from the committed offset.

On Apache Kafka the fetch from offset 2 answers the batch that holds it, the client skips
records 0 and 1, and the member reads 2, 3, 4 and 5. tansu 0.6 answers only batches whose
first offset is at or past the one asked for (`tansu-storage/src/dynostore.rs`, `fetch`:
`offsets.split_off(&offset)` over the batches' base offsets), so the member reads 5 alone
and records 2 to 4 are never delivered to that group. Exit 1 when records were skipped.

    bash ci/brokers.sh start kafka && "$(bash ci/setup-e2e-tools.sh)/venv/bin/python" ci/repro_tansu_mid_batch.py
"""

import sys
import time
import uuid

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

BROKER = sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:9092"


def read(consumer, count, seconds):
    """Up to `count` (offset, value) pairs, for `seconds` at most."""
    got, deadline = [], time.monotonic() + seconds
    while len(got) < count and time.monotonic() < deadline:
        message = consumer.poll(0.5)
        if message is not None and not message.error():
            got.append((message.offset(), message.value().decode()))
    return got


def main():
    topic, group = f"repro-{uuid.uuid4().hex[:8]}", f"repro-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": BROKER})
    for future in admin.create_topics([NewTopic(topic, 1, 1)]).values():
        future.result(timeout=10)
    # A long linger: the five records leave in one request, as one batch.
    producer = Producer({"bootstrap.servers": BROKER, "linger.ms": 200})
    for i in range(5):
        producer.produce(topic, key=b"one-aggregate", value=f"record {i}".encode())
    producer.flush(10)
    producer.produce(topic, key=b"one-aggregate", value=b"record 5")
    producer.flush(10)

    everything = Consumer({"bootstrap.servers": BROKER, "group.id": f"{group}-all", "enable.auto.commit": False})
    everything.assign([TopicPartition(topic, 0, 0)])
    print("from offset 0:", read(everything, 6, 15))
    everything.close()

    committer = Consumer({"bootstrap.servers": BROKER, "group.id": group, "enable.auto.commit": False})
    committer.commit(offsets=[TopicPartition(topic, 0, 2)], asynchronous=False)
    committer.close()
    member = Consumer({"bootstrap.servers": BROKER, "group.id": group, "enable.auto.commit": False,
                       "auto.offset.reset": "earliest"})
    member.subscribe([topic])
    got = read(member, 4, 20)
    member.close()
    print("from the committed offset 2:", got)
    offsets = [offset for offset, _ in got]
    if offsets == [2, 3, 4, 5]:
        print("no record skipped")
        sys.exit(0)
    print(f"skipped: {sorted(set(range(2, 6)) - set(offsets))}")
    sys.exit(1)


if __name__ == "__main__":
    main()
