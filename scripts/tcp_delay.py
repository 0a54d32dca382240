#!/usr/bin/env python3
"""A loopback TCP proxy that delays every byte from the client to the
server by a fixed time, for benchmarks: one request's round trip grows by
the delay whatever the protocol (HTTP/1.1, HTTP/2, gRPC), while requests
sent together (pipelined, multiplexed, on many connections) stay together,
as on a real link with that latency. Bytes from the server pass at once.

    python3 scripts/tcp_delay.py --upstream 127.0.0.1:8080 --delay-ms 20
    python3 scripts/tcp_delay.py --upstream ... --counts counts.json

Prints the port it listens on (127.0.0.1, chosen by the kernel), then
serves until killed. With --counts, keeps a JSON file up to date (within
0.2 s) with the connections, the bytes each way and the HTTP/1.1 requests
(request lines seen from the client; none for HTTP/2 and gRPC).
"""

import argparse
import asyncio
import json
import os
import socket

REQUEST_LINE_END = b" HTTP/1.1\r\n"
COUNTS = {"connections": 0, "to_server": 0, "to_client": 0, "http_requests": 0}


async def forward(reader, writer, delay, sent, requests=False):
    """Copies reader to writer, counting bytes in COUNTS[sent] (and, if
    `requests`, the HTTP/1.1 request lines); with a delay, each chunk
    leaves `delay` seconds after it arrived, in order."""
    loop = asyncio.get_running_loop()
    queue = asyncio.Queue()
    # The end of the last chunk, shorter than a request line's end, so a
    # line split across two chunks is counted once.
    tail = b""

    async def receive():
        nonlocal tail
        while True:
            data = await reader.read(256 * 1024)
            COUNTS[sent] += len(data)
            if requests:
                joined = tail + data
                COUNTS["http_requests"] += joined.count(REQUEST_LINE_END)
                tail = joined[-(len(REQUEST_LINE_END) - 1):]
            queue.put_nowait((loop.time() + delay, data))
            if not data:
                return

    async def send():
        while True:
            due, data = await queue.get()
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            if not data:
                break
            writer.write(data)
            await writer.drain()
        try:
            writer.write_eof()
        except OSError:
            pass

    try:
        await asyncio.gather(receive(), send())
    except (ConnectionError, OSError):
        writer.close()


async def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--upstream", required=True, help="HOST:PORT of the server")
    parser.add_argument("--delay-ms", type=float, default=0.0, help="added to every byte sent")
    parser.add_argument("--counts", help="a JSON file to keep the counts in")
    args = parser.parse_args()
    host, port = args.upstream.rsplit(":", 1)
    delay = args.delay_ms / 1000

    async def accept(client_reader, client_writer):
        COUNTS["connections"] += 1
        client_writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            server_reader, server_writer = await asyncio.open_connection(host, int(port))
        except OSError:
            client_writer.close()
            return
        server_writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        await asyncio.gather(
            forward(client_reader, server_writer, delay, "to_server", requests=True),
            forward(server_reader, client_writer, 0, "to_client"),
            return_exceptions=True,
        )
        client_writer.close()
        server_writer.close()

    server = await asyncio.start_server(accept, "127.0.0.1", 0, backlog=1024)
    print(server.sockets[0].getsockname()[1], flush=True)
    counting = [keep_counts(args.counts)] if args.counts else []
    async with server:
        await asyncio.gather(server.serve_forever(), *counting)


async def keep_counts(path):
    """Rewrites `path` whenever the counts changed, at most every 0.2 s."""
    written = None
    while True:
        if COUNTS != written:
            written = dict(COUNTS)
            with open(path + ".new", "w") as file:
                json.dump(written, file)
            os.replace(path + ".new", path)
        await asyncio.sleep(0.2)


if __name__ == "__main__":
    asyncio.run(main())
