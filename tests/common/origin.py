"""A small origin server the CDN tests control: chosen caching headers,
delays, variants and revalidation, and a count of the requests it served.

    python3 origin.py PORT [CERT KEY]

With CERT and KEY (PEM files) it speaks HTTPS. Prints "ready" once it listens
on 127.0.0.1:PORT. Routes (query strings are
ignored when counting):
  /count              JSON {path: requests}, not counted itself
  /static/NAME?size=N N bytes (default 1000) of NAME repeated; max-age=300, an ETag
  /nostore            Cache-Control: no-store
  /private            Cache-Control: private, max-age=300
  /cdncc              Cache-Control: no-store, CDN-Cache-Control: max-age=300
  /vary               Vary: Accept-Language; the body says which language
  /short              max-age=1 with ETag "v1"; If-None-Match "v1" gets a 304
  /plain              no freshness, no validators
  /slow?ms=N          waits N ms first; max-age=300
  /status/CODE        that status, no caching headers
  /img/NAME           max-age=300, Cache-Tag: images
  /tagged/NAME?tag=T  max-age=300, Surrogate-Key: T
  /swr                max-age=2, stale-while-revalidate=30; the body counts ("v3")
  /sie                max-age=1, stale-if-error=60
  anything else       404
"""

import json
import ssl
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

COUNTS = {}
LOCK = threading.Lock()


class Origin(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def send(self, status, body, headers=()):
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_POST(self):
        length = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(length)
        self.count()
        self.send(200, b"posted " + body, [("Content-Type", "text/plain")])

    def do_HEAD(self):
        self.do_GET()

    def count(self):
        path = urlparse(self.path).path
        with LOCK:
            COUNTS[path] = COUNTS.get(path, 0) + 1

    def do_GET(self):
        url = urlparse(self.path)
        path, query = url.path, parse_qs(url.query)
        if path == "/count":
            with LOCK:
                body = json.dumps(COUNTS).encode()
            return self.send(200, body, [("Content-Type", "application/json")])
        self.count()
        text = [("Content-Type", "text/plain")]
        if path.startswith("/static/"):
            name = path[len("/static/"):].encode() or b"x"
            size = int(query.get("size", ["1000"])[0])
            body = (name * (size // len(name) + 1))[:size]
            return self.send(200, body, text + [
                ("Cache-Control", "max-age=300"),
                ("ETag", '"s1"'),
                ("X-Origin", "yes"),
            ])
        if path == "/nostore":
            return self.send(200, b"fresh every time", text + [("Cache-Control", "no-store")])
        if path == "/private":
            return self.send(200, b"yours only", text + [("Cache-Control", "private, max-age=300")])
        if path == "/cdncc":
            return self.send(200, b"cdn may keep this", text + [
                ("Cache-Control", "no-store"),
                ("CDN-Cache-Control", "max-age=300"),
            ])
        if path == "/vary":
            lang = self.headers.get("Accept-Language", "none")
            return self.send(200, ("lang=" + lang).encode(), text + [
                ("Cache-Control", "max-age=300"),
                ("Vary", "Accept-Language"),
            ])
        if path == "/short":
            if self.headers.get("If-None-Match") == '"v1"':
                return self.send(304, b"", [("Cache-Control", "max-age=1"), ("ETag", '"v1"')])
            return self.send(200, b"short-lived", text + [
                ("Cache-Control", "max-age=1"),
                ("ETag", '"v1"'),
            ])
        if path == "/plain":
            return self.send(200, b"no caching headers", text)
        if path == "/slow":
            time.sleep(int(query.get("ms", ["500"])[0]) / 1000)
            return self.send(200, b"worth the wait", text + [("Cache-Control", "max-age=300")])
        if path.startswith("/img/"):
            return self.send(200, b"image " + path.encode(), text + [
                ("Cache-Control", "max-age=300"),
                ("Cache-Tag", "images"),
            ])
        if path.startswith("/tagged/"):
            tag = query.get("tag", ["none"])[0]
            return self.send(200, b"tagged " + path.encode(), text + [
                ("Cache-Control", "max-age=300"),
                ("Surrogate-Key", tag + " everything"),
            ])
        if path == "/swr":
            with LOCK:
                n = COUNTS[path]
            return self.send(200, b"v%d" % n, text + [
                ("Cache-Control", "max-age=2, stale-while-revalidate=30"),
            ])
        if path == "/sie":
            return self.send(200, b"kept for errors", text + [
                ("Cache-Control", "max-age=1, stale-if-error=60"),
            ])
        if path.startswith("/status/"):
            code = int(path[len("/status/"):])
            return self.send(code, b"status %d" % code, text)
        return self.send(404, b"no such thing", text)


def main():
    server = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Origin)
    server.daemon_threads = True
    server.request_queue_size = 2048
    if len(sys.argv) == 4:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(sys.argv[2], sys.argv[3])
        server.socket = context.wrap_socket(server.socket, server_side=True)
    print("ready", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
