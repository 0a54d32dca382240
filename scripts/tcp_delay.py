#!/usr/bin/env python3
"""A loopback TCP proxy that delays every byte from the client to the
server by a fixed time, for benchmarks: one request's round trip grows by
the delay whatever the protocol (HTTP/1.1, HTTP/2, gRPC), while requests
sent together (pipelined, multiplexed, on many connections) stay together,
as on a real link with that latency. Bytes from the server pass at once.

    python3 scripts/tcp_delay.py --upstream 127.0.0.1:8080 --delay-ms 20

Prints the port it listens on (127.0.0.1, chosen by the kernel), then
serves until killed.
"""

import argparse
import asyncio
import socket


async def forward(reader, writer, delay):
    """Copies reader to writer; with a delay, each chunk leaves `delay`
    seconds after it arrived, in order."""
    loop = asyncio.get_running_loop()
    queue = asyncio.Queue()

    async def receive():
        while True:
            data = await reader.read(256 * 1024)
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
    args = parser.parse_args()
    host, port = args.upstream.rsplit(":", 1)
    delay = args.delay_ms / 1000

    async def accept(client_reader, client_writer):
        client_writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            server_reader, server_writer = await asyncio.open_connection(host, int(port))
        except OSError:
            client_writer.close()
            return
        server_writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        await asyncio.gather(
            forward(client_reader, server_writer, delay),
            forward(server_reader, client_writer, 0),
            return_exceptions=True,
        )
        client_writer.close()
        server_writer.close()

    server = await asyncio.start_server(accept, "127.0.0.1", 0, backlog=1024)
    print(server.sockets[0].getsockname()[1], flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
