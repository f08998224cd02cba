"""The seed article's viewer, rebuilt in Flask for `just bench-viewer`.

The design being measured: a Flask app whose `/video` route returns a generator; the generator
creates its own Kafka consumer (confluent-kafka) for the client that asked, reads every frame
from the frames topic and yields it as a `multipart/x-mixed-replace` part. Every browser
therefore costs one Kafka consumer, one thread and one full read of the topic. Unlike the
article's single shared consumer, each client gets its own (a unique group id, partitions
assigned at their end, no commits), so a second tab no longer steals frames from the first:
that is the fairest form of the design.

Frames on `lookout.frames` are protobuf `lookout.v1.Frame` messages, so each message is parsed
(frame.proto compiled with grpcio-tools at start, as bench/bus/bench_confluent.py does) to get
the JPEG bytes; the article also parsed its messages. Each part carries `Content-Length` and
`X-Lookout-Sequence`, like the Lookout viewer's, so one load generator reads both the same way.

Served by waitress (one process, a thread per open stream). `/stats` reports the open streams
and the Kafka messages and bytes their consumers read. Prints `listening on ADDR` first.

    python bench/viewer/flask_viewer.py --brokers 127.0.0.1:9092 [--listen 127.0.0.1:0]
"""

import argparse
import os
import socket
import sys
import tempfile
import threading
import uuid
from importlib import resources

from confluent_kafka import OFFSET_END, Consumer, TopicPartition
from flask import Flask, Response, jsonify

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BOUNDARY = b"frame"


def load_frame_class(tmp):
    """Compiles frame.proto with grpcio-tools' protoc and imports the generated module."""
    from grpc_tools import protoc

    include = str(resources.files("grpc_tools") / "_proto")
    proto_root = os.path.join(ROOT, "proto")
    rc = protoc.main(["protoc", f"-I{proto_root}", f"-I{include}", f"--python_out={tmp}",
                      os.path.join(proto_root, "lookout/v1/frame.proto")])
    if rc != 0:
        sys.exit(f"protoc failed with {rc}")
    sys.path.insert(0, tmp)
    from lookout.v1 import frame_pb2

    return frame_pb2


def create_app(brokers, topic, pb, fetch_wait_ms):
    app = Flask(__name__)
    lock = threading.Lock()
    stats = {"clients": 0, "clients_total": 0, "messages": 0, "bytes": 0, "parts": 0}
    parse = pb.Frame.FromString

    def frames():
        consumer = Consumer({
            "bootstrap.servers": brokers,
            "group.id": f"flask-viewer-{uuid.uuid4()}",
            "enable.auto.commit": False,
            "auto.offset.reset": "latest",
            "fetch.wait.max.ms": fetch_wait_ms,
        })
        with lock:
            stats["clients"] += 1
            stats["clients_total"] += 1
        try:
            partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
            consumer.assign([TopicPartition(topic, p, OFFSET_END) for p in partitions])
            while True:
                msg = consumer.poll(1.0)
                if msg is None or msg.error():
                    continue
                value = msg.value()
                frame = parse(value)
                with lock:
                    stats["messages"] += 1
                    stats["bytes"] += len(value)
                    stats["parts"] += 1
                yield (b"--" + BOUNDARY + b"\r\nContent-Type: image/jpeg\r\n"
                       b"Content-Length: %d\r\nX-Lookout-Sequence: %d\r\n\r\n"
                       % (len(frame.data), frame.sequence) + frame.data + b"\r\n")
        finally:  # the client went away: waitress closes the generator
            consumer.close()
            with lock:
                stats["clients"] -= 1

    @app.route("/video")
    def video():
        return Response(frames(),
                        mimetype="multipart/x-mixed-replace; boundary=" + BOUNDARY.decode())

    @app.route("/stats")
    def get_stats():
        with lock:
            return jsonify(stats)

    return app


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--brokers", default="127.0.0.1:9092")
    ap.add_argument("--topic", default="lookout.frames")
    ap.add_argument("--listen", default="127.0.0.1:0")
    ap.add_argument("--fetch-wait-ms", type=int, default=500,
                    help="fetch.wait.max.ms of each consumer (librdkafka's default: 500)")
    ap.add_argument("--threads", type=int, default=1100,
                    help="waitress worker threads: one per open stream, plus /stats")
    args = ap.parse_args()

    from waitress import serve

    with tempfile.TemporaryDirectory() as tmp:
        app = create_app(args.brokers, args.topic, load_frame_class(tmp), args.fetch_wait_ms)
        host, port = args.listen.rsplit(":", 1)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, int(port)))
        sock.listen(1024)
        print("listening on %s:%d" % sock.getsockname(), flush=True)
        # poll() instead of select(): hundreds of streams and consumers pass 1024 descriptors.
        serve(app, sockets=[sock], threads=args.threads, connection_limit=args.threads + 100,
              asyncore_use_poll=True, channel_timeout=300, ident="flask-viewer")


if __name__ == "__main__":
    main()
