"""The gunicorn worker: gthread, with a read deadline on every request and JSON refusals.

gunicorn's threaded worker hands a connection to a request thread as soon as it is
readable, and the thread then blocks until the whole request head (and the body, as the
app reads it) has come. A client that trickles its headers, or declares a body and stalls,
holds a thread for as long as it likes; a few dozen of them hold every thread, and
``/healthz`` hangs with the rest. This worker first reads each request in its main loop,
without blocking, into memory: only a complete request (its head, and a body of declared
length up to ``BUFFERED_BODY_BYTES``) goes to a thread, which parses it from memory. A
request that is not complete within the read timeout of its first byte (of the
connection, for a new one) is answered 408 and its connection closed; a longer or chunked
body is read by the thread under the same deadline.

gunicorn's own refusals (a malformed request line or header, too many or too long
headers, an over-long URI) are answered in JSON like the bridge's, and counted in
``bridge_requests_rejected_total{endpoint="http"}``.

The hooks used (``enqueue_req``, ``murder_keepalived``, ``handle_error``, the parser's
read-ahead buffer) are the same in every gunicorn this package allows; none is gunicorn's
public API, so a test names each of them (docs/development.md, "The gunicorn worker").
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import logging
import re
import selectors
import socket
import time
from collections import deque
from functools import partial
from typing import Any

from gunicorn.http.errors import LimitRequestLine
from gunicorn.workers.gthread import ThreadWorker

from ..service.config import DEFAULT_READ_TIMEOUT_SECONDS
from ..web.extension import EXTENSION_KEY

__all__ = ["DEFAULT_READ_TIMEOUT_SECONDS", "BridgeWorker", "ReadDeadlineExceeded"]

log = logging.getLogger(__name__)

#: Bodies of declared length up to this are read by the main loop; longer ones by the thread.
BUFFERED_BODY_BYTES = 1024 * 1024
#: A head longer than this without its end is handed on for gunicorn's parser to refuse.
MAX_BUFFERED_HEAD_BYTES = 64 * 1024
_RECV_BYTES = 65536
_HEAD_END = b"\r\n\r\n"
_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length[ \t]*:[ \t]*([^\r\n]*)", re.IGNORECASE)
# A chunked body, or a client that waits for "100 Continue", is read by the thread.
_READ_IN_THREAD = re.compile(rb"\r\n(?:transfer-encoding|expect)[ \t]*:", re.IGNORECASE)

_REASONS = {
    400: "bad_request",
    408: "timeout",
    413: "too_large",
    414: "too_large",
    417: "bad_request",
    431: "too_large",
    501: "unsupported",
}


class ReadDeadlineExceeded(ConnectionResetError):
    """The request was not received within the read timeout; its connection is dropped."""


class _DeadlineSocket(socket.socket):
    """A connection's socket: hands out what the worker's loop already read, and reads
    more from the network only until the current request's deadline."""

    def __init__(self, family: int, type: int, proto: int, fileno: int):
        super().__init__(family, type, proto, fileno)
        self.pending = b""
        self.offset = 0
        self.deadline: float | None = None
        self.reading = False  # registered with the worker's poller, being read into ``pending``

    def buffered(self) -> bytes:
        """Return what was read and not yet handed out."""
        return self.pending[self.offset :]

    def keep(self, data: bytes) -> None:
        """Add ``data`` to what is handed out next."""
        self.pending, self.offset = self.buffered() + data, 0

    def read_now(self) -> bytes | None:
        """Return what the network has right now ('' at its end), None when nothing is there."""
        try:
            return socket.socket.recv(self, _RECV_BYTES)
        except (BlockingIOError, InterruptedError):
            return None

    def recv(self, size: int, flags: int = 0) -> bytes:
        if self.offset < len(self.pending):
            data = self.pending[self.offset : self.offset + size]
            self.offset += len(data)
            if self.offset == len(self.pending):
                self.pending, self.offset = b"", 0
            return data
        if self.deadline is None:
            return super().recv(size, flags)
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise ReadDeadlineExceeded(errno.ECONNRESET, "request not received within the read timeout")
        previous = self.gettimeout()
        self.settimeout(remaining)
        try:
            return super().recv(size, flags)
        except TimeoutError:
            raise ReadDeadlineExceeded(errno.ECONNRESET, "request not received within the read timeout") from None
        finally:
            self.settimeout(previous)


def request_is_complete(data: bytes) -> bool:
    """Return True when ``data`` holds a request the thread can parse without waiting.

    That is a whole head and, for a body of declared length up to
    ``BUFFERED_BODY_BYTES``, the whole body; or anything gunicorn's parser must refuse or
    read itself (a head too long, a duplicate or bad Content-Length, a chunked body).
    """
    end = data.find(_HEAD_END)
    if end < 0:
        return len(data) > MAX_BUFFERED_HEAD_BYTES
    head = data[: end + 2]
    if _READ_IN_THREAD.search(head):
        return True
    lengths = _CONTENT_LENGTH.findall(head)
    if not lengths:
        return True
    if len(lengths) > 1 or not lengths[0].strip().isdigit():
        return True  # gunicorn refuses it
    length = int(lengths[0].strip())
    return length > BUFFERED_BODY_BYTES or len(data) >= end + len(_HEAD_END) + length


class _CapturedError:
    """Stands in for the client socket while gunicorn writes its HTML error page, to learn
    the status it chose; everything else goes to the real socket."""

    def __init__(self, client: socket.socket):
        self._client = client
        self.written = b""

    def gettimeout(self) -> float:
        return 0.0

    def setblocking(self, _flag: bool) -> None:
        pass

    def sendall(self, data: bytes) -> None:
        self.written += data

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


def _json_response(status: int, reason: str, message: str) -> bytes:
    body = json.dumps({"error": message, "field": "request"}).encode()
    return (
        f"HTTP/1.1 {status} {reason}\r\nConnection: close\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode("latin-1") + body


class BridgeWorker(ThreadWorker):
    """gunicorn's gthread worker, reading each request whole before a thread takes it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._reading: deque[tuple[float, Any]] = deque()  # (deadline, connection), by deadline

    def load_wsgi(self) -> None:
        super().load_wsgi()
        bridge = getattr(self.wsgi, "extensions", {}).get(EXTENSION_KEY)
        self.read_timeout = (
            bridge.settings.request_read_timeout_seconds if bridge is not None else DEFAULT_READ_TIMEOUT_SECONDS
        )
        self._monitor = bridge.monitor if bridge is not None else None

    # -- reading requests in the main loop ---------------------------------------------

    def enqueue_req(self, conn: Any) -> None:
        """Read the connection's next request into memory, then hand it to a thread."""
        sock = conn.sock
        if not isinstance(sock, _DeadlineSocket):
            sock = conn.sock = _DeadlineSocket(sock.family, sock.type, sock.proto, fileno=sock.detach())
        sock.keep(self._take_read_ahead(conn))
        sock.deadline = time.monotonic() + self.read_timeout
        self._read(conn)

    @staticmethod
    def _take_read_ahead(conn: Any) -> bytes:
        """Return the bytes of the next request that gunicorn's parser already read, taken from it."""
        unreader = getattr(getattr(conn, "parser", None), "unreader", None)
        buffer = getattr(unreader, "buf", None)
        if unreader is None or not isinstance(buffer, io.BytesIO) or not buffer.getbuffer().nbytes:
            return b""
        unreader.buf = io.BytesIO()
        return buffer.getvalue()

    def _read(self, conn: Any, _fileobj: object = None) -> None:
        sock: _DeadlineSocket = conn.sock
        if sock.getblocking():
            sock.setblocking(False)
        while not request_is_complete(sock.buffered()):
            try:
                data = sock.read_now()
            except OSError:
                data = b""
            if data is None:  # wait in the poller for the rest, without a thread
                if not sock.reading:
                    sock.reading = True
                    with self._poller_lock():
                        self.poller.register(sock, selectors.EVENT_READ, partial(self._read, conn))
                    assert sock.deadline is not None  # set by enqueue_req
                    self._reading.append((sock.deadline, conn))
                return
            if not data:  # the client went away before its request was whole
                self._close(conn)
                return
            sock.keep(data)
        self._stop_reading(conn)
        conn.data_ready = True  # a gunicorn whose threads first wait for data: it is here already
        super().enqueue_req(conn)

    def _stop_reading(self, conn: Any) -> None:
        sock = conn.sock
        if sock.reading:
            sock.reading = False
            with self._poller_lock():
                with contextlib.suppress(KeyError, ValueError, OSError):
                    self.poller.unregister(sock)

    def _close(self, conn: Any) -> None:
        self._stop_reading(conn)
        self.nr_conns -= 1
        conn.close()

    def _poller_lock(self) -> contextlib.AbstractContextManager[Any]:
        # gunicorn 23 registers from request threads too, under this lock; later ones do not.
        lock = getattr(self, "_lock", None)
        return lock if lock is not None else contextlib.nullcontext()

    def murder_keepalived(self, *args: Any, **kwargs: Any) -> None:
        """Close idle kept-alive connections (gunicorn's), and requests past their deadline."""
        super().murder_keepalived(*args, **kwargs)
        force = bool(kwargs.get("force") or (args and args[0]))
        now = time.monotonic()
        while self._reading and (force or self._reading[0][0] <= now):
            deadline, conn = self._reading.popleft()
            sock = conn.sock
            if not sock.reading or sock.deadline != deadline:
                continue  # complete, or reading a later request, since
            with contextlib.suppress(OSError):
                sock.send(_json_response(408, "Request Timeout", f"request not received within {self.read_timeout:g}s"))
            self._close(conn)
            if self._monitor is not None:  # the count writes to the store: not in this loop
                self.tpool.submit(self._monitor.reject, "http", "timeout")

    # -- gunicorn's refusals, in JSON -------------------------------------------------

    def handle_error(self, req: Any, client: Any, addr: Any, exc: BaseException) -> None:
        captured = _CapturedError(client)
        super().handle_error(req, captured, addr, exc)
        status_line = captured.written.split(b"\r\n", 1)[0].decode("latin-1").split(" ", 2)
        if len(status_line) < 3 or not status_line[1].isdigit():
            return
        status, reason = int(status_line[1]), status_line[2]
        if isinstance(exc, LimitRequestLine):  # gunicorn 23 says 400, later ones 414
            status, reason = 414, "Request-URI Too Long"
        message = f"{reason}: {exc}" if status < 500 else "internal error"
        with contextlib.suppress(OSError):
            client.sendall(_json_response(status, reason, message[:1000]))
        if self._monitor is not None:
            self._monitor.reject("http", _REASONS.get(status, "bad_request" if status < 500 else "internal"))
