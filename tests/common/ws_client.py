"""A WebSocket session with the `websockets` client from PyPI (an independent
implementation), for the end-to-end tests.

    python3 ws_client.py URL echo       text, 100 KB binary, a ping, then close-me
    python3 ws_client.py URL oversize   one message over the server's limit

Prints one JSON object with what it saw.
"""

import json
import sys

from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect


def echo(url: str) -> dict:
    out = {}
    with connect(url, max_size=2**22, open_timeout=30) as ws:
        ws.send("hello, node")
        out["text"] = ws.recv(timeout=30)
        blob = bytes(range(256)) * 400
        ws.send(blob)
        out["binary_ok"] = ws.recv(timeout=30) == blob
        out["pong"] = ws.ping(b"are you there").wait(timeout=30)
        ws.send("close-me")
        try:
            ws.recv(timeout=30)
            out["closed_by_server"] = False
        except ConnectionClosed as e:
            out["closed_by_server"] = True
            out["close_code"] = e.rcvd.code if e.rcvd else None
    return out


def oversize(url: str) -> dict:
    with connect(url, open_timeout=30) as ws:
        try:
            # The server may close while this is still being sent.
            ws.send(b"x" * (2 << 20))
            ws.recv(timeout=30)
            return {"closed_by_server": False}
        except ConnectionClosed as e:
            return {"closed_by_server": True, "close_code": e.rcvd.code if e.rcvd else None}


if __name__ == "__main__":
    url, mode = sys.argv[1], sys.argv[2]
    print(json.dumps(echo(url) if mode == "echo" else oversize(url)))
