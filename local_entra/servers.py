"""Werkzeug listeners that can be stopped and restarted on the same port.

Why not ``app.run()``: the stand-in runs three servers inside one process
(often inside a test process), must free its ports on demand, must count TCP
connections (to prove the client pools them), must keep connections alive
(werkzeug 3.1's handler always answers ``Connection: close``), and must never
log tokens.
"""

import contextlib
import io
import logging
import socket
import ssl
import threading
from urllib.parse import urlsplit

from werkzeug.serving import WSGIRequestHandler, make_server

logger = logging.getLogger("local_entra")

# Idle keep-alive connections are dropped after this long; clients' pools
# notice a closed socket before reusing it.
KEEP_ALIVE_IDLE_TIMEOUT = 75


# Requests here are small forms; anything bigger is a mistake or abuse.
MAX_BODY = 1024 * 1024


class _Handler(WSGIRequestHandler):
    # HTTP/1.1 means persistent connections unless a side says "close".
    protocol_version = "HTTP/1.1"
    timeout = KEEP_ALIVE_IDLE_TIMEOUT

    def run_wsgi(self):
        """Serve one request and keep the connection open for the next.

        werkzeug's own run_wsgi always closes the connection, because it
        cannot tell where a request body ends. Here the body is read in full
        (exactly Content-Length bytes, or the whole chunked stream) before the
        app runs, and the response is buffered so it always carries a
        Content-Length: then the next request on the socket starts cleanly.
        """
        environ = self.make_environ()
        try:
            if environ.get("wsgi.input_terminated"):  # chunked request body
                body = environ["wsgi.input"].read(MAX_BODY + 1)
            else:
                body = self.rfile.read(int(environ.get("CONTENT_LENGTH") or 0))
        except ValueError:
            self.send_error(400, "Bad Content-Length")
            self.close_connection = True
            return
        if len(body) > MAX_BODY:
            self.send_error(413)
            self.close_connection = True
            return
        environ["wsgi.input"] = io.BytesIO(body)
        environ["CONTENT_LENGTH"] = str(len(body))

        started = {}

        def start_response(status, headers, exc_info=None):
            started["status"], started["headers"] = status, headers
            return chunks.append  # the legacy write() callable

        chunks = []
        result = self.server.app(environ, start_response)
        try:
            chunks.extend(result)
        finally:
            if hasattr(result, "close"):
                result.close()
        payload = b"".join(chunks)
        code, _, reason = started["status"].partition(" ")
        code = int(code)
        try:
            self.send_response(code, reason)
            for name, value in started["headers"]:
                if name.lower() not in ("content-length", "connection", "transfer-encoding"):
                    self.send_header(name, value)
            if not (100 <= code < 200 or code in (204, 304)):
                self.send_header("Content-Length", str(len(payload)))
            if self.close_connection:
                self.send_header("Connection", "close")
            # Headers and body leave in one write: two small writes would
            # meet Nagle's algorithm and the client's delayed ACK, costing
            # ~40 ms per request on a kept-alive connection.
            self._headers_buffer.append(b"\r\n")
            if self.command != "HEAD":
                self._headers_buffer.append(payload)
            self.flush_headers()
        except OSError:
            # The client went away, or stop() shut the socket under a hung request.
            self.close_connection = True

    def setup(self):
        # setup() runs once per accepted TCP connection, not per request.
        self.server.listener.connection_opened(self.request)
        with contextlib.suppress(OSError):
            self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        super().setup()

    def handle(self):
        # The TLS handshake is deferred to this per-connection thread (see
        # Listener.start) so a client that connects and stalls cannot block
        # the accept loop.
        if isinstance(self.request, ssl.SSLSocket):
            try:
                self.request.do_handshake()
            except (OSError, ValueError):
                return
        super().handle()

    def finish(self):
        try:
            super().finish()
        except OSError:
            pass  # the peer or stop() already closed the socket
        finally:
            self.server.listener.connection_closed(self.request)

    def log_request(self, code="-", size="-"):
        # Log the path only: query strings carry codes and state.
        path = urlsplit(getattr(self, "path", "") or "").path
        logger.info("%s %s %s %s", self.server.listener.name, self.command, path, code)

    def log_error(self, fmt, *args):
        # TLS and dropped-connection noise: useful when debugging only.
        logger.debug("%s: " + fmt, self.server.listener.name, *args)


class Listener:
    """One werkzeug threaded server in a daemon thread."""

    def __init__(self, name, app, port=0, ssl_context=None, on_connection=None):
        self.name = name
        self.app = app
        self.port = port
        self.ssl_context = ssl_context
        self._on_connection = on_connection
        self._server = None
        self._thread = None
        self._connections = set()
        self._lock = threading.Lock()

    @property
    def running(self):
        return self._server is not None

    def start(self):
        if self._server is not None:
            return
        try:
            server = make_server(
                "127.0.0.1", self.port, self.app, threaded=True, request_handler=_Handler
            )
        except SystemExit as exc:  # werkzeug exits the process when a port is taken
            raise OSError(f"{self.name}: cannot listen on 127.0.0.1:{self.port}") from exc
        if self.ssl_context is not None:
            # Wrapped here rather than by werkzeug so the handshake happens in
            # the connection's thread, not in accept().
            server.socket = self.ssl_context.wrap_socket(
                server.socket, server_side=True, do_handshake_on_connect=False
            )
            server.ssl_context = self.ssl_context  # makes wsgi.url_scheme "https"
        server.listener = self
        # Remember the port the OS chose so a restart binds the same one.
        self.port = server.port
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},  # quick stop() for quick tests
            name=f"local_entra-{self.name}",
            daemon=True,
        )
        self._thread.start()

    def stop(self):
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()  # returns once serve_forever has left its loop
        server.server_close()
        # Also drop open keep-alive connections: a stopped IdP must look
        # stopped to a client that holds a pooled connection.
        with self._lock:
            connections = list(self._connections)
        for conn in connections:
            with contextlib.suppress(OSError):  # already closed by the peer
                socket.socket.shutdown(conn, socket.SHUT_RDWR)
        self._thread.join(timeout=5)
        self._thread = None

    def connection_opened(self, conn):
        with self._lock:
            self._connections.add(conn)
        if self._on_connection is not None:
            self._on_connection()

    def connection_closed(self, conn):
        with self._lock:
            self._connections.discard(conn)
