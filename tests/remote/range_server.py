"""A small static HTTP/1.1 file server with byte ranges, for the remote-container tests.

    python3 tests/remote/range_server.py --dir DIR [--port 0] [--port-file FILE] [--bind 127.0.0.1]
                                         [--rate BYTES_PER_SEC]

Standard library only (Python >= 3.11); run by scripts/test-remote.sh. Serves the files under
DIR (no listings) to GET and HEAD, with keep-alive:
  * `Range: bytes=A-B`, `bytes=A-`, `bytes=-N`: 206 with `Content-Range`; a range starting past
    the end: 416 with `Content-Range: bytes */SIZE`; a malformed or multi-range header is
    ignored (200, whole file), as RFC 9110 allows.
  * `ETag` (quoted "SIZE-MTIME_NS" in hex), `Last-Modified`, `Accept-Ranges: bytes` and
    `Content-Length` on every file response; 404 for missing files and paths outside DIR.
  * `If-Match` naming neither `*` nor the current ETag: 412. `If-Range` (an ETag, or a date
    equal to `Last-Modified`) that does not match: `Range` is ignored (200, whole file).
--port 0 lets the OS pick; --port-file gets the port (written atomically once listening).
--rate caps the bytes of response bodies sent per second, over all connections together
(written in 64 KiB pieces, each waiting for its turn); default: unlimited.
"""

import argparse
import email.utils
import os
import re
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

CHUNK = 1 << 20
THROTTLED_CHUNK = 64 << 10
RANGE = re.compile(r"bytes=(\d*)-(\d*)")


class Throttle:
    """Paces writes to at most `rate` bytes per second over all threads together."""

    def __init__(self, rate):
        self.rate = rate
        self.lock = threading.Lock()
        self.next_free = 0.0  # time.monotonic() at which the next piece may go out

    def wait(self, n):
        """Blocks until n more bytes may be sent."""
        with self.lock:
            now = time.monotonic()
            start = max(now, self.next_free)
            self.next_free = start + n / self.rate
        if start > now:
            time.sleep(start - now)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    root = "."
    verbose = False
    throttle = None  # a Throttle with --rate

    def log_message(self, fmt, *args):
        if self.verbose:
            super().log_message(fmt, *args)

    def do_GET(self):
        self.serve(body=True)

    def do_HEAD(self):
        self.serve(body=False)

    def status(self, code, headers=()):
        """A response without a body."""
        self.send_response(code)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def local_path(self):
        rel = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path)
        full = os.path.realpath(os.path.join(self.root, rel.lstrip("/")))
        if os.path.commonpath([full, self.root]) != self.root or not os.path.isfile(full):
            return None
        return full

    def serve(self, body):
        path = self.local_path()
        if path is None:
            return self.status(404)
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            size = st.st_size
            etag = f'"{size:x}-{st.st_mtime_ns:x}"'
            modified = email.utils.formatdate(st.st_mtime, usegmt=True)
            common = [("ETag", etag), ("Last-Modified", modified), ("Accept-Ranges", "bytes")]
            if_match = self.headers.get("If-Match")
            if if_match is not None:
                tags = [t.strip() for t in if_match.split(",")]
                if "*" not in tags and etag not in tags:
                    return self.status(412, common)
            start, end = 0, size - 1
            span = self.byte_range(size, etag, modified)
            if span == "unsatisfiable":
                return self.status(416, common + [("Content-Range", f"bytes */{size}")])
            if span is not None:
                start, end = span
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
            else:
                self.send_response(200)
            for k, v in common:
                self.send_header(k, v)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(end - start + 1))
            self.end_headers()
            if not body:
                return
            f.seek(start)
            left = end - start + 1
            chunk = CHUNK if self.throttle is None else THROTTLED_CHUNK
            try:
                while left > 0:
                    data = f.read(min(chunk, left))
                    if not data:  # the file shrank under us: drop the connection
                        self.close_connection = True
                        return
                    if self.throttle is not None:
                        self.throttle.wait(len(data))
                    self.wfile.write(data)
                    left -= len(data)
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True

    def byte_range(self, size, etag, modified):
        """(first, last) to send, None for the whole file, or "unsatisfiable"."""
        header = self.headers.get("Range")
        if header is None:
            return None
        if_range = self.headers.get("If-Range")
        if if_range is not None and if_range.strip() not in (etag, modified):
            return None  # the client's copy is stale: send the whole new file
        m = RANGE.fullmatch(header.strip())
        a, b = m.groups() if m else ("", "")
        if a == b == "" or (a and b and int(b) < int(a)):
            return None  # malformed, invalid or several ranges: ignore the header
        if a == "":  # suffix range: the last N bytes
            n = int(b)
            return "unsatisfiable" if n == 0 or size == 0 else (max(0, size - n), size - 1)
        if int(a) >= size:
            return "unsatisfiable"
        return int(a), size - 1 if b == "" else min(int(b), size - 1)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dir", required=True, help="directory to serve")
    p.add_argument("--port", type=int, default=0, help="port (0: let the OS pick)")
    p.add_argument("--port-file", help="write the port number here once listening")
    p.add_argument("--bind", default="127.0.0.1", help="address to listen on")
    p.add_argument("--rate", type=int, default=0, metavar="BYTES_PER_SEC",
                   help="send at most this many body bytes per second in all (0: unlimited)")
    p.add_argument("-v", "--verbose", action="store_true", help="log each request to stderr")
    a = p.parse_args()
    Handler.root = os.path.realpath(a.dir)
    Handler.verbose = a.verbose
    if a.rate < 0:
        p.error("--rate must be >= 0")
    Handler.throttle = Throttle(a.rate) if a.rate else None
    server = ThreadingHTTPServer((a.bind, a.port), Handler)
    server.daemon_threads = True
    port = server.server_address[1]
    if a.port_file:
        tmp = f"{a.port_file}.tmp{os.getpid()}"
        with open(tmp, "w") as f:
            f.write(f"{port}\n")
        os.replace(tmp, a.port_file)
    limit = f", at most {a.rate} bytes/s" if a.rate else ""
    print(f"range_server: serving {Handler.root} on http://{a.bind}:{port}/{limit}", file=sys.stderr)
    server.serve_forever()


if __name__ == "__main__":
    main()
