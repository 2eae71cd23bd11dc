#!/usr/bin/env python3
"""Helpers of bench/remote.sh for its reference transfers (not timed).

The references move the same bytes as spfs with curl: S3 requests signed
by curl itself (--aws-sigv4), and gRPC calls of `spfs server` sent by curl
over HTTP/2 (h2c, prior knowledge), with request bodies made here from
crates/spfs-remote/proto/repo.proto by hand (a few fields, no protobuf
library needed). So the gRPC reference is the same server stack and the
same bytes, with curl instead of the spfs client.

  digest FILE                     spfs digest of a file (base32 of SHA-256)
  grpc-write DIGEST FILE OUT      WritePayload body: FILE in 1 MiB chunks
  grpc-read DIGEST OFF LEN OUT    ReadPayload body (LEN 0: to the end)
  grpc-count FILE                 payload bytes in a ReadPayload response
                                  (fails unless it is well formed)
  h2-read ADDR PATH BODY TOKEN N  one gRPC call over a new HTTP/2 (h2c)
                                  connection to ADDR (HOST:PORT), BODY as the
                                  request; reads the response's DATA until N
                                  bytes came (not waiting for the trailers)
                                  and prints "first_s S last_s S bytes N":
                                  seconds from before connect(2) to the
                                  first and the last DATA byte
  curl-s3-put LIST ROOT URL OUT   curl config: PUT each file of LIST (paths
                                  relative to ROOT) to URL/<path>
  curl-s3-get LIST URL DEST OUT   curl config: GET URL/<path> to DEST/<path>
  curl-grpc-put LIST ROOT URL BODIES OUT
                                  curl config: one WritePayload call per
                                  file of LIST (bodies made in BODIES);
                                  "{i}" in URL: the call's number
  curl-grpc-get LIST ROOT URL BODIES DEST OUT
                                  curl config: one ReadPayload call per
                                  file, the responses to DEST/<path>
"""

import base64
import hashlib
import os
import socket
import struct
import sys
import time

CHUNK = 1 << 20  # crates/spfs-remote/src/grpc/mod.rs


def digest_of(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(1 << 20)
            if not b:
                break
            h.update(b)
    return base64.b32encode(h.digest()).decode()


def varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def field_bytes(no, data):
    return varint(no << 3 | 2) + varint(len(data)) + data


def field_uint(no, n):
    return varint(no << 3 | 0) + varint(n) if n else b""


def frame(msg):
    return b"\0" + struct.pack(">I", len(msg)) + msg


def write_body(digest, src, out):
    # PayloadChunk: digest = 1, size = 2, public = 3, data = 4; the first
    # chunk names the digest (as the spfs client sends it).
    with open(src, "rb") as f, open(out, "wb") as o:
        first = True
        while True:
            data = f.read(CHUNK)
            msg = b""
            if first:
                msg += field_bytes(1, digest.encode())
            msg += field_uint(3, 1) + (field_bytes(4, data) if data else b"")
            o.write(frame(msg))
            first = False
            if len(data) < CHUNK:
                break


def read_body(digest, offset, length, out):
    msg = field_bytes(1, digest.encode()) + field_uint(2, offset) + field_uint(3, length)
    with open(out, "wb") as o:
        o.write(frame(msg))


def parse_varint(b, i):
    n = shift = 0
    while True:
        c = b[i]
        i += 1
        n |= (c & 0x7F) << shift
        shift += 7
        if not c & 0x80:
            return n, i


def count(path):
    """Payload bytes in a stream of framed PayloadChunk messages."""
    total = 0
    with open(path, "rb") as f:
        while True:
            head = f.read(5)
            if not head:
                break
            if len(head) != 5 or head[0] != 0:
                raise SystemExit(f"{path}: not a gRPC message stream")
            msg = f.read(struct.unpack(">I", head[1:])[0])
            i = 0
            while i < len(msg):
                key, i = parse_varint(msg, i)
                if key & 7 == 2:
                    n, i = parse_varint(msg, i)
                    if key >> 3 == 4:
                        total += n
                    i += n
                elif key & 7 == 0:
                    _, i = parse_varint(msg, i)
                else:
                    raise SystemExit(f"{path}: unexpected wire type {key & 7}")
    return total


def hpack_int(n, prefix):
    limit = (1 << prefix) - 1
    if n < limit:
        return bytes([n])
    out = bytearray([limit])
    n -= limit
    while n >= 128:
        out.append(n % 128 + 128)
        n //= 128
    out.append(n)
    return bytes(out)


def hpack_literal(name, value):
    # Literal header field without indexing, new name, no Huffman coding.
    n, v = name.encode(), value.encode()
    return b"\0" + hpack_int(len(n), 7) + n + hpack_int(len(v), 7) + v


def h2_frame(kind, flags, stream, payload):
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload


class Reader:
    """Buffered reads from a socket: exact reads and skips."""

    def __init__(self, sock):
        self.sock = sock
        self.buf = bytearray(4 << 20)
        self.mv = memoryview(self.buf)
        self.start = self.end = 0

    def fill(self):
        if self.start == self.end:
            self.start = self.end = 0
        elif self.end == len(self.buf):
            n = self.end - self.start
            self.buf[:n] = self.buf[self.start:self.end]
            self.start, self.end = 0, n
        got = self.sock.recv_into(self.mv[self.end:])
        if got == 0:
            raise SystemExit("h2-read: connection closed by the server")
        self.end += got

    def exact(self, n):
        while self.end - self.start < n:
            self.fill()
        out = bytes(self.buf[self.start:self.start + n])
        self.start += n
        return out

    def skip(self, n):
        while n:
            if self.start == self.end:
                self.fill()
            k = min(n, self.end - self.start)
            self.start += k
            n -= k


def h2_read(addr, path, body_file, token, expect):
    host, port = addr.rsplit(":", 1)
    with open(body_file, "rb") as f:
        body = f.read()
    headers = [(":method", "POST"), (":scheme", "http"), (":path", path), (":authority", addr),
               ("content-type", "application/grpc"), ("te", "trailers")]
    if token:
        headers.append(("authorization", "Bearer " + token))
    block = b"".join(hpack_literal(n, v) for n, v in headers)
    # Windows as large as allowed (no WINDOW_UPDATE needed while reading),
    # frames up to 16 MiB.
    settings = h2_frame(4, 0, 0, struct.pack(">HI", 4, (1 << 31) - 1) + struct.pack(">HI", 5, (1 << 24) - 1))
    window = h2_frame(8, 0, 0, struct.pack(">I", (1 << 31) - 1 - 65535))
    request = (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + settings + window + h2_frame(1, 0x4, 1, block)
               + h2_frame(0, 0x1, 1, body))
    t0 = time.perf_counter()
    sock = socket.create_connection((host, int(port)))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.sendall(request)
    r = Reader(sock)
    got, first = 0, None
    while got < expect:
        head = r.exact(9)
        length = int.from_bytes(head[:3], "big")
        kind, flags = head[3], head[4]
        if kind == 0:  # DATA
            pad = 0
            if flags & 0x8:
                pad = r.exact(1)[0]
                length -= 1
            r.skip(length - pad)
            got += length - pad
            if first is None and length - pad > 0:
                first = time.perf_counter()
            r.skip(pad)
            if flags & 0x1 and got < expect:
                raise SystemExit(f"h2-read: the response ended after {got} of {expect} bytes")
        elif kind == 4 and not flags & 0x1:  # SETTINGS: acknowledged
            r.skip(length)
            sock.sendall(h2_frame(4, 0x1, 0, b""))
        elif kind in (3, 7):  # RST_STREAM, GOAWAY
            raise SystemExit(f"h2-read: the server {'reset the stream' if kind == 3 else 'went away'}")
        elif kind == 1 and flags & 0x1:  # trailers before the data
            raise SystemExit(f"h2-read: the call ended after {got} of {expect} bytes (an error status?)")
        else:
            r.skip(length)
    last = time.perf_counter()
    sock.close()
    print(f"first_s {first - t0:.6f} last_s {last - t0:.6f} bytes {got}")


def lines(listfile):
    with open(listfile) as f:
        return [l.rstrip("\n") for l in f if l.strip()]


def q(s):
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def main():
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "digest":
        print(digest_of(args[0]))
    elif cmd == "grpc-write":
        write_body(args[0], args[1], args[2])
    elif cmd == "grpc-read":
        read_body(args[0], int(args[1]), int(args[2]), args[3])
    elif cmd == "grpc-count":
        print(count(args[0]))
    elif cmd == "h2-read":
        h2_read(args[0], args[1], args[2], args[3], int(args[4]))
    elif cmd == "curl-s3-put":
        listfile, root, url, out = args
        with open(out, "w") as o:
            for rel in lines(listfile):
                o.write(f"upload-file = {q(os.path.join(root, rel))}\nurl = {q(url + '/' + rel)}\n"
                        "output = \"/dev/null\"\n")
    elif cmd == "curl-s3-get":
        listfile, url, dest, out = args
        with open(out, "w") as o:
            for rel in lines(listfile):
                o.write(f"url = {q(url + '/' + rel)}\noutput = {q(os.path.join(dest, rel))}\n")
    elif cmd in ("curl-grpc-put", "curl-grpc-get"):
        if cmd == "curl-grpc-put":
            listfile, root, url, bodies, out = args
            dest = None
        else:
            listfile, root, url, bodies, dest, out = args
        os.makedirs(bodies, exist_ok=True)
        with open(out, "w") as o:
            for i, rel in enumerate(lines(listfile)):
                d = digest_of(os.path.join(root, rel))
                body = os.path.join(bodies, f"{i}.bin")
                if dest is None:
                    write_body(d, os.path.join(root, rel), body)
                    o.write(f"upload-file = {q(body)}\nurl = {q(url.replace('{i}', str(i)) + '/spfs.repo.Repo/WritePayload')}\n"
                            "output = \"/dev/null\"\n")
                else:
                    read_body(d, 0, 0, body)
                    o.write(f"upload-file = {q(body)}\nurl = {q(url.replace('{i}', str(i)) + '/spfs.repo.Repo/ReadPayload')}\n"
                            f"output = {q(os.path.join(dest, rel))}\n")
    else:
        raise SystemExit(f"unknown command {cmd}")


if __name__ == "__main__":
    main()
