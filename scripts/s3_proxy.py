#!/usr/bin/env python3
"""A loopback HTTP proxy in front of an S3 server, for granary's tests and
benchmarks. It adds a delay to every request, as a real bucket's round trip
does, and can damage the bodies of successful GET responses, as a faulty
store or network would:

  flip   one byte of the body changed, length kept
  short  the body cut to half, with a Content-Length that matches
  cut    the connection closed halfway through a body whose
         Content-Length promised all of it
  encoding  the body kept, but its Content-Encoding said to be br, which
         no granary client asks for (any successful answer, POST too)
  trickle  the body sent 64 bytes every 0.2 s: each step comes in time
         for a per-read deadline, the whole takes long (at most two
         minutes, then the connection is closed)
  deny   every request (or, with --only, every request to such a path)
         answered 403 with a JSON error, as a cloud store answers a
         credential that may not use the bucket
  stall  every request (or, with --only, every request to such a path)
         left unanswered for two minutes, then its connection closed, as
         a store that hangs

    python3 scripts/s3_proxy.py --upstream http://127.0.0.1:8333 \\
        [--delay-ms 20] [--rate-mbps 800] [--fault none|flip|short|cut|encoding|trickle|deny|stall] [--only /granary-v1/cas/]

--rate-mbps shares one link of that many megabits a second among all
connections, both ways, as a runner's network link does.

Without a fault, bodies pass through as they arrive. Range requests (206)
are damaged too, so a client that resumes a cut
download is cut again. Requests pass through unchanged (the Host header too: S3 signs it), so the
client signs for the proxy's address and the server checks the same.
Prints the port it listens on (127.0.0.1, chosen by the kernel), then
serves until killed.
"""

import argparse
import http.client
import http.server
import sys
import threading
import time
import urllib.parse

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length"}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--upstream", required=True, help="http://HOST:PORT of the S3 server")
    parser.add_argument("--delay-ms", type=float, default=0.0, help="added to every request")
    parser.add_argument("--fault", choices=["none", "flip", "short", "cut", "encoding", "trickle", "deny", "stall"], default="none")
    parser.add_argument("--only", default="", help="damage (or deny) only paths containing this")
    parser.add_argument("--rate-mbps", type=float, default=0.0, help="shared bandwidth (0: no limit)")
    args = parser.parse_args()
    upstream = urllib.parse.urlsplit(args.upstream)
    local = threading.local()
    link = Link(args.rate_mbps * 1e6 / 8)

    def forward(method, path, headers, body):
        """The upstream's response, its body not yet read."""
        for attempt in (1, 2):
            if getattr(local, "conn", None) is None:
                local.conn = http.client.HTTPConnection(upstream.hostname, upstream.port, timeout=60)
            try:
                local.conn.request(method, path, body=body, headers=headers)
                return local.conn.getresponse()
            except (http.client.HTTPException, OSError):
                local.conn.close()
                local.conn = None
                if attempt == 2:
                    raise

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # Headers and body go out in two writes: with Nagle's algorithm and
        # the client's delayed ACKs, the body would wait 40 ms more.
        disable_nagle_algorithm = True

        def log_message(self, *_):
            pass

        def relay(self):
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else None
            link.carry(length)
            time.sleep(args.delay_ms / 1000.0)
            if args.fault == "stall" and args.only in self.path:
                time.sleep(120)
                self.close_connection = True
                return
            if args.fault == "deny" and args.only in self.path:
                denial = b'{"error":{"code":403,"message":"the caller does not have access to the bucket"}}'
                self.send_response(403)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(denial)))
                self.end_headers()
                self.wfile.write(denial)
                return
            headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
            if body is not None:
                headers["Content-Length"] = str(len(body))
            try:
                response = forward(self.command, self.path, headers, body)
            except (http.client.HTTPException, OSError):
                self.send_error(502, "upstream unreachable")
                return
            fault = args.fault
            recode = fault == "encoding" and response.status == 200 and args.only in self.path
            self.send_response(response.status)
            for key, value in response.getheaders():
                if key.lower() not in HOP_BY_HOP and not (recode and key.lower() == "content-encoding"):
                    self.send_header(key, value)
            if recode:
                self.send_header("Content-Encoding", "br")
            if self.command == "HEAD":
                self.send_header("Content-Length", response.getheader("Content-Length", "0"))
                self.end_headers()
                return
            if fault in ("none", "encoding"):
                self.stream(response)
                return
            data = response.read()
            damage = (
                self.command == "GET"
                and response.status in (200, 206)
                and args.only in self.path
                and len(data) > 0
            )
            if damage and fault == "flip":
                data = bytearray(data)
                data[len(data) // 2] ^= 0x20
                data = bytes(data)
            elif damage and fault == "short":
                data = data[: len(data) // 2]
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if damage and fault == "trickle":
                deadline = time.monotonic() + 120
                for i in range(0, len(data), 64):
                    if time.monotonic() > deadline:
                        break
                    self.wfile.write(data[i : i + 64])
                    self.wfile.flush()
                    time.sleep(0.2)
                self.close_connection = True
                return
            if damage and fault == "cut":
                self.wfile.write(data[: len(data) // 2])
                self.wfile.flush()
                self.close_connection = True
                return
            link.carry(len(data))
            self.wfile.write(data)

        def stream(self, response):
            """Passes the body on as it arrives, as a network does (a big
            answer is not held back until its last byte is in)."""
            length = response.getheader("Content-Length")
            if response.status in (204, 304):
                self.end_headers()
                return
            if length is not None:
                self.send_header("Content-Length", length)
            else:
                self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            while chunk := response.read1(256 * 1024):
                link.carry(len(chunk))
                if length is None:
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                else:
                    self.wfile.write(chunk)
            if length is None:
                self.wfile.write(b"0\r\n\r\n")

        do_GET = do_PUT = do_HEAD = do_POST = do_DELETE = relay

    class Server(http.server.ThreadingHTTPServer):
        daemon_threads = True
        # socketserver's default backlog of 5 drops the SYNs of a client
        # opening dozens of connections at once, which then retries after
        # 1 s, 3 s, 7 s: seconds of stalls that no real server adds.
        request_queue_size = 1024

        def handle_error(self, request, client_address):
            # Clients hang up on slow answers (their deadline passed): normal here.
            if not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
                super().handle_error(request, client_address)

    server = Server(("127.0.0.1", 0), Handler)
    print(server.server_address[1], flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


class Link:
    """A link of `rate` bytes a second that every transfer shares: each
    chunk takes its turn on the wire, as on a real network."""

    def __init__(self, rate):
        self.rate = rate
        self.free_at = time.monotonic()
        self.lock = threading.Lock()

    def carry(self, size):
        if self.rate <= 0 or size <= 0:
            return
        with self.lock:
            start = max(time.monotonic(), self.free_at)
            self.free_at = start + size / self.rate
            done = self.free_at
        time.sleep(max(0.0, done - time.monotonic()))


if __name__ == "__main__":
    sys.exit(main())
