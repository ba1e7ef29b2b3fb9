#!/usr/bin/env python3
"""ws_peer.py - raw-socket WebSocket clients for tests/websocket.bats (RFC 6455, written out by hand so each test
controls every byte: what is sent with the handshake, half-closes, clients that never read, many tunnels at once).

Every sub-command talks to 127.0.0.1:PORT (PIBL in front of pibl-origin's /_ws echo), prints one "ok ..." line and
exits 0, or prints "FAIL reason" and exits 1:
  echo PORT              handshake (checks the 101 and Sec-WebSocket-Accept), the replica's hello, a text and a
                         100 KB binary message echoed, a ping answered, a clean close (1000); prints the replica
  early PORT             the handshake and a first text frame in one send(): the frame must be echoed
  halfclose PORT         /_ws?after_eof=1: after the hello, shutdown(SHUT_WR); the echo server sees the end and
                         still sends "bye from NAME", then the end must reach us
  idle PORT SECS         open a tunnel, send nothing; print how long until the proxy closed it (at most SECS)
  noread PORT SECS       open a tunnel and send 64 KB frames for SECS seconds without ever reading; prints the
                         bytes the kernel took (back-pressure bounds them)
  many PORT N            open N tunnels at once, one echo on each; prints how many replicas answered
  hold PORT FILE         open a tunnel, write "open" to FILE, then echo a message every 0.2 s until FILE.stop
                         exists (prints the echo count) or the proxy closes the tunnel (prints "closed")
What it refuses: any address but 127.0.0.1; every socket has a timeout, every command a deadline.
"""
import base64
import hashlib
import os
import select
import socket
import sys
import time

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
KEY = b"dGhlIHNhbXBsZSBub25jZQ=="                 # RFC 6455's own example key


def fail(why):
    print("FAIL " + why, flush=True)
    sys.exit(1)


def frame(opcode, payload, fin=True):
    """A masked client frame."""
    mask = os.urandom(4)
    n = len(payload)
    head = bytes([(0x80 if fin else 0) | opcode])
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 65536:
        head += bytes([0x80 | 126]) + n.to_bytes(2, "big")
    else:
        head += bytes([0x80 | 127]) + n.to_bytes(8, "big")
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


class Peer:
    def __init__(self, port, path="/_ws", early=b"", timeout=10):
        self.s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buf = b""
        req = ("GET %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n" % (path, port, KEY.decode()))
        self.s.sendall(req.encode() + early)
        while b"\r\n\r\n" not in self.buf:
            self.more()
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        if not lines[0].startswith("HTTP/1.1 101 "):
            fail("handshake answered %r" % lines[0])
        fields = {}
        for l in lines[1:]:
            k, _, v = l.partition(":")
            fields[k.strip().lower()] = v.strip()
        want = base64.b64encode(hashlib.sha1(KEY + GUID).digest()).decode()
        if fields.get("sec-websocket-accept") != want:
            fail("Sec-WebSocket-Accept %r, want %r" % (fields.get("sec-websocket-accept"), want))
        if fields.get("upgrade", "").lower() != "websocket" or "upgrade" not in fields.get("connection", "").lower():
            fail("101 without Upgrade: websocket / Connection: Upgrade: %r" % fields)
        self.fields = fields

    def more(self):
        chunk = self.s.recv(65536)
        if not chunk:
            raise EOFError
        self.buf += chunk

    def read_frame(self):
        """(opcode, payload) of the next whole frame; server frames are never masked."""
        while len(self.buf) < 2:
            self.more()
        op, n = self.buf[0] & 0x0F, self.buf[1] & 0x7F
        if self.buf[1] & 0x80:
            fail("masked frame from the server")
        pos = 2
        if n >= 126:
            width = 2 if n == 126 else 8
            while len(self.buf) < 2 + width:
                self.more()
            n = int.from_bytes(self.buf[2:2 + width], "big")
            pos += width
        while len(self.buf) < pos + n:
            self.more()
        payload, self.buf = self.buf[pos:pos + n], self.buf[pos + n:]
        return op, payload

    def expect(self, op, payload, what):
        got = self.read_frame()
        if got != (op, payload):
            fail("%s: got opcode %d %r" % (what, got[0], got[1][:60]))

    def hello(self):
        op, payload = self.read_frame()
        if op != 1 or not payload.startswith(b"hello from "):
            fail("no hello: %d %r" % (op, payload[:60]))
        return payload[len(b"hello from "):].decode()

    def at_eof(self, secs):
        """1 when the peer closes within secs (bytes before the end are dropped)."""
        self.s.settimeout(secs)
        try:
            while True:
                self.more()
        except EOFError:
            return True
        except socket.timeout:
            return False


def cmd_echo(port):
    p = Peer(port)
    name = p.hello()
    p.s.sendall(frame(1, b"ping-1"))
    p.expect(1, b"ping-1", "text echo")
    blob = os.urandom(100 * 1024)
    p.s.sendall(frame(2, blob))
    p.expect(2, blob, "binary echo")
    p.s.sendall(frame(9, b"are you there"))
    p.expect(10, b"are you there", "pong")
    p.s.sendall(frame(8, (1000).to_bytes(2, "big") + b"bye"))
    p.expect(8, (1000).to_bytes(2, "big"), "close answer")
    if not p.at_eof(5):
        fail("tunnel still open 5 s after the close handshake")
    print("ok replica=%s x_backend=%s" % (name, p.fields.get("x-backend", "")), flush=True)


def cmd_early(port):
    p = Peer(port, early=frame(1, b"sent-with-the-handshake"))
    p.hello()
    p.expect(1, b"sent-with-the-handshake", "early frame")
    print("ok", flush=True)


def cmd_halfclose(port):
    p = Peer(port, path="/_ws?after_eof=1")
    name = p.hello()
    p.s.shutdown(socket.SHUT_WR)
    p.expect(1, ("bye from %s" % name).encode(), "message after our half-close")
    if not p.at_eof(5):
        fail("the end of the tunnel never came")
    print("ok", flush=True)


def cmd_idle(port, secs):
    p = Peer(port)
    p.hello()
    t0 = time.monotonic()
    if not p.at_eof(secs):
        fail("still open after %.1f s" % secs)
    print("ok closed_after=%.2f" % (time.monotonic() - t0), flush=True)


def cmd_noread(port, secs):
    p = Peer(port)
    p.hello()
    p.s.setblocking(False)
    chunk, sent, end = frame(2, b"x" * 65536), 0, time.monotonic() + secs
    pending = chunk
    while time.monotonic() < end:
        _, w, _ = select.select([], [p.s], [], 0.1)
        if not w:
            continue
        try:
            n = p.s.send(pending)
        except BlockingIOError:
            continue
        sent += n
        pending = pending[n:] or chunk
    print("ok sent=%d" % sent, flush=True)


def cmd_many(port, n):
    peers, names = [], set()
    deadline = time.monotonic() + 60
    for _ in range(n):
        peers.append(Peer(port, timeout=30))
    for p in peers:
        names.add(p.hello())
    for i, p in enumerate(peers):
        p.s.sendall(frame(1, b"m-%d" % i))
    for i, p in enumerate(peers):
        p.expect(1, b"m-%d" % i, "echo on tunnel %d" % i)
        if time.monotonic() > deadline:
            fail("past the deadline after %d echoes" % i)
    for p in peers:
        p.s.close()
    print("ok tunnels=%d replicas=%d" % (n, len(names)), flush=True)


def cmd_hold(port, path):
    p = Peer(port)
    p.hello()
    with open(path, "w") as f:
        f.write("open\n")
    n, end = 0, time.monotonic() + 30
    try:
        while time.monotonic() < end and not os.path.exists(path + ".stop"):
            p.s.sendall(frame(1, b"hold-%d" % n))
            p.expect(1, b"hold-%d" % n, "echo %d" % n)
            n += 1
            time.sleep(0.2)
    except (EOFError, OSError):
        print("ok closed echoes=%d" % n, flush=True)
        return
    print("ok echoes=%d" % n, flush=True)


def main(argv):
    cmds = {"echo": (cmd_echo, [int]), "early": (cmd_early, [int]), "halfclose": (cmd_halfclose, [int]),
            "idle": (cmd_idle, [int, float]), "noread": (cmd_noread, [int, float]),
            "many": (cmd_many, [int, int]), "hold": (cmd_hold, [int, str])}
    if len(argv) < 2 or argv[1] not in cmds or len(argv) - 2 != len(cmds[argv[1]][1]):
        sys.stderr.write(__doc__)
        return 2
    fn, types = cmds[argv[1]]
    try:
        fn(*[t(a) for t, a in zip(types, argv[2:])])
    except (EOFError, OSError) as ex:
        fail("%s: %r" % (argv[1], ex))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
