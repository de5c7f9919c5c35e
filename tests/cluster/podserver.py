"""A tiny HTTP server the pod-harness tests run as a Pod's container (no third-party imports).

It listens on ``$POD_IP:$PORT`` (default 127.0.0.1:8080) and answers:

* ``GET /ready`` 200 while ready (``READY_AT_START=0`` starts not ready), else 503;
* ``POST /ready/1`` or ``/ready/0`` sets readiness;
* ``GET /env`` the process environment as JSON;
* ``GET /file?path=/abs/mount/path`` a file under ``$CONNQUOTA_POD_ROOT`` (404 when missing);
* ``POST /exit/<code>`` exits the process with that code.

With ``IGNORE_SIGTERM=1`` it logs and ignores SIGTERM, otherwise it exits 0 on SIGTERM.
When ``EVENTS_FILE`` is set, it appends one JSON line per event (start, sigterm, exit).
When ``COUNTER_DIR`` (a mount path) is set, it increments ``counter`` in that directory at
start and reports the value in the start event, which shows whether an emptyDir survived.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

STATE = {"ready": os.environ.get("READY_AT_START", "1") == "1"}


def pod_path(path: str) -> Path:
    """Resolve an absolute mount path under the harness' pod root."""
    return Path(os.environ.get("CONNQUOTA_POD_ROOT", "/")) / path.lstrip("/")


def event(kind: str, **data: object) -> None:
    """Append one event line to $EVENTS_FILE, if set."""
    target = os.environ.get("EVENTS_FILE")
    if not target:
        return
    line = json.dumps({"event": kind, "pid": os.getpid(), "t": time.time(), **data})
    with open(target, "a", encoding="utf-8") as out:
        out.write(line + "\n")


class Handler(BaseHTTPRequestHandler):
    """Routes of the test server."""

    def _send(self, code: int, body: object) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        if self.path == "/ready":
            self._send(200 if STATE["ready"] else 503, {"ready": STATE["ready"]})
        elif self.path == "/env":
            self._send(200, dict(os.environ))
        elif self.path.startswith("/file?path="):
            target = pod_path(self.path.split("=", 1)[1])
            if target.is_file():
                self._send(200, {"content": target.read_text(), "mode": target.stat().st_mode})
            else:
                self._send(404, {"missing": str(target)})
        else:
            self._send(404, {})

    def do_POST(self) -> None:
        parts = self.path.strip("/").split("/")
        if parts[0] == "ready" and len(parts) == 2:
            STATE["ready"] = parts[1] == "1"
            self._send(200, STATE)
        elif parts[0] == "exit" and len(parts) == 2:
            self._send(200, {"exiting": int(parts[1])})
            event("exit", code=int(parts[1]))
            threading.Thread(target=lambda: os._exit(int(parts[1]))).start()
        else:
            self._send(404, {})

    def log_message(self, format: str, *args: object) -> None:
        """Keep the container log quiet."""


def main() -> None:
    """Serve until SIGTERM (unless ignored) or POST /exit."""
    counter = None
    if os.environ.get("COUNTER_DIR"):
        path = pod_path(os.environ["COUNTER_DIR"]) / "counter"
        counter = int(path.read_text()) + 1 if path.exists() else 1
        path.write_text(str(counter))

    def on_sigterm(signum: int, frame: object) -> None:
        if os.environ.get("IGNORE_SIGTERM") == "1":
            event("sigterm", ignored=True)
            return
        event("sigterm", ignored=False)
        os._exit(0)

    signal.signal(signal.SIGTERM, on_sigterm)
    host = os.environ.get("POD_IP") or "127.0.0.1"
    server = ThreadingHTTPServer((host, int(os.environ.get("PORT", "8080"))), Handler)
    event("start", counter=counter, argv=sys.argv)
    print(f"podserver listening on {host}:{server.server_port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
