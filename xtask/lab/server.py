#!/usr/bin/python3
"""The lab's TCP server: HTTP over a listening socket whose backlog the test chooses
(a small backlog makes the SYN queue easy to fill, which is what a flood test needs).
Serves GET /data with --size bytes. Dual-stack on [::]:PORT."""
import argparse
import http.server
import socket
import socketserver


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"

    def do_GET(self):
        body = self.server.body if self.path == "/data" else b"ok\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    address_family = socket.AF_INET6
    daemon_threads = True

    def server_bind(self):
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--backlog", type=int, default=128)
    p.add_argument("--size", type=int, default=65536)
    a = p.parse_args()
    Server.request_queue_size = a.backlog
    server = Server(("::", a.port), Handler)
    server.body = bytes(i % 251 for i in range(a.size))
    print(f"listening on [::]:{a.port} backlog {a.backlog}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
