#!/usr/bin/env python3
"""A release server for the mirror-fetch test: serves ROOT over HTTP with single Range
requests, and misbehaves on purpose by the first path segment, for files over 1 MB:
  /good/...  normally           /stall/... 64 KiB, then nothing for 120 s
  /cut/...   half, then closes  /slow/...  64 KiB every 50 ms
  /endless/... no Content-Length, the file then zeros for ever
  /huge/...  claims 10 GB in Content-Length
  /away/...  302 to the same path on 127.0.0.2 (another host)
  /hop/...   302 to /good/... on this host
Usage: release-server.py ROOT PORTFILE (binds 127.0.0.1:0, writes the port to PORTFILE)."""
import http.server
import os
import re
import sys
import time

ROOT = sys.argv[1]


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        parts = self.path.split("?")[0].lstrip("/").split("/", 1)
        if len(parts) != 2 or ".." in parts[1]:
            return self.send_error(404)
        mode, rel = parts
        if mode in ("away", "hop"):
            host = "127.0.0.2" if mode == "away" else "127.0.0.1"
            self.send_response(302)
            self.send_header("Location", f"http://{host}:{self.server.server_address[1]}/good/{rel}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        path = os.path.join(ROOT, rel)
        if not os.path.isfile(path):
            return self.send_error(404)
        size = os.path.getsize(path)
        start, status = 0, 200
        m = re.match(r"bytes=(\d+)-$", self.headers.get("Range", ""))
        if m:
            start = int(m.group(1))
            if start >= size:
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{size}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            status = 206
        big = size > 1_000_000
        if big and mode == "endless":
            self.send_response(200)
            self.send_header("Connection", "close")
            self.end_headers()
            self.close_connection = True
            with open(path, "rb") as f:
                self.wfile.write(f.read())
            zeros = bytes(1 << 20)
            try:
                while True:
                    self.wfile.write(zeros)
            except OSError:
                return
        if big and mode == "huge":
            self.send_response(200)
            self.send_header("Content-Length", str(10_000_000_000))
            self.end_headers()
            self.close_connection = True
            return
        self.send_response(status)
        self.send_header("Content-Length", str(size - start))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{size - 1}/{size}")
        self.end_headers()
        with open(path, "rb") as f:
            f.seek(start)
            sent = 0
            while True:
                chunk = f.read(65536)
                if not chunk:
                    break
                if big and mode == "cut" and start + sent >= size // 2:
                    self.close_connection = True
                    self.wfile.flush()
                    self.connection.shutdown(2)
                    return
                self.wfile.write(chunk)
                sent += len(chunk)
                if big and mode == "stall":
                    self.wfile.flush()
                    time.sleep(120)
                    return
                if big and mode == "slow":
                    self.wfile.flush()
                    time.sleep(0.05)


server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
server.daemon_threads = True
# Clients hanging up mid-file are what the test does on purpose: no tracebacks.
server.handle_error = lambda request, address: None
with open(sys.argv[2] + ".tmp", "w") as f:
    f.write(str(server.server_address[1]))
os.rename(sys.argv[2] + ".tmp", sys.argv[2])
server.serve_forever()
