"""Running the app with uvicorn: in the foreground (``tp-rag serve``) or on a background thread
(tests, the load test, notebooks)."""

from __future__ import annotations

import socket
import threading
import time
from typing import Optional

import uvicorn

LOOPBACK = "127.0.0.1"


def serve_forever(app, host: str = LOOPBACK, port: int = 8000, *, log_level: str = "info",
                  shutdown_timeout: float = 30.0) -> None:
    """Block serving ``app`` until interrupted. Ctrl-C / SIGTERM stop accepting connections,
    let the requests already accepted finish (up to ``shutdown_timeout`` seconds), then stop."""
    uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=False,
                timeout_graceful_shutdown=shutdown_timeout)


class BackgroundServer:
    """Serve ``app`` on a thread; as a context manager it starts, waits until ready, and stops.

    >>> with BackgroundServer(create_app(encoder)) as server:
    ...     OpenAI(base_url=server.url + "/v1", api_key="-").embeddings.create(...)

    ``port=0`` (the default) binds a free port, read back as :attr:`port`.
    """

    def __init__(self, app, host: str = LOOPBACK, port: int = 0, *, log_level: str = "warning",
                 shutdown_timeout: float = 5.0):
        self.host = host
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind((host, port))
        self.port = self._socket.getsockname()[1]
        config = uvicorn.Config(app, log_level=log_level, access_log=False,
                                timeout_graceful_shutdown=shutdown_timeout)
        self._server = uvicorn.Server(config)
        self._thread: Optional[threading.Thread] = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 30.0) -> "BackgroundServer":
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._socket]},
            name=f"uvicorn-{self.port}", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive():
                raise RuntimeError("the server thread exited during startup")
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"the server did not start within {timeout:.0f} s")
            time.sleep(0.02)
        return self

    def stop(self, timeout: float = 60.0) -> None:
        if self._thread is None:
            return
        self._server.should_exit = True
        self._thread.join(timeout)
        self._thread = None
        self._socket.close()

    def __enter__(self) -> "BackgroundServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
