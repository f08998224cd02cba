"""Bus throughput with Python confluent-kafka: the work of crates/lookout-bus/benches/bus.rs.

Produces and consumes lookout.v1.Frame messages of a given encoded size, encoding and decoding
each with protobuf. Each repeat works in a fresh topic prefix ("{prefix}r{i}."): one warm-up
frame is sent and flushed first (it creates the topic and connects the producer), then
--messages frames are timed from the first produce() to the end of flush(), with a delivery
callback checking every message. The topic is then read from the beginning twice, each time by
a new consumer group: with poll() one message at a time, and with consume(1000) batches. Reads
are timed from the first message (the warm-up, read with poll() in both modes) to the last, so
group start-up is not counted.

Prints one JSON line per measurement. Needs confluent-kafka, protobuf and grpcio-tools (to
compile proto/lookout/v1/frame.proto into a temporary directory at start).
"""

import argparse
import json
import os
import sys
import tempfile
import time
from importlib import resources

from confluent_kafka import Consumer, Producer, TopicPartition

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIRST_SEQUENCE = 1 << 21  # same as the Rust bench: every sequence varint is 4 bytes long
TOPIC = "lookout.frames"
CONSUME_TIMEOUT_S = 120


def load_frame_class(tmp):
    """Compiles frame.proto with grpcio-tools' protoc and imports the generated Frame."""
    from grpc_tools import protoc

    include = str(resources.files("grpc_tools") / "_proto")
    proto_root = os.path.join(ROOT, "proto")
    rc = protoc.main(
        ["protoc", f"-I{proto_root}", f"-I{include}", f"--python_out={tmp}",
         os.path.join(proto_root, "lookout/v1/frame.proto")]
    )
    if rc != 0:
        sys.exit(f"protoc failed with {rc}")
    sys.path.insert(0, tmp)
    from lookout.v1 import frame_pb2

    return frame_pb2


def frame_of_size(pb, size):
    """A Frame like the Rust bench's whose encoded size is exactly `size` bytes."""
    frame = pb.Frame(camera_id="bench", sequence=FIRST_SEQUENCE, width=640, height=480,
                     encoding=pb.ENCODING_JPEG)
    frame.capture_time.seconds = 1_800_000_000
    n = max(size - frame.ByteSize(), 0)
    while n > 0:
        frame.data = b"\x5a" * n
        if frame.ByteSize() <= size:
            break
        n -= 1
    return frame


def report(impl, op, size, messages, seconds):
    rate = messages / seconds
    print(json.dumps({"impl": impl, "op": op, "size": size, "messages": messages,
                      "seconds": round(seconds, 6), "msg_per_s": round(rate, 1),
                      "mb_per_s": round(rate * size / 1e6, 3)}), flush=True)


def produce(brokers, topic, frame, n):
    """Sends the warm-up frame, then n timed frames; returns the timed seconds."""
    producer = Producer({"bootstrap.servers": brokers, "enable.idempotence": True,
                         "compression.type": "none", "linger.ms": 5,
                         "message.timeout.ms": 30000})
    partitions = 0
    while partitions == 0:  # the metadata request creates the topic
        partitions = len(producer.list_topics(topic, timeout=10).topics[topic].partitions)
    failed = []

    def on_delivery(err, _msg):
        if err is not None:
            failed.append(err)

    frame.sequence = FIRST_SEQUENCE - 1
    producer.produce(topic, frame.SerializeToString(), b"bench",
                     partition=frame.sequence % partitions, on_delivery=on_delivery)
    producer.flush(30)
    started = time.perf_counter()
    for i in range(n):
        frame.sequence = seq = FIRST_SEQUENCE + i
        value = frame.SerializeToString()
        while True:
            try:
                producer.produce(topic, value, b"bench", partition=seq % partitions,
                                 on_delivery=on_delivery)
                break
            except BufferError:  # local queue full: serve delivery reports, try again
                producer.poll(0.001)
        if i % 1000 == 0:
            producer.poll(0)
    left = producer.flush(30)
    seconds = time.perf_counter() - started
    if left or failed:
        sys.exit(f"{len(failed)} deliveries failed, {left} not delivered: {failed[:3]}")
    return seconds


def retained(brokers, topic):
    """Messages of the topic still retained, and whether any were dropped."""
    c = Consumer({"bootstrap.servers": brokers, "group.id": "bench-watermarks"})
    meta = c.list_topics(topic, timeout=10).topics[topic]
    marks = [c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
             for p in meta.partitions]
    c.close()
    return sum(h - lo for lo, h in marks), any(lo > 0 for lo, _ in marks)


def consume(brokers, topic, group, total, data_len, pb, batch):
    """Reads `total` frames in a new group; returns the seconds from the first to the last."""
    consumer = Consumer({"bootstrap.servers": brokers, "group.id": group,
                         "auto.offset.reset": "earliest", "enable.auto.commit": True,
                         "session.timeout.ms": 10000, "heartbeat.interval.ms": 1000})
    consumer.subscribe([topic])
    frame_from = pb.Frame.FromString
    count = misshapen = 0
    first = None
    deadline = time.monotonic() + CONSUME_TIMEOUT_S
    while count < total and time.monotonic() < deadline:
        if batch and first is not None:  # not more than is left: a short batch waits 1 s
            messages = consumer.consume(min(1000, total - count), 1.0)
        else:  # poll() mode, and the first message in both modes: it starts the clock
            messages = [consumer.poll(1.0)]
        for msg in messages:
            if msg is None or msg.error():
                continue
            if first is None:
                first = time.perf_counter()
            if len(frame_from(msg.value()).data) != data_len:
                misshapen += 1
            count += 1
    last = time.perf_counter()
    consumer.close()
    if count != total or misshapen:
        sys.exit(f"handled {count} of {total} frames, {misshapen} misshapen")
    return last - first


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--brokers", default="127.0.0.1:9092")
    ap.add_argument("--size", type=int, default=100)
    ap.add_argument("--messages", type=int, default=100_000)
    ap.add_argument("--prefix", default=f"bench-py-{os.getpid()}.")
    ap.add_argument("--repeat", type=int, default=1)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        pb = load_frame_class(tmp)
        frame = frame_of_size(pb, args.size)
        size, data_len = frame.ByteSize(), len(frame.data)
        totals = {"produce": [0, 0.0], "poll": [0, 0.0], "consume": [0, 0.0]}
        for r in range(args.repeat):
            topic = f"{args.prefix}r{r}.{TOPIC}"
            totals["produce"][0] += args.messages
            totals["produce"][1] += produce(args.brokers, topic, frame, args.messages)
            kept, dropped = retained(args.brokers, topic)
            if dropped or kept != args.messages + 1:
                print(f"retention: {kept} of {args.messages + 1} frames kept on {topic}; "
                      "consuming those", file=sys.stderr)
            for mode in ("poll", "consume"):
                group = f"{args.prefix}r{r}.bench-{mode}"
                seconds = consume(args.brokers, topic, group, kept, data_len, pb,
                                  batch=mode == "consume")
                totals[mode][0] += kept - 1  # the first message starts the clock
                totals[mode][1] += seconds
        report("python-confluent", "produce", size, *totals["produce"])
        report("python-confluent-poll", "consume", size, *totals["poll"])
        report("python-confluent-consume", "consume", size, *totals["consume"])


if __name__ == "__main__":
    main()
