"""A node's path to the API server: a TCP relay the node's Pods reach the API server through.

With ``partitionable=True`` the harness gives each node one relay on ``127.0.0.1:<port>`` (so
the API server's certificate, issued for 127.0.0.1, still matches) and points the node's Pods
at it through ``KUBERNETES_SERVICE_HOST``/``_PORT``. :meth:`ApiRelay.cut` closes its listener
and resets every connection through it: the node's processes keep running, exchange
connections included, but no longer reach the API server (a node partitioned from the control
plane). :meth:`ApiRelay.restore` listens again on the same port.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading


class ApiRelay:
    """Forwards TCP connections on ``127.0.0.1:<port>`` to ``target_host:target_port``."""

    def __init__(self, target_host: str, target_port: int, host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.host = host
        self.port = 0
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._sockets: set[socket.socket] = set()
        self.cut_count = 0

    def start(self) -> ApiRelay:
        """Listen (on a new port the first time, the same port after a cut)."""
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((self.host, self.port))
        listener.listen(128)
        self.port = listener.getsockname()[1]
        with self._lock:
            self._listener = listener
        threading.Thread(
            target=self._accept, args=(listener,), name=f"api-relay-{self.port}", daemon=True
        ).start()
        return self

    @property
    def cut_now(self) -> bool:
        with self._lock:
            return self._listener is None

    def cut(self) -> None:
        """Stop listening and reset every relayed connection (both sides)."""
        with self._lock:
            listener, self._listener = self._listener, None
            sockets, self._sockets = self._sockets, set()
            self.cut_count += 1
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        for sock in sockets:
            with contextlib.suppress(OSError):  # RST rather than FIN: the path is gone
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            with contextlib.suppress(OSError):  # wakes the relay thread blocked in recv
                sock.shutdown(socket.SHUT_RD)
            with contextlib.suppress(OSError):
                sock.close()

    def restore(self) -> None:
        """Listen again on the same port (after :meth:`cut`)."""
        if self.cut_now:
            self.start()

    def stop(self) -> None:
        self.cut()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # cut or stopped
            try:
                upstream = socket.create_connection(self.target, timeout=5)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._lock:
                if self._listener is not listener:  # cut meanwhile
                    client.close()
                    upstream.close()
                    return
                self._sockets.update((client, upstream))
            done = threading.Semaphore(0)
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(src, dst, done), daemon=True).start()
            threading.Thread(
                target=self._close_pair, args=(client, upstream, done), daemon=True
            ).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, done: threading.Semaphore) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)
        done.release()

    def _close_pair(self, a: socket.socket, b: socket.socket, done: threading.Semaphore) -> None:
        done.acquire()
        done.acquire()
        with self._lock:
            self._sockets.discard(a)
            self._sockets.discard(b)
        for sock in (a, b):
            with contextlib.suppress(OSError):
                sock.close()
