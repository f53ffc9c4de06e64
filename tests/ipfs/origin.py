"""A trustless-gateway origin for the IPFS tests: serves CAR files it is
given, whole, as `GET /ipfs/{root}?format=car`.

    python3 origin.py PORT DIR [flip]

DIR holds `{root}.car` files (what `ipfs-car pack` wrote). With `flip`, the
last byte of every answer is flipped: the last block no longer hashes to its
CID (a lying origin). Prints "ready" once it listens on 127.0.0.1:PORT.
Anything else is 404. This stands in for a remote IPFS gateway, which the
tests cannot reach: it speaks the same protocol over a real socket.
"""

import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PORT = int(sys.argv[1])
DIR = sys.argv[2]
FLIP = len(sys.argv) > 3 and sys.argv[3] == "flip"


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        path, _, query = self.path.partition("?")
        root = path[len("/ipfs/"):] if path.startswith("/ipfs/") else ""
        name = os.path.join(DIR, root + ".car")
        if "/" in root or not root or "format=car" not in query or not os.path.isfile(name):
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        with open(name, "rb") as f:
            body = bytearray(f.read())
        if FLIP:
            body[-1] ^= 0x01
        self.send_response(200)
        self.send_header("Content-Type", "application/vnd.ipld.car; version=1")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(bytes(body))


server = ThreadingHTTPServer(("127.0.0.1", PORT), Handler)
print("ready", flush=True)
server.serve_forever()
