"""A Redfish BMC that accepts every reset and never changes its power state (a fault the
daemon must report, not wait on forever). HTTPS with the certificate and key given; used by
tests/power.rs. argv: port, certificate, key."""

import json
import ssl
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer

SYSTEM = "/redfish/v1/Systems/stuck"


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def reply(self, status, body=None):
        data = b"" if body is None else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path == "/redfish/v1/Systems":
            self.reply(200, {"Members": [{"@odata.id": SYSTEM}]})
        elif self.path == SYSTEM:
            self.reply(200, {"Id": "stuck", "PowerState": "Off"})
        else:
            self.reply(404, {"error": "no such resource"})

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        # Accepted, and nothing ever happens.
        self.reply(204)


server = HTTPServer(("127.0.0.1", int(sys.argv[1])), Handler)
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(sys.argv[2], sys.argv[3])
server.socket = context.wrap_socket(server.socket, server_side=True)
server.serve_forever()
