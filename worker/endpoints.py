"""/metrics (Prometheus), /healthz (the loop is alive) and /readyz (model loaded, broker reachable)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Endpoints:
    def __init__(self, host: str, port: int, scrape: Callable[[], bytes], alive: Callable[[], bool], ready: Callable[[], bool]) -> None:
        routes: dict[str, Callable[[], tuple[int, bytes, str]]] = {
            "/metrics": lambda: (200, scrape(), "text/plain; version=0.0.4"),
            "/healthz": lambda: (200, b"ok\n", "text/plain") if alive() else (503, b"stalled\n", "text/plain"),
            "/readyz": lambda: (200, b"ready\n", "text/plain") if ready() else (503, b"not ready\n", "text/plain"),
        }

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                route = routes.get(self.path.split("?", 1)[0])
                status, body, kind = route() if route else (404, b"not found\n", "text/plain")
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_args: object) -> None:
                pass

        self.server = ThreadingHTTPServer((host, port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, name="endpoints", daemon=True)

    @property
    def port(self) -> int:
        return self.server.server_address[1]

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        if self.thread.is_alive():  # shutdown() would wait forever for a loop that never ran
            self.server.shutdown()
        self.server.server_close()
