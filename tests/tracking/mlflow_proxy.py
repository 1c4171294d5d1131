"""A stand-in for a tracking server that fails mid-run, for the tests: a real process on a real port.

python mlflow_proxy.py PORT TARGET_URL PATH_PART N    forward everything to TARGET_URL, then exit just
                                                      after answering the N-th request whose path
                                                      contains PATH_PART (the server "dies")
python mlflow_proxy.py PORT --hang                    accept connections and never answer
python mlflow_proxy.py PORT --busy STATUS SECONDS     answer every request with STATUS (429, 503) and
                                                      Retry-After: SECONDS
python mlflow_proxy.py PORT --drip                    answer every request one byte every few seconds, never
                                                      finishing (no read timeout ever fires)
"""

import os
import socket
import sys
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "host", "content-length"}


def forwarding_handler(target: str, path_part: str, limit: int):
    seen = []

    class Forward(BaseHTTPRequestHandler):
        def _forward(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
            request = urllib.request.Request(
                target + self.path, data=body or None, headers=headers, method=self.command
            )
            try:
                with urllib.request.urlopen(request, timeout=60) as response:
                    status, reply, reply_headers = response.status, response.read(), response.headers
            except urllib.error.HTTPError as error:
                status, reply, reply_headers = error.code, error.read(), error.headers
            self.send_response(status)
            for key, value in reply_headers.items():
                if key.lower() not in HOP_BY_HOP:
                    self.send_header(key, value)
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)
            self.wfile.flush()
            if path_part in self.path:
                seen.append(self.path)
                if len(seen) >= limit:
                    os._exit(0)  # the server dies, right after this answer

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _forward

        def log_message(self, *args) -> None:
            pass

    return Forward


def hang(port: int) -> None:
    listener = socket.create_server(("127.0.0.1", port))
    held = []
    while True:
        connection, _ = listener.accept()
        held.append(connection)  # never read, never answered, never closed


def busy_handler(status: int, retry_after: str):
    class Busy(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _busy(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            body = b'{"error_code": "TEMPORARILY_UNAVAILABLE", "message": "busy, come back later"}'
            self.send_response(status)
            self.send_header("Retry-After", retry_after)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _busy

        def log_message(self, *args) -> None:
            pass

    return Busy


def drip_handler():
    class Drip(BaseHTTPRequestHandler):
        def _drip(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self.wfile.write(b"HTTP/1.1 200 OK\r\n")
            while True:  # one more header byte every 2 s: each read of the client gets data in time
                self.wfile.write(b"X")
                self.wfile.flush()
                time.sleep(2)

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _drip

        def log_message(self, *args) -> None:
            pass

    return Drip


def serve(port: int, handler) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", port), handler)
    server.daemon_threads = True
    server.serve_forever()


def main() -> None:
    port = int(sys.argv[1])
    if sys.argv[2] == "--hang":
        hang(port)
    if sys.argv[2] == "--busy":
        serve(port, busy_handler(int(sys.argv[3]), sys.argv[4]))
    if sys.argv[2] == "--drip":
        serve(port, drip_handler())
    target, path_part, limit = sys.argv[2], sys.argv[3], int(sys.argv[4])
    server = ThreadingHTTPServer(("127.0.0.1", port), forwarding_handler(target, path_part, limit))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    main()
