"""Drives aioquic's own example HTTP/3 client (examples/http3_client.py from the
aioquic release) for what its command line cannot say: a Range header.

usage: h3_range.py EXAMPLES_DIR HOST PORT PATH RANGE OUTFILE
prints: STATUS CONTENT-RANGE
"""
import asyncio
import ssl
import sys

sys.path.insert(0, sys.argv[1])
import http3_client  # noqa: E402  (aioquic's example client)
from aioquic.asyncio.client import connect  # noqa: E402
from aioquic.h3.connection import H3_ALPN  # noqa: E402
from aioquic.h3.events import DataReceived, HeadersReceived  # noqa: E402
from aioquic.quic.configuration import QuicConfiguration  # noqa: E402


async def main(host, port, path, rng, out):
    cfg = QuicConfiguration(is_client=True, alpn_protocols=H3_ALPN)
    cfg.verify_mode = ssl.CERT_NONE
    async with connect(host, port, configuration=cfg, create_protocol=http3_client.HttpClient) as client:
        events = await client.get(f"https://{host}:{port}{path}", headers={"range": rng})
        status, content_range, body = "", "-", b""
        for e in events:
            if isinstance(e, HeadersReceived):
                h = dict(e.headers)
                status = h[b":status"].decode()
                content_range = h.get(b"content-range", b"-").decode()
            elif isinstance(e, DataReceived):
                body += e.data
        with open(out, "wb") as f:
            f.write(body)
        print(status, content_range)


asyncio.run(main(sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5], sys.argv[6]))
