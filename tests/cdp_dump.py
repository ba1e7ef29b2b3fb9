#!/usr/bin/env python3
"""cdp_dump.py - load a page in headless Chromium and print its DOM once a JavaScript condition holds.

Usage: cdp_dump.py SECS EXPR URL CHROMIUM-ARGS...
  Starts CHROMIUM-ARGS (the browser and its flags) with --remote-debugging-pipe, opens URL in a new tab, evaluates
  EXPR in the page every 50 ms until it is truthy, then prints document.documentElement.outerHTML and exits 0. When
  SECS seconds pass first, it prints the DOM as it stands and exits 1, so a failing test still shows the page.

Why: --dump-dom with --virtual-time-budget waits for fetches, not for WebSocket messages; a page whose state comes
over a WebSocket can be dumped before its first message arrives. This waits on the page's own state instead.
The DevTools protocol goes over the pipe (fd 3 to the browser, fd 4 from it; JSON messages ended by NUL), so no
port is opened and no WebSocket client is needed. Every wait has the SECS deadline; the browser is closed, then
killed if it lingers.
"""
import json
import os
import select
import subprocess
import sys
import time


class Pipe:
    def __init__(self, wfd, rfd, deadline):
        self.wfd, self.rfd, self.deadline = wfd, rfd, deadline
        self.buf = b""
        self.next_id = 0

    def send(self, method, params=None, session=None):
        self.next_id += 1
        msg = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self.wfd, json.dumps(msg).encode() + b"\0")
        return self.next_id

    def call(self, method, params=None, session=None):
        want = self.send(method, params, session)
        while True:
            msg = self.read()
            if msg.get("id") == want:
                if "error" in msg:
                    raise RuntimeError("%s: %s" % (method, msg["error"]))
                return msg.get("result", {})

    def read(self):
        while b"\0" not in self.buf:
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no answer from the browser")
            r, _, _ = select.select([self.rfd], [], [], left)
            if not r:
                continue
            chunk = os.read(self.rfd, 65536)
            if not chunk:
                raise EOFError("the browser closed the pipe")
            self.buf += chunk
        raw, self.buf = self.buf.split(b"\0", 1)
        return json.loads(raw)


def evaluate(pipe, session, expr):
    res = pipe.call("Runtime.evaluate", {"expression": expr, "returnByValue": True}, session)
    return res.get("result", {}).get("value")


def main():
    if len(sys.argv) < 5:
        print("usage: cdp_dump.py SECS EXPR URL CHROMIUM-ARGS...", file=sys.stderr)
        return 2
    secs, expr, url, argv = float(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4:]
    deadline = time.monotonic() + secs
    to_r, to_w = os.pipe()        # we write commands on to_w; the browser reads them on its fd 3
    from_r, from_w = os.pipe()    # the browser writes on its fd 4; we read from_r

    def child_fds():             # the browser gets the two pipe ends as fds 3 and 4, and no other descriptor
        os.dup2(to_r, 3)
        os.dup2(from_w, 4)
        os.set_inheritable(3, True)     # dup2 onto itself keeps close-on-exec
        os.set_inheritable(4, True)
        os.closerange(5, os.sysconf("SC_OPEN_MAX"))

    proc = subprocess.Popen(argv + ["--remote-debugging-pipe", "about:blank"], preexec_fn=child_fds,
                            close_fds=False, stdin=subprocess.DEVNULL)
    os.close(to_r)
    os.close(from_w)
    pipe = Pipe(to_w, from_r, deadline)
    rc = 1
    try:
        target = pipe.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = pipe.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        pipe.call("Page.enable", {}, session)
        pipe.call("Page.navigate", {"url": url}, session)
        while time.monotonic() < deadline:
            if evaluate(pipe, session, "!!(%s)" % expr):
                rc = 0
                break
            time.sleep(0.05)
        pipe.deadline = time.monotonic() + 5      # a little longer to fetch the DOM and close the browser
        dom = evaluate(pipe, session, "document.documentElement.outerHTML")
        print(dom or "")
        if rc:
            print("cdp_dump: %s still false after %g s" % (expr, secs), file=sys.stderr)
        try:
            pipe.send("Browser.close")
        except OSError:
            pass
    except (RuntimeError, TimeoutError, EOFError, OSError, ValueError, KeyError) as e:
        print("cdp_dump: %s" % e, file=sys.stderr)
        rc = 1
    finally:
        os.close(to_w)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        os.close(from_r)
    return rc


if __name__ == "__main__":
    sys.exit(main())
