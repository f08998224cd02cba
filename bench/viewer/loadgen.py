"""MJPEG load generator for `just bench-viewer`: N concurrent streams, frames counted per client.

Opens --clients HTTP/1.1 connections to --url with asyncio (raw sockets, no HTTP library),
decodes chunked transfer encoding and the multipart/x-mixed-replace body, and for every part
checks that it is a JPEG (FF D8 ... FF D9) and notes its arrival time and `X-Lookout-Sequence`.
Part bodies are skipped by their `Content-Length`, never copied, so the generator's own cost
stays low per byte.

Protocol with the runner, over stdin/stdout:
- prints `ready` once every client has received --min-frames parts (or --warmup-timeout
  passed), then waits for a line on stdin;
- on that line the window starts; after --duration seconds it prints `done`;
- then closes every connection and prints one JSON line with, per client, the parts and
  distinct sequences received in the window, the parts older than the part before them (a
  browser would step back), bad parts, and whether the stream ended early.

    python loadgen.py --url http://127.0.0.1:8080/cameras/synthetic/stream.mjpeg --clients 10
"""

import argparse
import asyncio
import json
import sys
import time
from urllib.parse import urlsplit


class StreamError(Exception):
    pass


class Client(asyncio.Protocol):
    """One MJPEG stream: HTTP response head, chunked framing, multipart parts."""

    def __init__(self, request, window):
        self.request = request
        self.window = window  # shared [start, end] in monotonic seconds
        self.transport = None
        self.closed = asyncio.get_running_loop().create_future()
        self.error = None
        self.head = bytearray()
        self.in_body = False
        self.chunked = False
        self.boundary = None
        # chunked framing
        self.chunk_left = 0
        self.chunk_state = "size"  # size | data | crlf
        self.chunk_line = bytearray()
        # multipart
        self.part_head = bytearray()
        self.part_left = -1  # -1: reading a part head; else body bytes left
        self.part_first = b""
        self.part_last = b""
        self.part_seq = None
        # results
        self.parts = 0
        self.bad = 0
        self.bytes = 0
        self.window_parts = 0
        self.window_seqs = set()
        self.window_backward = 0  # parts older than the part before them
        self.last_seq = None

    def connection_made(self, transport):
        self.transport = transport
        transport.write(self.request)

    def connection_lost(self, exc):
        if not self.closed.done():
            self.closed.set_result(exc)

    def eof_received(self):
        if self.error is None:
            self.error = "the server ended the stream"
        return False

    def data_received(self, data):
        try:
            self.bytes += len(data)
            if not self.in_body:
                self.head += data
                end = self.head.find(b"\r\n\r\n")
                if end < 0:
                    if len(self.head) > 65536:
                        raise StreamError("response head too long")
                    return
                self.response_head(bytes(self.head[:end]))
                data = memoryview(self.head)[end + 4:].tobytes()
                self.head = bytearray()
                self.in_body = True
            if self.chunked:
                self.dechunk(memoryview(data))
            else:
                self.multipart(memoryview(data))
        except StreamError as e:
            self.error = str(e)
            self.transport.close()

    def response_head(self, head):
        lines = head.decode("latin-1").split("\r\n")
        status = lines[0].split(" ", 2)
        if len(status) < 2 or status[1] != "200":
            raise StreamError(f"HTTP status: {lines[0]}")
        headers = {}
        for line in lines[1:]:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
        ctype = headers.get("content-type", "")
        if not ctype.startswith("multipart/x-mixed-replace") or "boundary=" not in ctype:
            raise StreamError(f"not an MJPEG stream: {ctype!r}")
        self.boundary = b"--" + ctype.split("boundary=", 1)[1].strip('"').encode()
        self.chunked = "chunked" in headers.get("transfer-encoding", "").lower()

    def dechunk(self, view):
        i, n = 0, len(view)
        while i < n:
            if self.chunk_state == "data":
                take = min(self.chunk_left, n - i)
                self.multipart(view[i:i + take])
                i += take
                self.chunk_left -= take
                if self.chunk_left == 0:
                    self.chunk_state = "crlf"
                    self.chunk_line.clear()
            else:
                j = bytes(view[i:min(n, i + 64)]).find(b"\n")
                if j < 0:
                    self.chunk_line += view[i:min(n, i + 64)]
                    i = min(n, i + 64)
                    if len(self.chunk_line) > 256:
                        raise StreamError("bad chunk framing")
                    continue
                self.chunk_line += view[i:i + j + 1]
                i += j + 1
                line = bytes(self.chunk_line).strip()
                self.chunk_line.clear()
                if self.chunk_state == "crlf":
                    if line:
                        raise StreamError("bad chunk end")
                    self.chunk_state = "size"
                    continue
                size = int(line.split(b";")[0], 16)
                if size == 0:
                    raise StreamError("the server ended the stream")
                self.chunk_left = size
                self.chunk_state = "data"

    def multipart(self, view):
        i, n = 0, len(view)
        while i < n:
            if self.part_left >= 0:
                take = min(self.part_left, n - i)
                if take:
                    if len(self.part_first) < 2:
                        self.part_first += bytes(view[i:i + min(take, 2 - len(self.part_first))])
                    self.part_last = (self.part_last + bytes(view[i + take - 2:i + take]))[-2:] \
                        if take >= 2 else (self.part_last + bytes(view[i:i + take]))[-2:]
                    self.part_left -= take
                    i += take
                if self.part_left == 0:
                    self.part_done()
                continue
            # a part head: optional CRLF, the boundary line, headers, a blank line. Only the
            # first bytes are looked at, so a part body is never copied.
            chunk = bytes(view[i:min(n, i + 4096)])
            old = len(self.part_head)
            buf = bytes(self.part_head) + chunk
            head = buf.lstrip(b"\r\n")
            end = head.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > 4096:
                    raise StreamError("part head too long")
                self.part_head = bytearray(buf)
                i += len(chunk)
                continue
            i += (len(buf) - len(head)) + end + 4 - old
            self.part_head = bytearray()
            lines = head[:end].split(b"\r\n")
            if lines[0].strip() != self.boundary:
                raise StreamError(f"expected the boundary, got {lines[0][:40]!r}")
            length, seq = None, None
            for line in lines[1:]:
                k, _, v = line.partition(b":")
                k = k.strip().lower()
                if k == b"content-length":
                    length = int(v)
                elif k == b"x-lookout-sequence":
                    seq = int(v)
            if length is None:
                raise StreamError("a part without Content-Length")
            self.part_left, self.part_first, self.part_last, self.part_seq = length, b"", b"", seq
            if length == 0:
                self.part_done()

    def part_done(self):
        self.part_left = -1
        self.parts += 1
        ok = self.part_first == b"\xff\xd8" and self.part_last == b"\xff\xd9"
        if not ok:
            self.bad += 1
        start, end = self.window
        now = time.monotonic()
        if start is not None and start <= now and (end is None or now <= end):
            self.window_parts += 1
            if self.part_seq is not None:
                self.window_seqs.add(self.part_seq)
                if self.last_seq is not None and self.part_seq < self.last_seq:
                    self.window_backward += 1
        if self.part_seq is not None:
            self.last_seq = self.part_seq


async def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", required=True)
    ap.add_argument("--clients", type=int, default=1)
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--min-frames", type=int, default=3)
    ap.add_argument("--warmup-timeout", type=float, default=30.0)
    ap.add_argument("--connect-rate", type=float, default=200.0,
                    help="new connections per second while connecting")
    args = ap.parse_args()

    url = urlsplit(args.url)
    host, port = url.hostname, url.port or 80
    if host not in ("127.0.0.1", "localhost", "::1"):
        sys.exit("loadgen: only loopback targets")
    path = url.path + (f"?{url.query}" if url.query else "")
    request = (f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nAccept: multipart/x-mixed-replace"
               f"\r\nUser-Agent: lookout-bench-viewer\r\nConnection: keep-alive\r\n\r\n").encode()
    loop = asyncio.get_running_loop()
    window = [None, None]
    clients = []
    for k in range(args.clients):
        _, c = await loop.create_connection(lambda: Client(request, window), host, port)
        clients.append(c)
        if args.connect_rate and k + 1 < args.clients:
            await asyncio.sleep(1.0 / args.connect_rate)

    started = time.monotonic()
    while time.monotonic() - started < args.warmup_timeout:
        if all(c.parts >= args.min_frames or c.closed.done() for c in clients):
            break
        await asyncio.sleep(0.05)
    warm = sum(c.parts >= args.min_frames for c in clients)
    print(json.dumps({"ready": True, "warm_clients": warm,
                      "warmup_s": round(time.monotonic() - started, 3)}), flush=True)

    await loop.run_in_executor(None, sys.stdin.readline)
    window[0] = time.monotonic()
    parts_before = [c.parts for c in clients]
    bytes_before = sum(c.bytes for c in clients)
    await asyncio.sleep(args.duration)
    window[1] = time.monotonic()
    print(json.dumps({"done": True}), flush=True)
    seconds = window[1] - window[0]
    window_bytes = sum(c.bytes for c in clients) - bytes_before

    for c in clients:
        if c.transport is not None:
            c.transport.close()
    await asyncio.wait([c.closed for c in clients], timeout=10)

    per_client = [{
        "parts": c.window_parts,
        "distinct": len(c.window_seqs),
        "backward": c.window_backward,
        "bad": c.bad,
        "error": c.error,
        "parts_total": c.parts,
    } for c in clients]
    assert all(c.window_parts <= c.parts - b for c, b in zip(clients, parts_before))
    print(json.dumps({"result": True, "clients": args.clients, "seconds": round(seconds, 4),
                      "bytes": window_bytes, "per_client": per_client}),
          flush=True)


if __name__ == "__main__":
    asyncio.run(main())
