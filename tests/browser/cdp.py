#!/usr/bin/env python3
"""Drives headless Chromium (Debian's `chromium`) through the DevTools
protocol, for the site-hosting tests: a small CDP client over `websockets`.

    cdp.py --out DIR [--quic HOST:PORT --spki BASE64] STEP ...

Steps, run in order on one tab:
    goto:URL     navigate and wait for the load event
    wait:EXPR    poll the JavaScript expression until it is truthy (20 s)
    eval:EXPR    evaluate it (promises awaited)
    shot:NAME    save a PNG screenshot as DIR/NAME.png

Prints one JSON object per step. For `goto`, every response the page
loaded (url, status, protocol) and every request that failed.
"""

import argparse
import base64
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

from websockets.sync.client import connect


class Tab:
    def __init__(self, ws_url):
        self.ws = connect(ws_url, max_size=64 << 20, open_timeout=30)
        self.next_id = 0
        self.events = []
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = self.call(
            "Target.attachToTarget", {"targetId": target, "flatten": True}
        )["sessionId"]
        for domain in ("Page", "Network", "Runtime"):
            self.call(domain + ".enable", session=True)

    def call(self, method, params=None, session=False, timeout=60):
        self.next_id += 1
        msg = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = self.session
        self.ws.send(json.dumps(msg))
        deadline = time.time() + timeout
        while True:
            raw = self.ws.recv(timeout=max(0.1, deadline - time.time()))
            m = json.loads(raw)
            if m.get("id") == self.next_id:
                if "error" in m:
                    raise RuntimeError(f"{method}: {m['error']}")
                return m.get("result", {})
            if "method" in m:
                self.events.append(m)

    def wait_event(self, name, timeout=60):
        deadline = time.time() + timeout
        while True:
            for i, e in enumerate(self.events):
                if e["method"] == name:
                    del self.events[i]
                    return e
            raw = self.ws.recv(timeout=max(0.1, deadline - time.time()))
            m = json.loads(raw)
            if "method" in m:
                self.events.append(m)

    def drain(self, seconds):
        end = time.time() + seconds
        while time.time() < end:
            try:
                m = json.loads(self.ws.recv(timeout=max(0.01, end - time.time())))
            except TimeoutError:
                break
            if "method" in m:
                self.events.append(m)

    def evaluate(self, expr):
        r = self.call(
            "Runtime.evaluate",
            {"expression": expr, "awaitPromise": True, "returnByValue": True},
            session=True,
        )
        if "exceptionDetails" in r:
            raise RuntimeError(f"{expr}: {r['exceptionDetails'].get('text')}")
        return r["result"].get("value")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--quic")
    ap.add_argument("--spki")
    ap.add_argument("steps", nargs="+")
    args = ap.parse_args()
    profile = tempfile.mkdtemp(prefix="tessera-chromium-")
    cmd = [
        shutil.which("chromium") or "/usr/bin/chromium",
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--no-default-browser-check",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-dev-shm-usage",
        "--window-size=1024,768",
        f"--user-data-dir={profile}",
        "--remote-debugging-port=0",
    ]
    if args.quic:
        # `*.localhost` resolves to loopback, ::1 first: the node listens on
        # 127.0.0.1, and a forced QUIC origin has no fallback to try.
        host = args.quic.rsplit(":", 1)[0]
        cmd += [
            f"--host-resolver-rules=MAP {host} 127.0.0.1",
            "--enable-quic",
            f"--origin-to-force-quic-on={args.quic}",
            f"--ignore-certificate-errors-spki-list={args.spki}",
        ]
    cmd.append("about:blank")
    browser = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        port_file = os.path.join(profile, "DevToolsActivePort")
        deadline = time.time() + 60
        while not (os.path.exists(port_file) and len(open(port_file).read().split()) >= 2):
            if time.time() > deadline or browser.poll() is not None:
                sys.exit("chromium did not open its DevTools port")
            time.sleep(0.1)
        port, path = open(port_file).read().split()[:2]
        tab = Tab(f"ws://127.0.0.1:{port}{path}")
        for step in args.steps:
            kind, _, arg = step.partition(":")
            out = {"step": kind, "arg": arg}
            if kind == "goto":
                tab.events.clear()
                tab.call("Page.navigate", {"url": arg}, session=True)
                tab.wait_event("Page.loadEventFired")
                tab.drain(0.3)
                responses, failed = [], []
                for e in tab.events:
                    p = e.get("params", {})
                    if e["method"] == "Network.responseReceived":
                        r = p["response"]
                        responses.append(
                            {"url": r["url"], "status": r["status"], "protocol": r.get("protocol", "")}
                        )
                    elif e["method"] == "Network.loadingFailed":
                        failed.append({"error": p.get("errorText"), "id": p.get("requestId")})
                out.update(responses=responses, failed=failed)
            elif kind == "wait":
                deadline = time.time() + 20
                value = None
                while time.time() < deadline:
                    try:
                        value = tab.evaluate(arg)
                    except RuntimeError as e:
                        value = None
                        out["error"] = str(e)
                    if value:
                        break
                    time.sleep(0.1)
                out["value"] = value
            elif kind == "eval":
                out["value"] = tab.evaluate(arg)
            elif kind == "shot":
                png = tab.call("Page.captureScreenshot", {"format": "png"}, session=True)["data"]
                path = os.path.join(args.out, arg + ".png")
                with open(path, "wb") as f:
                    f.write(base64.b64decode(png))
                out["path"] = path
            else:
                sys.exit(f"unknown step {step}")
            print(json.dumps(out), flush=True)
    finally:
        browser.terminate()
        try:
            browser.wait(10)
        except subprocess.TimeoutExpired:
            browser.kill()
        shutil.rmtree(profile, ignore_errors=True)


if __name__ == "__main__":
    main()
