"""Minimal reproduction of a consumer-group fault in tansu 0.6 (README, "Broker notes"),
with nothing but confluent-kafka against a broker on 127.0.0.1:9092:

1. consumer A joins group G on topic T (one partition) and becomes its leader;
2. A is killed with SIGKILL (no LeaveGroup), as an OOM kill or a lost node would;
3. consumer B joins G at once, within A's session timeout (10 s);
4. one message is produced to T.

On Apache Kafka, A's session expires, B is handed the partition and reads the message
within about 15 s. On tansu 0.6, B's JoinGroup names the dead A as leader; once A's
session expires, the rebalance completes without A's assignment, B's SyncGroup succeeds
with no partition and its heartbeats succeed from then on: nobody reads T until a member
joins again. The script tries three fresh groups and prints how many stalled (on this
machine: 3 of 3). Exit 1 when at least one did, 0 when none did.

    bash ci/brokers.sh start kafka && "$(bash ci/setup-e2e-tools.sh)/venv/bin/python" ci/repro_tansu_dead_leader.py
"""

import signal
import subprocess
import sys
import time
import uuid

from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, NewTopic

BROKER = "127.0.0.1:9092"
MEMBER = """
import sys, time
from confluent_kafka import Consumer
c = Consumer({"bootstrap.servers": "%s", "group.id": sys.argv[1], "session.timeout.ms": 10000,
              "enable.auto.commit": False, "auto.offset.reset": "earliest"})
c.subscribe([sys.argv[2]])
end = time.monotonic() + 60
while time.monotonic() < end:
    c.poll(0.5)
""" % BROKER


def attempt():
    topic, group = f"repro-{uuid.uuid4().hex[:8]}", f"repro-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": BROKER})
    for future in admin.create_topics([NewTopic(topic, 1, 1)]).values():
        future.result(timeout=10)
    a = subprocess.Popen([sys.executable, "-c", MEMBER, group, topic])
    time.sleep(8)  # A has joined and leads the group
    a.send_signal(signal.SIGKILL)
    a.wait(timeout=5)
    b = Consumer({"bootstrap.servers": BROKER, "group.id": group, "session.timeout.ms": 10000,
                  "enable.auto.commit": False, "auto.offset.reset": "earliest"})
    b.subscribe([topic])
    producer = Producer({"bootstrap.servers": BROKER})
    producer.produce(topic, b"after the kill")
    producer.flush(10)
    started = time.monotonic()
    try:
        while time.monotonic() - started < 45:
            message = b.poll(0.5)
            if message is not None and not message.error():
                return time.monotonic() - started
        return None
    finally:
        b.close()


def main():
    stalled = 0
    for n in range(1, 4):
        took = attempt()
        if took is None:
            stalled += 1
            print(f"attempt {n}: the new member got no partition; nothing read within 45 s")
        else:
            print(f"attempt {n}: read after {took:.1f} s")
    print(f"{stalled} of 3 groups stalled")
    sys.exit(1 if stalled else 0)


if __name__ == "__main__":
    main()
