#!/usr/bin/env python3
"""A real HTTP/1.1 backend for the proxy tests: answers every request with JSON describing
what it received (path, headers, body length and SHA-256) and the proxy's source port
(which connection it came on). /slow waits a second first.
Usage: backend.py PORT; prints "ready" once listening."""
import hashlib
import http.server
import json
import sys
import time


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def answer(self):
        length = int(self.headers.get("Content-Length", 0) or 0)
        body = self.rfile.read(length) if length else b""
        if self.path.startswith("/slow"):
            time.sleep(1)
        data = json.dumps({
            "port": self.server.server_address[1],
            "peer_port": self.client_address[1],
            "method": self.command,
            "path": self.path,
            "headers": {k.lower(): v for k, v in self.headers.items()},
            "body_len": len(body),
            "body_sha256": hashlib.sha256(body).hexdigest(),
        }).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Connection", "keep-alive, x-backend-hop")
        self.send_header("X-Backend-Hop", "must-not-leak")
        self.end_headers()
        self.wfile.write(data)

    do_GET = answer
    do_POST = answer
    do_PUT = answer


server = http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler)
print("ready", flush=True)
server.serve_forever()
