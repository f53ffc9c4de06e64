"""One HTTP/3 request with aioquic, an independent client, with any method and
headers, for the end-to-end tests. It reuses the HttpClient protocol of aioquic's
example client (TESSERA_H3_CLIENT, installed by scripts/test), which cannot send
request headers from its command line.

    python3 h3_request.py URL [-X METHOD] [-H 'name: value' ...] [--data-file F]

Prints one JSON object: {"status": 304, "headers": [[name, value], ...],
"body": "<hex>"}. Certificates are not verified (nodes make self-signed ones).
"""

import argparse
import asyncio
import json
import os
import ssl
import sys
from urllib.parse import urlparse

sys.path.insert(0, os.path.dirname(os.environ["TESSERA_H3_CLIENT"]))

from aioquic.asyncio.client import connect  # noqa: E402
from aioquic.h3.connection import H3_ALPN  # noqa: E402
from aioquic.h3.events import DataReceived, HeadersReceived  # noqa: E402
from aioquic.quic.configuration import QuicConfiguration  # noqa: E402
from http3_client import URL, HttpClient, HttpRequest  # noqa: E402


async def request(url: str, method: str, headers: dict, content: bytes) -> dict:
    parsed = urlparse(url)
    config = QuicConfiguration(is_client=True, alpn_protocols=H3_ALPN)
    config.verify_mode = ssl.CERT_NONE
    async with connect(
        parsed.hostname, parsed.port or 443, configuration=config, create_protocol=HttpClient
    ) as client:
        events = await asyncio.wait_for(
            client._request(
                HttpRequest(method=method, url=URL(url), headers=headers, content=content)
            ),
            timeout=60,
        )
        status, head, body = None, [], b""
        for event in events:
            if isinstance(event, HeadersReceived):
                for name, value in event.headers:
                    if name == b":status":
                        status = int(value)
                    else:
                        head.append([name.decode(), value.decode()])
            elif isinstance(event, DataReceived):
                body += event.data
        client.close()
        return {"status": status, "headers": head, "body": body.hex()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("-X", dest="method", default="GET")
    parser.add_argument("-H", dest="headers", action="append", default=[])
    parser.add_argument("--data-file", help="send this file's bytes as the request body")
    args = parser.parse_args()
    content = b""
    if args.data_file:
        with open(args.data_file, "rb") as f:
            content = f.read()
        headers_len = {"content-length": str(len(content))}
    else:
        headers_len = {}
    headers = {}
    for line in args.headers:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    headers.update(headers_len)
    print(json.dumps(asyncio.run(request(args.url, args.method, headers, content))))


if __name__ == "__main__":
    main()
