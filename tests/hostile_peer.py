#!/usr/bin/env python3
"""hostile_peer.py - the misbehaving peers of tests/hostile.bats.

What it does, one sub-command each:
  backend DIR    a fake backend that answers with crafted bytes (pibl-origin only speaks valid HTTP). It listens
                 on 127.0.0.1, any free port, and prints "fake listening on 127.0.0.1:PORT". Request number R (1, 2, ...
                 counted over all connections) gets the bytes of file DIR/R, or DIR/default when there is none; when
                 DIR/R.close (or DIR/default.close) exists the connection is closed after the answer, otherwise it
                 stays open for the next request; DIR/R.delay holds seconds (at most 10) to wait before
                 answering request R; DIR/R.split holds a byte count K and optionally seconds S (at most
                 10, default 0.2): the first K bytes of the answer go out, and the rest in one write S s later. Each request head is logged to DIR/log as "conn=C req=R LINE",
                 and the raw bytes of request R (head, then the body as framed by Content-Length or chunked, read
                 whole before answering) are kept in DIR/req-R.
  slow PORT N SECS MODE REPORT
                 slowloris: opens N connections to 127.0.0.1:PORT and dribbles one byte per second on each (MODE head:
                 a request head that never ends; MODE body: a whole head announcing a body, then the body bytes),
                 for at most SECS seconds or until the server closed all of them. REPORT gets "opened=N" once every
                 connection is open, then "closed=K status408=T" lines (connections the server closed, and those
                 that got a 408 first) and finally "done".
  hold PORT N SECS REPORT
                 opens N connections and sends nothing; after 1 s writes to REPORT "opened=N answered=A closed=C
                 status503=S" (A = connections that received bytes), then keeps them open until SECS have passed or
                 the file REPORT.release exists, closes them and writes "released".
What it refuses: any address but 127.0.0.1; running longer than its SECS bound (backend: 120 s at most).
Limits: connections are never more than N; reads are capped at 64 KB per connection.
"""
import os
import selectors
import socket
import sys
import threading
import time


def write_report(path, line):
    with open(path, "a") as f:
        f.write(line + "\n")


# ---------------------------------------------------------------- backend

def backend(folder):
    """Serve crafted answers from folder; runs for 120 s at most (the test kills it before)."""
    lock = threading.Lock()
    counters = {"conn": 0, "req": 0}
    log_path = os.path.join(folder, "log")

    def answer_for(req):
        for name in (str(req), "default"):
            path = os.path.join(folder, name)
            if os.path.exists(path):
                with open(path, "rb") as f:
                    data = f.read()
                return data, os.path.exists(path + ".close")
        return b"HTTP/1.1 500 No Answer File\r\nContent-Length: 0\r\n\r\n", True

    def fill(conn, buf, n):
        """Read until buf holds at least n bytes; None when the peer stops first (or past 1 MB)."""
        while len(buf) < n:
            chunk = conn.recv(65536)
            if not chunk or len(buf) > 1 << 20:
                return None
            buf += chunk
        return buf

    def line_end(conn, buf, pos):
        """(buf, index of the CRLF ending the line that starts at pos), or None."""
        while buf.find(b"\r\n", pos) < 0:
            buf = fill(conn, buf, len(buf) + 1)
            if buf is None:
                return None
        return buf, buf.find(b"\r\n", pos)

    def body_of(conn, head, buf):
        """Split the request body framed by head off buf: (body bytes as sent, rest), or None."""
        fields = [l.split(b":", 1) for l in head.split(b"\r\n")[1:] if b":" in l]
        fields = {k.strip().lower(): v.strip() for k, v in fields}
        if fields.get(b"transfer-encoding", b"").lower() != b"chunked":
            n = int(fields.get(b"content-length", b"0") or b"0", 10)
            buf = fill(conn, buf, n)
            return None if buf is None else (buf[:n], buf[n:])
        pos = 0
        while True:                                  # chunk-size line, then data CRLF
            got = line_end(conn, buf, pos)
            if got is None:
                return None
            buf, eol = got
            size = int(buf[pos:eol].split(b";", 1)[0], 16)
            pos = eol + 2
            if size == 0:
                break
            pos += size + 2
            buf = fill(conn, buf, pos)
            if buf is None:
                return None
        while True:                                  # trailer lines up to the empty one
            got = line_end(conn, buf, pos)
            if got is None:
                return None
            buf, eol = got
            empty = eol == pos
            pos = eol + 2
            if empty:
                return buf[:pos], buf[pos:]

    def serve(conn, conn_id):
        buf = b""
        conn.settimeout(60)
        try:
            while True:
                while b"\r\n\r\n" not in buf:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    buf += chunk
                    if len(buf) > 65536:
                        return
                head, buf = buf.split(b"\r\n\r\n", 1)
                got = body_of(conn, head, buf)
                if got is None:
                    return
                body, buf = got
                with lock:
                    counters["req"] += 1
                    req = counters["req"]
                    line = head.split(b"\r\n", 1)[0].decode("latin-1")
                    with open(log_path, "a") as f:
                        f.write("conn=%d req=%d %s\n" % (conn_id, req, line))
                    with open(os.path.join(folder, "req-%d" % req), "wb") as f:
                        f.write(head + b"\r\n\r\n" + body)
                data, close = answer_for(req)
                delay = os.path.join(folder, "%d.delay" % req)
                if os.path.exists(delay):            # seconds to wait before answering, at most 10
                    with open(delay) as f:
                        time.sleep(min(float(f.read().strip() or 0), 10.0))
                split = os.path.join(folder, "%d.split" % req)
                if os.path.exists(split):            # two writes: K bytes, then the rest
                    with open(split) as f:
                        words = f.read().split() or ["0"]
                    k = int(words[0])
                    conn.sendall(data[:k])
                    time.sleep(min(float(words[1]), 10.0) if len(words) > 1 else 0.2)
                    data = data[k:]
                conn.sendall(data)
                if close:
                    return
        except OSError:
            return
        finally:
            conn.close()

    ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(("127.0.0.1", 0))
    ls.listen(128)
    ls.settimeout(1)
    print("fake listening on 127.0.0.1:%d" % ls.getsockname()[1], flush=True)
    end = time.monotonic() + 120
    while time.monotonic() < end:
        try:
            conn, _ = ls.accept()
        except socket.timeout:
            continue
        with lock:
            counters["conn"] += 1
            conn_id = counters["conn"]
        threading.Thread(target=serve, args=(conn, conn_id), daemon=True).start()


# ---------------------------------------------------------------- slowloris

def slow(port, n, secs, mode, report):
    """Dribble a byte a second on n connections; report how many the server closed."""
    if mode == "head":
        head = b""
        message = b"GET /hello.txt HTTP/1.1\r\nHost: slow\r\nX-Slow: " + b"a" * 4096
    else:
        head = b"POST /_echo HTTP/1.1\r\nHost: slow\r\nContent-Length: 100000\r\n\r\n"
        message = b"b" * 100000
    sel = selectors.DefaultSelector()
    socks = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        s.setblocking(False)
        if head:
            s.send(head)
        socks.append(s)
        sel.register(s, selectors.EVENT_READ)
    write_report(report, "opened=%d" % len(socks))
    closed = set()
    answered = set()
    end = time.monotonic() + secs
    pos = 0
    next_byte = time.monotonic()
    while time.monotonic() < end and len(closed) < len(socks):
        now = time.monotonic()
        if now >= next_byte:
            for s in socks:
                if s.fileno() in closed:
                    continue
                try:
                    s.send(message[pos:pos + 1])
                except OSError:
                    closed.add(s.fileno())
            pos = (pos + 1) % len(message)
            next_byte = now + 1.0
        for key, _ in sel.select(timeout=0.2):
            s = key.fileobj
            try:
                data = s.recv(65536)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if data.startswith(b"HTTP/1.1 408"):
                answered.add(s.fileno())
            if not data:
                closed.add(s.fileno())
                sel.unregister(s)
        write_report(report, "closed=%d status408=%d" % (len(closed), len(answered)))
    for s in socks:
        s.close()
    write_report(report, "done")


# ---------------------------------------------------------------- idle holders

def hold(port, n, secs, report):
    """Open n silent connections, report what the server did with them, hold them, close them."""
    socks = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        s.setblocking(False)
        socks.append(s)
    time.sleep(1)
    answered = closed = status503 = 0
    for s in socks:
        try:
            data = s.recv(65536)
        except BlockingIOError:
            continue
        except OSError:
            data = b""
        if data:
            answered += 1
            if data.startswith(b"HTTP/1.1 503"):
                status503 += 1
            try:
                if s.recv(65536) == b"":
                    closed += 1
            except OSError:
                pass
        else:
            closed += 1
    write_report(report, "opened=%d answered=%d closed=%d status503=%d" % (len(socks), answered, closed, status503))
    end = time.monotonic() + secs
    while time.monotonic() < end and not os.path.exists(report + ".release"):
        time.sleep(0.05)
    for s in socks:
        s.close()
    write_report(report, "released")


def main(argv):
    if len(argv) >= 2 and argv[1] == "backend" and len(argv) == 3:
        backend(argv[2])
    elif len(argv) == 7 and argv[1] == "slow":
        slow(int(argv[2]), int(argv[3]), float(argv[4]), argv[5], argv[6])
    elif len(argv) == 6 and argv[1] == "hold":
        hold(int(argv[2]), int(argv[3]), float(argv[4]), argv[5])
    else:
        sys.stderr.write(__doc__)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
